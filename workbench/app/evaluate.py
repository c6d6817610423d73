"""The Evaluate tab: several models on a labelled set (the shipped examples, a CamVid or ISBI split, or an
uploaded zip of ``images/`` + ``masks/``), scored as ``workbench eval`` scores them, streamed image by image.

Each model gets one confusion matrix summed over the images (the evaluation package's
:func:`~workbench.evaluation.validate.accumulate_confusion` with
:func:`~workbench.evaluation.tta.predict_probs`, the routine behind ``evaluate_model``), so its per-class IoUs
are those of ``workbench eval`` on the same images. The per-image table puts first the images where the
models disagree most (then those they get most wrong); "Open in Compare" sends one to the Compare tab.

An uploaded zip is checked member by member before anything is written (:mod:`workbench.data.archive`: no
absolute paths, ``..``, links, zip bombs; here also only images under ``images/`` and ``masks/``, at most
:data:`MAX_IMAGES` images) and is unpacked into a temporary folder that is removed when the run ends.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path, PurePosixPath

import gradio as gr
from gradio import processing_utils
from gradio.utils import get_upload_folder
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from workbench.classes import IGNORE_INDEX
from workbench.data.archive import ArchiveError, extract_members, human_size, is_symlink, open_zip, unsafe_name
from workbench.data.base import DatasetError
from workbench.data.datasets import build_dataset
from workbench.data.examples import examples_root
from workbench.data.files import IMAGE_EXTS, MASK_EXTS
from workbench.data.transforms import eval_transforms
from workbench.evaluation.evaluate import EngineModule
from workbench.evaluation import leaderboard as lb
from workbench.evaluation.metrics import ConfusionMatrix, segmentation_metrics
from workbench.evaluation.report import confusion_figure
from workbench.evaluation.tta import predict_probs
from workbench.evaluation.validate import accumulate_confusion
from workbench.inference.zoo import Zoo
from workbench.io.images import ImageError
from workbench.paths import resolve_data_root

from .common import HEAVY, LIGHT, engine_kwargs, zoo
from .gpu import on_gpu
from .own import is_own, touch

__all__ = [
    "build",
    "available_sets",
    "unpack_labelled_zip",
    "run_evaluation",
    "open_in_compare",
    "MAX_IMAGES",
    "MAX_ZIP_BYTES",
    "MAX_UNPACKED_BYTES",
    "MAX_RATIO",
    "MAX_IMAGE_SIDE",
]

SHIPPED = "Shipped examples (5 CamVid test images)"
CAMVID_TEST, CAMVID_VAL, ISBI = "CamVid test", "CamVid val", "ISBI 2012 test"
UPLOAD = "Upload a zip (images/ + masks/)"
DEFAULT_MODELS = ("fcn8s", "unet")  # cheap and trained: a quick first comparison

MAX_IMAGES = 200  # images per run, whatever the set (an uploaded zip with more is refused)
MAX_ZIP_BYTES = 50_000_000  # the uploaded file itself
MAX_UNPACKED_BYTES = 200_000_000  # what its members declare they unpack to, all together
MAX_RATIO = 100  # a member that unpacks to more than this many times its compressed size is a zip bomb
RATIO_FLOOR = 1 << 20  # ... when it unpacks to more than 1 MiB (tiny members compress oddly)
MAX_IMAGE_SIDE = 4096  # pixels, for uploaded images and masks
SKIPPED_MEMBERS = ("__MACOSX/",)  # archivers' own metadata: never extracted
SKIPPED_NAMES = (".DS_Store", "Thumbs.db")

_ISBI_ZOO: Zoo | None = None


# --- the labelled sets


def _set_kind(name: str) -> str:
    return "isbi" if name == ISBI else "camvid"


def _set_source(name: str) -> tuple[str, str, dict]:
    """``(dataset, split, build_dataset options)`` of a labelled set other than an upload."""
    if name == SHIPPED:
        return "camvid", "test", {"data_root": examples_root()}
    if name == CAMVID_TEST:
        return "camvid", "test", {"data_root": resolve_data_root()}
    if name == CAMVID_VAL:
        return "camvid", "val", {"data_root": resolve_data_root()}
    if name == ISBI:
        return "isbi", "test", {"data_root": resolve_data_root()}
    raise gr.Error(f"Unknown labelled set {name!r}.")


def available_sets() -> list[str]:
    """The labelled sets this installation can evaluate on: the shipped examples, the CamVid and ISBI splits
    found under the data root, and an uploaded zip."""
    names = []
    for name in (SHIPPED, CAMVID_TEST, CAMVID_VAL, ISBI):
        dataset, split, options = _set_source(name)
        try:
            if len(build_dataset(dataset, split, **options)):
                names.append(name)
        except (DatasetError, OSError, ValueError):
            pass  # not there: not offered
    return names + [UPLOAD]


def _zoo_for(kind: str) -> Zoo:
    """CamVid sets run the app's zoo; ISBI runs a zoo of 2-class models (trained where an ISBI checkpoint exists)."""
    global _ISBI_ZOO
    if kind == "camvid":
        return zoo()
    if _ISBI_ZOO is None:
        _ISBI_ZOO = Zoo(dataset="isbi", num_classes=2, **engine_kwargs(Zoo))
    return _ISBI_ZOO


