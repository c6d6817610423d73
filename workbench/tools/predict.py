"""``workbench predict``: segment a folder of images with one or more checkpoints, writing a result per image.

For every image (files given, folders walked for image files, sorted) and every checkpoint it writes, under
``OUT/<checkpoint stem>/<image path relative to its folder, without suffix>``:

- ``.png``: the label map as an index PNG (one byte per pixel = the class index, the checkpoint's class colours
  in the palette; :func:`workbench.io.exports.label_png_bytes`);
- ``_overlay.jpg`` (or ``.png``): the class colours blended onto the image;
- ``.json`` (with ``json=True``): checkpoint, engine, precision, latency, the image's size and every class's
  share of the pixels.

The images stream through: :func:`find_images` is a generator over paths, at most ``batch`` images are decoded
at a time, and every result is written and dropped before the next chunk, so a folder of any size runs in the
memory of one chunk. Images of the same size share a forward pass on engines that take a batch
(:meth:`workbench.inference.predictor.Predictor.predict_batch`). Every file is written to a temporary
sibling and renamed, so an interrupted run leaves whole results or none (a killed one may leave hidden
``.*.tmp`` files, never a half-written result), and ``skip_existing`` resumes. An image that cannot be read
(corrupt, not an image, over :data:`workbench.io.images.MAX_PIXELS` or :data:`~workbench.io.images.MAX_FILE_BYTES`)
is reported and skipped; the summary counts it.
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.files import IMAGE_EXTS
from ..inference.engines import CPU_ENGINES, EngineError, check_engine
from ..inference.predictor import DEFAULT_MAX_SIDE, Prediction, Predictor
from ..io.checkpoint import atomic_write_bytes
from ..io.exports import VOID_INDEX, label_png_bytes
from ..io.images import MAX_FILE_BYTES, MAX_PIXELS, ImageError, load_image
from ..io.manifest import CheckpointError, Manifest
from ..paths import checkpoints_dir
from ..viz import colorize, overlay

__all__ = ["PredictSummary", "find_images", "count_images", "resolve_checkpoints", "output_paths", "predict_folder", "cmd_predict", "IMAGE_SUFFIXES", "OVERLAY_FORMATS"]

IMAGE_SUFFIXES = (*IMAGE_EXTS, ".gif")  # what a folder walk picks up (a file named on the command line is always tried)
OVERLAY_FORMATS = ("jpg", "png")
JPEG_QUALITY = 90

ImageItem = tuple[Path, PurePosixPath]  # (the file, its name relative to its folder: the results' name)


def _hidden(part: str) -> bool:
    return part.startswith(".")


def _check_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no images given: name image files or folders")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    return paths


def find_images(inputs: Sequence[str | os.PathLike]) -> Iterator[ImageItem]:
    """The images ``inputs`` names, one at a time: a file is yielded as itself (named by its file name), a
    folder is walked (sorted, hidden files and folders skipped) for files with an image suffix
    (:data:`IMAGE_SUFFIXES`), each named by its path relative to the folder. The inputs are checked now
    (FileNotFoundError for a missing one); the folders are walked lazily, as the items are consumed."""
    paths = _check_inputs(inputs)

    def walk() -> Iterator[ImageItem]:
        for p in paths:
            if not p.is_dir():
                yield p, PurePosixPath(p.name)
                continue
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not _hidden(d))
                rel_root = Path(root).relative_to(p)
                for name in sorted(files):
                    if not _hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        yield Path(root) / name, PurePosixPath(*rel_root.parts, name)

    return walk()


def count_images(inputs: Sequence[str | os.PathLike]) -> int:
    """How many images :func:`find_images` yields (a walk over names only: for a progress bar's total)."""
    return sum(1 for _ in find_images(inputs))


def resolve_checkpoints(names: Sequence[str | os.PathLike]) -> list[Path]:
    """Manifest paths for ``names``: paths (``.json`` or ``.safetensors``), globs, or names of shipped checkpoints
    (``camvid_unet`` -> ``checkpoints/camvid_unet.json``). Raises FileNotFoundError / CheckpointError for one
    that is missing or not a checkpoint, and ValueError when two share a stem (their results would share a folder)."""
    out: list[Path] = []
    for raw in names:
        s = str(raw)
        if Path(s).exists():
            candidates = [Path(s)]
        elif glob.has_magic(s):
            candidates = [Path(g) for g in sorted(glob.glob(s)) if g.endswith(".json")]
            if not candidates:
                raise FileNotFoundError(f"no checkpoint matches {s!r}")
        elif (checkpoints_dir() / f"{s}.json").is_file():
            candidates = [checkpoints_dir() / f"{s}.json"]
        else:
            raise FileNotFoundError(f"checkpoint {s!r} not found (a .json manifest, its .safetensors, or a name in {checkpoints_dir()})")
        for c in candidates:
            path = Manifest.read(c).path  # CheckpointError if it is not one
            if path.resolve() not in {p.resolve() for p in out}:
                out.append(path)
    if not out:
        raise ValueError("no checkpoint given: --checkpoints names one or more .json manifests")
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise ValueError(f"checkpoints {stems[p.stem]} and {p} share the name {p.stem!r}, so their results would share OUT/{p.stem}/: copy one under another name")
        stems[p.stem] = p
    return out


def output_paths(out: str | os.PathLike, checkpoint: str | os.PathLike, rel: PurePosixPath | str, *, overlay_format: str = "jpg", with_json: bool = False) -> dict[str, Path]:
    """Where the results of image ``rel`` (its name relative to its input folder) go for ``checkpoint``:
    ``{"labels", "overlay"[, "json"]}`` under ``OUT/<checkpoint stem>/``."""
    base = Path(out) / Path(checkpoint).stem / Path(*PurePosixPath(rel).parts)
    base = base.with_name(Path(base.name).stem) if base.suffix else base
    paths = {"labels": base.with_name(base.name + ".png"), "overlay": base.with_name(f"{base.name}_overlay.{overlay_format}")}
    if with_json:
        paths["json"] = base.with_name(base.name + ".json")
    return paths


def _inside(child: Path, parent: Path) -> PurePosixPath | None:
    """``child`` relative to ``parent`` if it is ``parent`` or below it, else None (both resolved)."""
    try:
        return PurePosixPath(*child.relative_to(parent).parts)
    except ValueError:
        return None


def _check_out(out: Path, folders: Sequence[Path], stems: Sequence[str]) -> None:
    """Refuse an output folder that a walk of an input folder would read back (or write into)."""
    out_r = out.resolve()
    for folder in folders:
        f = folder.resolve()
        for stem in stems:
            dest = out_r / stem
            rel = _inside(dest, f)
            if rel is not None and not any(_hidden(part) for part in rel.parts):
                raise ValueError(
                    f"--out {out} is inside the input folder {folder}: its results ({dest}) would be read back as input images; "
                    f"choose an --out outside {folder} (or a hidden folder inside it, e.g. {folder / '.predictions'}, which the walk skips)"
                )
            if _inside(f, dest) is not None:
                raise ValueError(f"the input folder {folder} is inside the results folder {dest}: results would be written into the images being read; choose another --out")


@dataclass
class PredictSummary:
    """What :func:`predict_folder` did.

    Attributes:
        out: the output folder.
        checkpoints: per checkpoint ``{"checkpoint", "name", "engine", "precision", "engine_reason", "max_batch"}``.
        images: images seen (each once, whatever the number of checkpoints).
        written: results written (one per image and checkpoint).
        existing: results kept because they were there already (``skip_existing``).
        failed: ``(image path, reason)`` per image that was skipped (unreadable, would overwrite, ...).
        seconds: wall time of the run.
    """

    out: Path
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no image was skipped."""
        return not self.failed

    def line(self) -> str:
        """One line for a terminal."""
        n = len(self.checkpoints)
        text = f"{self.images} image(s), {n} checkpoint(s): wrote {self.written} result(s) to {self.out} in {self.seconds:.1f} s"
        if self.existing:
            text += f", kept {self.existing} already there"
        if self.failed:
            text += f"; {len(self.failed)} image(s) skipped (errors above)"
        return text


def _pixel_fractions(labels: np.ndarray, classes: Sequence[dict]) -> list[dict[str, Any]]:
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(classes))
    total = max(int(labels.size), 1)
    return [
        {"index": i, "name": c.get("name", str(i)), "color": [int(v) for v in c["color"]], "pixels": int(counts[i]), "fraction": float(counts[i]) / total}
        for i, c in enumerate(classes)
    ]


def _encode_overlay(pred: Prediction, alpha: float, fmt: str) -> bytes:
    blended = overlay(np.asarray(pred.image), colorize(pred.labels, pred.classes), alpha)
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(blended).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(blended).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _write_result(pred: Prediction, paths: dict[str, Path], *, source: Path, rel: PurePosixPath, checkpoint: Path, predictor: Predictor, alpha: float, fmt: str) -> None:
    """The label PNG last: its presence (with the others) marks a finished result for ``skip_existing``."""
    atomic_write_bytes(paths["overlay"], _encode_overlay(pred, alpha, fmt), durable=False)
    if "json" in paths:
        h, w = pred.labels.shape
        doc = {
            "format": "workbench-prediction",
            "format_version": 1,
            "image": str(source),
            "name": rel.as_posix(),
            "width": int(w),
            "height": int(h),
            "checkpoint": str(checkpoint),
            "architecture": predictor.manifest.get("architecture"),
            "engine": pred.engine,
            "precision": pred.engine_precision,
            "engine_reason": getattr(predictor, "engine_reason", ""),
            "batch": int(pred.batch),
            "latency_ms": round(float(pred.latency_ms), 3),
            "timings_ms": {k: round(float(v), 3) for k, v in pred.timings.items()},
            "labels": paths["labels"].name,
            "overlay": paths["overlay"].name,
            "label_png": f"index PNG: pixel value = class index, palette = class colours, {VOID_INDEX} = void",
            "classes": _pixel_fractions(pred.labels, pred.classes),
        }
        atomic_write_bytes(paths["json"], (json.dumps(doc, indent=1) + "\n").encode(), durable=False)
    atomic_write_bytes(paths["labels"], label_png_bytes(pred.labels, pred.classes), durable=False)


def _as_items(images: Iterable, out: Path, stems: Sequence[str]) -> Iterator[ImageItem]:
    """Items of ``images``: ``(path, relative name)`` pairs pass through; a path is expanded by :func:`find_images`
    (a folder walked, after :func:`_check_out`; a file named by its file name)."""
    for item in images:
        if isinstance(item, tuple):
            path, rel = item
            rel = PurePosixPath(rel)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise ValueError(f"{path}: the relative name {str(rel)!r} would put its results outside the output folder; give a relative path without '..'")
            yield Path(path), rel
        else:
            if Path(item).is_dir():
                _check_out(out, [Path(item)], stems)
            yield from find_images([item])


def predict_folder(
    images: Iterable | str | os.PathLike,
    checkpoints: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    engine: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    batch: int = 1,
    with_json: bool = False,
    overlay_alpha: float = 0.5,
    overlay_format: str = "jpg",
    max_side: int = DEFAULT_MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_FILE_BYTES,
    skip_existing: bool = False,
    progress: bool = False,
    total: int | None = None,
    on_error: Callable[[str, str], object] | None = None,
) -> PredictSummary:
    """Segment every image with every checkpoint and write the results (see the module docstring for the layout).

    Args:
        images: a file or folder, or an iterable (a generator is consumed lazily, one chunk at a time) of
            files, folders (walked by :func:`find_images`) and ``(path, relative name)`` pairs.
        checkpoints: manifests, globs or shipped checkpoint names (:func:`resolve_checkpoints`).
        out: the output folder (created). Refused when an input folder's walk would read the results back.
        engine, device, precision, max_side: as for :class:`~workbench.inference.predictor.Predictor`
            (``device="auto"`` is the CPU for the CPU-only engines).
        batch: images decoded and segmented together; same-size ones share a forward pass where the engine takes a batch.
        with_json: also write the per-image JSON.
        overlay_alpha: the class colours' weight in the overlay (0..1).
        overlay_format: ``"jpg"`` or ``"png"``.
        max_pixels, max_bytes: images above these limits are skipped (:func:`workbench.io.images.load_image`).
        skip_existing: keep the results already there (resume an interrupted run).
        progress: a tqdm bar on stderr (``total``: its length, e.g. :func:`count_images`).
        on_error: called with ``(image path, reason)`` for every skipped image (default: nothing).

    Returns:
        :class:`PredictSummary`. Raises ValueError / FileNotFoundError / CheckpointError for bad arguments
        before any image is read; a bad image never raises.
    """
    check_engine(engine)
    if int(batch) < 1:
        raise ValueError(f"--batch must be at least 1, got {batch}")
    if not 0.0 <= float(overlay_alpha) <= 1.0:
        raise ValueError(f"--overlay-alpha must be within 0..1, got {overlay_alpha}")
    if overlay_format not in OVERLAY_FORMATS:
        raise ValueError(f"overlay format must be one of {', '.join(OVERLAY_FORMATS)}, got {overlay_format!r}")
    t_start = time.perf_counter()
    out = Path(out)
    ckpts = resolve_checkpoints(checkpoints)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    stems = [c.stem for c in ckpts]
    if isinstance(images, (list, tuple)):  # a sequence: check it all before any work (a generator is checked as it goes)
        plain = [p for p in images if not isinstance(p, tuple)]
        if plain:
            _check_out(out, [p for p in _check_inputs(plain) if p.is_dir()], stems)
    if device == "auto" and engine in CPU_ENGINES:
        device = "cpu"
    predictors: list[Predictor] = []
    for c in ckpts:
        pred = Predictor(c, device, engine=engine, precision=precision, max_side=max_side)
        if not 1 <= len(pred.classes) <= VOID_INDEX:
            raise CheckpointError(f"{c}: {len(pred.classes)} classes; an index PNG holds 1 to {VOID_INDEX}")
        predictors.append(pred)
    summary = PredictSummary(out=out, checkpoints=[
        {"checkpoint": str(c), "name": c.stem, "engine": p.engine, "precision": p.engine_precision, "engine_reason": getattr(p, "engine_reason", ""), "max_batch": p.max_batch}
        for c, p in zip(ckpts, predictors)
    ])
    out.mkdir(parents=True, exist_ok=True)

    def fail(path: Path, reason: str) -> None:
        summary.failed.append((str(path), reason))
        if on_error is not None:
            on_error(str(path), reason)

    seen: dict[str, str] = {}  # result name -> the image that took it (two images must not share results)
    bar = tqdm(total=total, desc="predict", unit="image", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    chunk: list[dict] = []

    def flush() -> None:
        for k, pred in enumerate(predictors):
            todo = [item for item in chunk if k in item["todo"]]
            if not todo:
                continue
            ims = [item["decoded"][pred.mode] for item in todo]
            try:
                results: list[Prediction | Exception] = list(pred.predict_batch(ims, batch_size=batch))
            except (ValueError, RuntimeError, MemoryError):  # a batch that cannot run: each image alone, each error its own
                results = []
                for im in ims:
                    try:
                        results.append(pred.predict_batch([im])[0])
                    except (ValueError, RuntimeError, MemoryError) as exc:
                        results.append(exc)
            for item, res in zip(todo, results):
                if isinstance(res, Exception):
                    item["error"] = item.get("error") or f"{ckpts[k].stem}: {type(res).__name__}: {res}"
                    continue
                res.timings["load"] = res.timings.get("load", 0.0) + item["decode_ms"]  # the file's decoding happened here, before the Predictor saw the image
                res.latency_ms += item["decode_ms"]
                _write_result(res, item["paths"][k], source=item["path"], rel=item["rel"], checkpoint=ckpts[k], predictor=pred, alpha=overlay_alpha, fmt=overlay_format)
                summary.written += 1
        for item in chunk:
            if item.get("error"):
                fail(item["path"], item["error"])
        bar.update(len(chunk))
        chunk.clear()

    try:
        for path, rel in _as_items(images, out, stems):
            summary.images += 1
            key = str(rel.with_suffix(""))
            if key in seen:
                fail(path, f"its results would replace those of {seen[key]} (same name without suffix); rename one or run them separately")
                bar.update(1)
                continue
            seen[key] = str(path)
            all_paths = [output_paths(out, c, rel, overlay_format=overlay_format, with_json=with_json) for c in ckpts]
            src = path.resolve()
            clash = next((p for ps in all_paths for p in ps.values() if p.resolve() == src), None)
            if clash is not None:
                fail(path, f"refusing to overwrite the input with its own result ({clash})")
                bar.update(1)
                continue
            todo = set(range(len(ckpts)))
            if skip_existing:
                done = {k for k in todo if all(p.is_file() for p in all_paths[k].values())}
                summary.existing += len(done)
                todo -= done
            if not todo:
                bar.update(1)
                continue
            try:
                t0 = time.perf_counter()
                decoded = {m: load_image(path, m, max_pixels=max_pixels, max_bytes=max_bytes) for m in sorted({predictors[k].mode for k in todo})}
                decode_ms = (time.perf_counter() - t0) * 1e3
            except ImageError as exc:
                fail(path, str(exc))
                bar.update(1)
                continue
            except OSError as exc:  # unreadable (permissions, a vanished file)
                fail(path, f"cannot be read ({exc.strerror or exc})")
                bar.update(1)
                continue
            chunk.append({"path": path, "rel": rel, "decoded": decoded, "decode_ms": decode_ms, "paths": all_paths, "todo": todo})
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


def cmd_predict(args) -> int:
    """``workbench predict IMAGES_OR_FOLDER... --checkpoints CKPT... --out DIR``: 0 when every image was
    segmented, 1 when some were skipped (each reported on stderr), 2 for bad arguments."""
    inputs = [Path(p) for p in args.inputs]
    _check_inputs(inputs)
    total = count_images(inputs) if not args.quiet else None

    def report(path: str, reason: str) -> None:
        tqdm.write(f"error: {path}: {reason}", file=sys.stderr)

    try:
        summary = predict_folder(
            inputs,
            args.checkpoints,
            args.out,
            engine=args.engine,
            device=args.device,
            precision=args.precision,
            batch=args.batch,
            with_json=args.json,
            overlay_alpha=args.overlay_alpha,
            overlay_format=args.overlay_format,
            max_side=args.max_side,
            skip_existing=args.skip_existing,
            progress=not args.quiet,
            total=total,
            on_error=report,
        )
    except EngineError as exc:  # a RuntimeError: the engine cannot run this checkpoint
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for c in summary.checkpoints:
            print(f"{c['name']}: {c['engine']} {c['precision']}" + (f" ({c['engine_reason']})" if c["engine_reason"] else ""))
    print(summary.line())
    return 0 if summary.ok else 1