# --- uploads


def _strip_wrapper(names: list[str]) -> str:
    """The one top-level folder every member sits in (a zipped folder ``data/images/...``), else ``""``."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        if top not in ("images", "masks"):
            return top + "/"
    return ""


def unpack_labelled_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Check an uploaded zip of ``images/`` + ``masks/`` and unpack it into ``dest`` (which must not exist).

    Every member is vetted before one byte is written: its name (not absolute, no ``..``, no NUL), not a link,
    only image files directly under ``images/`` or ``masks/`` (one enclosing folder is allowed), at most
    :data:`MAX_IMAGES` images, the declared sizes at most :data:`MAX_UNPACKED_BYTES` in all and no member
    inflating more than :data:`MAX_RATIO` times. After unpacking every file must open as an image of at most
    :data:`MAX_IMAGE_SIDE` pixels a side.

    Returns:
        ``dest``, a folder dataset (``build_dataset("folder", "all", path=dest)``).

    Raises:
        gr.Error: the zip is refused; the message says which member and why.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    size = zip_path.stat().st_size
    if size > MAX_ZIP_BYTES:
        raise gr.Error(f"The zip is {human_size(size)}; uploads are limited to {human_size(MAX_ZIP_BYTES)}.")
    what = "the uploaded zip"
    try:
        zf = open_zip(zip_path, what)
    except ArchiveError as exc:
        raise gr.Error(str(exc)) from None
    with zf:
        infos = zf.infolist()
        for info in infos:  # names and links first: nothing else is looked at in a hostile archive
            if unsafe_name(info.filename):
                raise gr.Error(f"Refused: {what} holds an unsafe member path {info.filename!r} (absolute or '..').")
            if is_symlink(info):
                raise gr.Error(f"Refused: {what} holds a symbolic link {info.filename!r}; only image files are accepted.")
        files = [i for i in infos if not i.is_dir() and not i.filename.startswith(SKIPPED_MEMBERS) and PurePosixPath(i.filename).name not in SKIPPED_NAMES]
        prefix = _strip_wrapper([i.filename for i in files])
        plan, n_images, n_masks = [], 0, 0
        for info in files:
            rel = PurePosixPath(info.filename[len(prefix):])
            folder, suffix = rel.parts[0] if len(rel.parts) > 1 else "", rel.suffix.lower()
            exts = IMAGE_EXTS if folder == "images" else MASK_EXTS
            if len(rel.parts) != 2 or folder not in ("images", "masks") or suffix not in exts:
                raise gr.Error(
                    f"Refused: {what} holds {info.filename!r}; it may hold only image files directly under images/ "
                    f"({', '.join(IMAGE_EXTS)}) and masks/ ({', '.join(MASK_EXTS)})."
                )
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
                raise gr.Error(
                    f"Refused: {info.filename!r} would unpack from {human_size(info.compress_size)} to {human_size(info.file_size)} "
                    f"(more than {MAX_RATIO}x): a zip bomb, not an image."
                )
            n_images += folder == "images"
            n_masks += folder == "masks"
            plan.append((info, str(rel)))
        if n_images == 0:
            raise gr.Error(f"{what} holds no images/ folder with images; put the images in images/ and their masks (same file names) in masks/.")
        if n_masks == 0:
            raise gr.Error(f"{what} holds no masks/ folder; every image in images/ needs a mask with the same file stem in masks/.")
        if n_images > MAX_IMAGES:
            raise gr.Error(f"{what} holds {n_images} images; at most {MAX_IMAGES} can be evaluated at once.")
        try:  # the shared extraction: checks the plan again, writes only inside dest, refuses a member twice
            extract_members(zf, plan, dest, max_bytes=MAX_UNPACKED_BYTES, what=what)
        except (ArchiveError, OSError) as exc:
            raise gr.Error(f"Refused: {exc}") from None
    for path in sorted(dest.rglob("*")):
        if path.is_file():
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except Exception:
                raise gr.Error(f"Refused: {path.relative_to(dest)} in the zip is not an image that can be read.") from None
            if max(w, h) > MAX_IMAGE_SIDE:
                raise gr.Error(f"Refused: {path.relative_to(dest)} is {w}x{h}; images of at most {MAX_IMAGE_SIDE} pixels a side are evaluated.")
    return dest


# --- figures


def _iou_figure(results: dict, class_names: list[str]) -> Figure:
    rows = [{"name": f"{a} (mIoU {100 * r['metrics']['miou']:.1f})", "per_class_iou": r["metrics"]["per_class_iou"], "class_names": class_names}
            for a, r in results.items()]
    return lb.per_class_iou_figure(rows, "Per-class IoU on the images evaluated so far (a class absent from labels and predictions shows 0)")


def _latency_figure(results: dict) -> Figure:
    rows = [{"name": a, "miou": r["metrics"]["miou"], "latency_ms": r["latency_ms"]} for a, r in results.items()]
    return lb.miou_latency_figure(rows, xlabel="median time per image (ms; this machine, models run one after another)", ylabel="mIoU (%)", log_x=False)


def _png(fig: Figure) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf)


# --- the run


def _dataset(set_name: str, folder: Path | None, mean, std, classes):
    transform = eval_transforms(mean=mean, std=std)
    try:
        if folder is not None:
            return build_dataset("folder", "all", path=str(folder), classes=classes, transform=transform)
        dataset, split, options = _set_source(set_name)
        return build_dataset(dataset, split, transform=transform, **options)
    except DatasetError as exc:
        raise gr.Error(str(exc)) from None


def _evaluation_duration(archs=None, *args, **kwargs) -> int:
    return int(min(300, 30 + 30 * len(archs or ())))


def _table(names: list[str], rows: list[dict], archs: list[str]) -> pd.DataFrame:
    ordered = sorted(rows, key=lambda r: (-r["disagreement"], r["mean_miou"]))
    data = [[r["image"], *[round(100 * r["miou"].get(a, math.nan), 1) for a in archs], round(100 * r["disagreement"], 1)] for r in ordered]
    return pd.DataFrame(data, columns=["image", *[f"{a} mIoU %" for a in archs], "disagreement %"])


@on_gpu(duration=_evaluation_duration)
def run_evaluation(archs: list[str], set_name: str, upload: str | None, limit: float | None, progress=gr.Progress()):
    """Evaluate ``archs`` on a labelled set, yielding the views after every image.

    Args:
        archs: architectures of the zoo (the CamVid zoo; ISBI: the 2-class zoo).
        set_name: one of :func:`available_sets`.
        upload: the uploaded zip's path (``set_name`` is the upload choice).
        limit: evaluate the first ``limit`` images (at most :data:`MAX_IMAGES`).

    Yields:
        ``(status markdown, per-class IoU figure, confusion matrices gallery, mIoU-latency figure, per-image
        table, image chooser update, state)``; ``state`` maps image names to what Compare opens (a path, or an
        uploaded image's file name and bytes). ``results`` inside the last state: per model the summed confusion matrix's
        metrics (:func:`~workbench.evaluation.metrics.segmentation_metrics`).
    """
    archs = list(archs or [])
    if not archs:
        raise gr.Error("Choose at least one model.")
    if not set_name:
        raise gr.Error("Choose a labelled set.")
    n_max = MAX_IMAGES if limit is None else int(limit)
    if not 1 <= n_max <= MAX_IMAGES:
        raise gr.Error(f"The number of images must be between 1 and {MAX_IMAGES}.")
    kind = _set_kind(set_name)
    models = _zoo_for(kind)
    gone = [a for a in archs if is_own(a) and a not in zoo().entries]
    if gone:
        raise gr.Error(f"{len(gone)} of your checkpoints is no longer kept (unused for an hour, or the session ended): add it again in Compare.")
    touch(archs)
    unknown = [a for a in archs if a not in models.entries and not is_own(a)]
    if unknown:
        raise gr.Error(f"Unknown model(s): {', '.join(unknown)}.")
    with tempfile.TemporaryDirectory(prefix="workbench-evaluate-") as tmp:
        folder = None
        if set_name == UPLOAD:
            if not upload:
                raise gr.Error("Upload a zip with images/ and masks/ first.")
            folder = unpack_labelled_zip(upload, Path(tmp) / "set")
        yield from _run(archs, set_name, folder, n_max, models, progress)


def _source(models: Zoo, name: str) -> Zoo:
    """The zoo that serves ``name``: the set's (``models``), or the app's for a user's own checkpoint, which can
    be any dataset's (it is skipped when its classes do not fit the set)."""
    return zoo() if is_own(name) else models


def _run(archs, set_name, folder, n_max, models, progress):
    predictors, notes = {}, []
    for a in archs:
        try:
            predictors[a] = _source(models, a).predictor(a)
        except Exception as exc:
            notes.append(f"`{a}` could not be loaded: {type(exc).__name__}: {exc}")
    if not predictors:
        raise gr.Error("None of the chosen models could be loaded: " + "; ".join(notes))
    first = next(iter(predictors.values()))
    normalisation = {a: (tuple(p.mean.view(-1).tolist()), tuple(p.std.view(-1).tolist())) for a, p in predictors.items()}
    datasets: dict[tuple, object] = {}  # one per normalisation
    for key in normalisation.values():
        if key not in datasets:
            datasets[key] = _dataset(set_name, folder, list(key[0]), list(key[1]), first.classes)
    ds0 = next(iter(datasets.values()))
    for a, p in list(predictors.items()):
        ds = datasets[normalisation[a]]
        if p.in_chans != ds.in_chans or (p.num_classes and p.num_classes != ds.num_classes):
            notes.append(f"`{a}` skipped: it takes {p.in_chans}-channel images into {p.num_classes} classes; this set has {ds.in_chans}-channel images and {ds.num_classes} classes.")
            del predictors[a]
    if not predictors:
        raise gr.Error("None of the chosen models fits this set: " + "; ".join(notes))
    untrained = [a for a in predictors if not _source(models, a).entries[a].trained]
    if untrained:
        notes.append(f"Untrained (random weights, no {models.dataset} checkpoint): {', '.join(f'`{a}`' for a in untrained)}.")
    n = min(len(ds0), n_max)
    names = [str(c["name"]) for c in ds0.classes]
    matrices = {a: ConfusionMatrix(ds0.num_classes, ignore_index=getattr(ds0, "ignore_index", IGNORE_INDEX)) for a in predictors}
    latencies: dict[str, list[float]] = {a: [] for a in predictors}
    rows: list[dict] = []
    state: dict = {"images": {}, "order": []}
    capped = f" (the first {n} of {len(ds0)}; at most {MAX_IMAGES} per run)" if n < len(ds0) else ""
    header = f"**{set_name}**: {n} image(s){capped}, {len(ds0.classes)} classes, void pixels excluded."
    modules = {a: EngineModule(p) for a, p in predictors.items()}
    for i in range(n):
        progress((i, n), desc=f"image {i + 1} of {n}")
        labels, row = {}, {"miou": {}}
        for a, module in modules.items():
            ds = datasets[normalisation[a]]
            scored = []
            try:
                cm = accumulate_confusion(
                    ds, lambda _i, item: predict_probs(module, item["image"]), indices=[i], num_classes=ds.num_classes,
                    ignore_index=getattr(ds, "ignore_index", IGNORE_INDEX), on_item=scored.append, timed=True, errors=gr.Error,
                )
            except (DatasetError, ImageError) as exc:
                raise gr.Error(str(exc)) from None
            matrices[a].merge(cm)
            s = scored[0]
            latencies[a].append(s.latency_ms)
            labels[a] = s.labels.cpu()
            row["miou"][a] = segmentation_metrics(s.counts)["miou"]
            row["image"] = str(s.item.get("name", i))
            mask = s.item["mask"]
        valid = torch.as_tensor(mask) != getattr(ds0, "ignore_index", IGNORE_INDEX)
        stack = torch.stack(list(labels.values()))
        differ = (stack != stack[0]).any(0)
        row["disagreement"] = float(differ[valid].float().mean()) if valid.any() else 0.0
        vals = [v for v in row["miou"].values() if not math.isnan(v)]
        row["mean_miou"] = sum(vals) / len(vals) if vals else 1.0
        rows.append(row)
        image_path = Path(ds0.files[i][0])
        state["images"][row["image"]] = (image_path.name, image_path.read_bytes()) if folder is not None else str(image_path)
        results = {a: {"metrics": segmentation_metrics(m.matrix), "latency_ms": float(np.median(latencies[a]))} for a, m in matrices.items()}
        final = i == n - 1
        table = _table(names, rows, list(predictors))
        state["order"] = list(table["image"])
        state["results"] = results
        figures_now = final or i % 5 == 0
        status = header + f" Evaluated {i + 1} of {n}."
        if final:
            status += (
                " Dataset IoUs come from one confusion matrix per model summed over every image (as `workbench eval`); "
                "the table lists the images where the models disagree most first (then the lowest mean mIoU)."
            )
        if notes:
            status += "\n\n" + "\n\n".join(notes)
        yield (
            status,
            _iou_figure(results, names) if figures_now else gr.skip(),
            [(_png(confusion_figure(r["metrics"]["confusion"], names, a)), a) for a, r in results.items()] if final else gr.skip(),
            _latency_figure(results) if figures_now else gr.skip(),
            table,
            gr.update(choices=state["order"], value=state["order"][0]),
            state,
        )
    progress((n, n), desc="done")


def open_in_compare(name: str | None, state: dict | None):
    """The chosen image's file for the Compare tab's input: its path (a set on disk), or for an uploaded set the
    image's own bytes (read before its temporary folder was removed) written into Gradio's upload cache, where
    every upload goes and whence old files are deleted (``delete_cache``), unchanged, so Compare sees its exact pixels."""
    images = (state or {}).get("images") or {}
    if not name or name not in images:
        gr.Warning("Run an evaluation and choose an image from its table first.")
        return gr.skip()
    src = images[name]
    if isinstance(src, str):
        return src
    file_name, data = src
    return processing_utils.save_bytes_to_cache(data, file_name, get_upload_folder())


def select_row(state: dict | None, evt: gr.SelectData = None):
    """A click in the per-image table chooses that row's image."""
    order = (state or {}).get("order") or []
    if evt is None:
        return gr.skip()
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if not order or row is None or not 0 <= int(row) < len(order):
        return gr.skip()
    return order[int(row)]


# JavaScript run after "Open in Compare" (with the chosen image's name): click the Compare tab's button (the tabs
# need no ids for this); nothing chosen, nothing opened: stay here
SHOW_COMPARE = """(name) => {
  if (!name) return;
  const tab = [...document.querySelectorAll('button[role=tab]')].find((b) => b.textContent.trim() === 'Compare');
  if (tab) tab.click();
}"""


def build(names: list[str], compare_image: gr.Image) -> gr.CheckboxGroup:
    """Lay out the Evaluate tab and wire its events; "Open in Compare" fills ``compare_image`` and shows that tab.
    Returns the models' checkbox group (the session's own checkpoints join its choices: :mod:`~workbench.app.own`)."""
    sets = available_sets()
    gr.Markdown(
        "Score several models on labelled images: the shipped examples, a CamVid or ISBI split when the data is "
        f"there, or your own zip with `images/` and `masks/` (same file names; masks as CamVid class ids 0-10, 255 = void, "
        f"or in the CamVid colours). Your own checkpoints join the models once added in Compare (*Add your own checkpoint*). Uploads: at most {human_size(MAX_ZIP_BYTES)}, {MAX_IMAGES} images, {MAX_IMAGE_SIDE} "
        "pixels a side; unpacked into a temporary folder that is removed after the run."
    )
    with gr.Row():
        archs = gr.CheckboxGroup(names, value=[a for a in DEFAULT_MODELS if a in names], label="Models")
    with gr.Row():
        labelled = gr.Radio(sets, value=sets[0], label="Labelled set")
        upload = gr.File(label="Zip of images/ + masks/", file_types=[".zip"], type="filepath")
        limit = gr.Number(value=20, minimum=1, maximum=MAX_IMAGES, precision=0, label=f"At most this many images (1-{MAX_IMAGES})")
    run = gr.Button("Evaluate", variant="primary")
    status = gr.Markdown()
    iou = gr.Plot(label="Per-class IoU")
    with gr.Row():
        latency = gr.Plot(label="mIoU against time per image")
        confusion = gr.Gallery(label="Confusion matrices (rows: ground truth)", columns=2, height=420)
    table = gr.Dataframe(label="Per image: where the models disagree most first", interactive=False, wrap=True, elem_id="wb-eval-table")
    with gr.Row():
        chosen = gr.Dropdown([], label="Image", allow_custom_value=False)
        open_btn = gr.Button("Open in Compare")
    state = gr.State({})
    run.click(
        run_evaluation, [archs, labelled, upload, limit], [status, iou, confusion, latency, table, chosen, state], api_name=False, **HEAVY
    )
    table.select(select_row, [state], chosen, api_name=False, **LIGHT)
    open_btn.click(open_in_compare, [chosen, state], compare_image, api_name=False, **LIGHT).success(None, [chosen], None, js=SHOW_COMPARE)
    return archs
