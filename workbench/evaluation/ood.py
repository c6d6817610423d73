"""Calibrating the out-of-distribution score (``workbench calibrate-ood``; the score is :mod:`workbench.inference.ood`).

In-distribution images are CamVid's: val calibrates (component means and standard deviations, the threshold
that keeps ``keep`` of val, by default 95%), test is the held-out check. Out-of-distribution images are what a
machine without a network has: matplotlib's sample photographs, scikit-image's test images (when installed),
ISBI electron-microscopy slices from the data root and seeded synthetic textures; sorted by name per source,
alternate images go to the calibration and the held-out half, so every source is in both. The method (one
component score or the mean of two z-scored ones) is the one with the best AUROC on the calibration half (ties:
the widest gap between val and those OOD images); its threshold sits in the middle of that gap, never below the
score that keeps ``keep`` of val (:func:`_threshold`). Both are then checked on the held-out half: AUROC, the share of CamVid test kept as in-distribution, the
share of OOD images caught, per source. Near-OOD probes (CamVid test images upside down, in grey) are reported
separately: they show what the score does not catch.

Writes ``workbench/inference/ood.json`` (what the package reads: method, statistics, threshold, layout prior, the sha256
of the weights it was calibrated for, the command that made it) and ``benchmarks/ood_calibration.{json,md}``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.datasets import build_dataset
from ..inference.ood import COMPONENTS, OOD_FILE, LayoutPrior, OodCalibration, component_scores
from ..inference.predictor import Predictor
from ..io.manifest import Manifest, checkpoint_paths
from ..paths import checkpoints_dir, resolve_data_root
from ..system.machine import machine_description, machine_line

__all__ = ["auroc", "layout_prior", "ood_images", "calibrate", "write_results", "main", "DEFAULT_CHECKPOINTS"]

DEFAULT_CHECKPOINTS = ("camvid_unet", "camvid_fcn8s")
LAYOUT_GRID = (6, 8)  # rows x columns of the layout prior: coarse enough for 367 training images to fill every cell


def auroc(in_dist: np.ndarray, out_dist: np.ndarray) -> float:
    """Area under the ROC curve for "higher score = out of distribution": the probability that a random OOD
    image scores above a random in-distribution one (ties count half)."""
    a = np.asarray(in_dist, dtype=np.float64).ravel()
    b = np.asarray(out_dist, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("AUROC needs at least one in-distribution and one out-of-distribution score")
    greater = (b[:, None] > a[None, :]).sum()
    equal = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * equal) / (a.size * b.size))


def layout_prior(data_root=None, split: str = "train", grid: tuple[int, int] = LAYOUT_GRID) -> tuple[LayoutPrior, int]:
    """Per-cell class frequencies of CamVid ``split``'s label maps (void skipped), and the number of images."""
    ds = build_dataset("camvid", split, data_root=data_root)
    c = len(ds.classes)
    gh, gw = grid
    counts = np.zeros(gh * gw * c, np.int64)
    cells = None
    for _, mask_path in ds.files:
        lab = np.asarray(Image.open(mask_path))
        if lab.ndim != 2:
            raise ValueError(f"{mask_path}: expected a single-channel label map, got shape {lab.shape}")
        if cells is None or cells.shape != lab.shape:
            cells = LayoutPrior.cell_index(*lab.shape, grid)
        valid = lab < c
        counts += np.bincount((cells[valid] * c + lab[valid]).ravel(), minlength=gh * gw * c)
    return LayoutPrior.from_counts(counts.reshape(gh, gw, c).transpose(2, 0, 1)), len(ds.files)


# -- out-of-distribution images available offline ----------------------------------------------------------------

_SKIMAGE_IMAGES = (  # skimage.data loaders that need no download; licences in skimage.data's docstrings (docs/ood.md)
    "astronaut", "brick", "camera", "cat", "cell", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
    "rocket", "text", "clock", "chessboard",
)


def _to_rgb(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = ((a - a.min()) / max(a.max() - a.min(), 1e-12) * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    return Image.fromarray(a).convert("RGB")


def _synthetic(seed: int) -> Iterator[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    h, w = 360, 480
    yy, xx = np.mgrid[0:h, 0:w]
    yield "uniform_noise", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    yield "grey_noise", Image.fromarray(np.repeat(rng.integers(0, 256, (h, w, 1), dtype=np.uint8), 3, -1))
    yield "checkerboard", Image.fromarray(((((yy // 40) + (xx // 40)) % 2) * 255).astype(np.uint8)).convert("RGB")
    yield "stripes", Image.fromarray(np.stack([(np.sin(xx / 6.0) * 127 + 128), np.zeros((h, w)), (np.cos(yy / 9.0) * 127 + 128)], -1).astype(np.uint8))
    yield "gradient", Image.fromarray(np.stack([xx * 255 // w, yy * 255 // h, 255 - xx * 255 // w], -1).astype(np.uint8))
    yield "black", Image.fromarray(np.zeros((h, w, 3), np.uint8))
    yield "white", Image.fromarray(np.full((h, w, 3), 255, np.uint8))
    yield "red", Image.fromarray(np.tile(np.array([200, 30, 30], np.uint8), (h, w, 1)))
    blobs = np.zeros((h, w, 3), np.float64)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 90)
        blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(0, 255, 3)
    yield "colour_blobs", Image.fromarray(np.clip(blobs, 0, 255).astype(np.uint8))
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (h // 24, w // 24, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    yield "smooth_noise", Image.fromarray(smooth)


def ood_images(data_root=None, seed: int = 0, isbi_count: int = 10) -> list[tuple[str, str, Image.Image]]:
    """``(source, name, RGB image)`` for every offline out-of-distribution image: matplotlib's sample photos,
    scikit-image's test images (if scikit-image is installed), up to ``isbi_count`` ISBI slices from the data
    root (if present) and synthetic textures. Sorted by source, then name."""
    out: list[tuple[str, str, Image.Image]] = []
    import matplotlib  # (a dependency of the package; imported here because only calibration needs its sample data)

    sample = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (sample / name).is_file():
            with Image.open(sample / name) as im:
                out.append(("matplotlib", name, im.convert("RGB")))
    try:
        import skimage.data  # optional: pip install scikit-image
    except ImportError:
        pass
    else:
        for name in _SKIMAGE_IMAGES:
            loader = getattr(skimage.data, name, None)
            if loader is None:
                continue
            try:
                out.append(("skimage", name, _to_rgb(loader())))
            except Exception:  # a loader that needs a download (pooch) on this version: skipped, offline
                continue
    isbi = resolve_data_root(data_root) / "isbi2012-membrane" / "image"
    if isbi.is_dir():
        files = sorted(p for p in isbi.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg"))
        step = max(1, len(files) // max(isbi_count, 1))
        for p in files[::step][:isbi_count]:
            with Image.open(p) as im:
                out.append(("isbi", p.name, im.convert("RGB")))
    out.extend(("synthetic", name, im) for name, im in _synthetic(seed))
    return sorted(out, key=lambda t: (t[0], t[1]))


def _split_halves(items: list[tuple[str, str, Any]]) -> tuple[list, list]:
    """Alternate images of each source to the calibration and the held-out half."""
    cal, held = [], []
    for _, group in itertools.groupby(items, key=lambda t: t[0]):
        for i, item in enumerate(group):
            (cal if i % 2 == 0 else held).append(item)
    return cal, held


# -- scoring and choosing --------------------------------------------------------------------------------------

def _score_images(pred: Predictor, images, prior: LayoutPrior) -> list[dict[str, float]]:
    return [component_scores(pred.predict(im).logits_work, prior) for im in images]


def _methods(components=COMPONENTS) -> list[tuple[str, ...]]:
    singles = [(c,) for c in components]
    pairs = [p for p in itertools.combinations(components, 2)]
    return singles + pairs


def _combined(rows: list[dict[str, float]], comps: tuple[tuple[str, float, float], ...]) -> np.ndarray:
    return np.array([np.mean([(r[n] - m) / s for n, m, s in comps]) for r in rows])


def _threshold(s_val: np.ndarray, s_ood: np.ndarray, keep: float) -> tuple[float, float]:
    """The threshold and the gap it sits in, from calibration scores only.

    ``lo``: the ``keep`` quantile of the in-distribution scores (at least ``keep`` of them are kept);
    ``hi``: the ``1 - keep`` quantile of the OOD scores (at least ``keep`` of them are caught above it). When
    ``hi > lo`` the threshold is the middle of the gap, so street scenes less like val than val's own 5% tail
    still have room; otherwise it is ``lo``. ``gap``: ``(hi - lo)`` in standard deviations of the val scores
    (negative when the two overlap), which ranks methods whose calibration AUROC ties."""
    lo, hi = float(np.quantile(s_val, keep)), float(np.quantile(s_ood, 1 - keep))
    gap = (hi - lo) / max(float(np.std(s_val)), 1e-12)
    return ((lo + hi) / 2 if hi > lo else lo), gap


def _rates(scores_id: np.ndarray, scores_ood: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "auroc": auroc(scores_id, scores_ood),
        "in_distribution_kept": float(np.mean(scores_id <= threshold)),
        "ood_caught": float(np.mean(scores_ood > threshold)),
    }


def calibrate(
    checkpoints=DEFAULT_CHECKPOINTS,
    *,
    data_root=None,
    keep: float = 0.95,
    engine: str = "torch",
    seed: int = 0,
    limit: int | None = None,
    probes: int = 40,
    ood: list[tuple[str, str, Image.Image]] | None = None,
    log=print,
) -> dict[str, Any]:
    """Calibrate the OOD score for each checkpoint (names in ``checkpoints_dir()`` or paths); returns the
    results (the ``calibrations`` entries for the calibration file and the full measurements). ``limit``: at most this
    many CamVid images per split (for quick runs; the shipped calibration uses all). ``ood``: your own
    ``(source, name, image)`` out-of-distribution images instead of :func:`ood_images`."""
    if not 0.5 <= keep < 1:
        raise ValueError(f"keep must be in [0.5, 1), got {keep}")
    t_start = time.perf_counter()
    prior, n_prior = layout_prior(data_root)
    val = build_dataset("camvid", "val", data_root=data_root).files
    test = build_dataset("camvid", "test", data_root=data_root).files
    if limit:  # spread over the split's sequences, not its first images
        val, test = val[:: max(1, len(val) // limit)][:limit], test[:: max(1, len(test) // limit)][:limit]
    ood = sorted(ood, key=lambda t: (t[0], t[1])) if ood is not None else ood_images(data_root, seed)
    ood_cal, ood_held = _split_halves(ood)
    if len(ood_cal) < 3 or len(ood_held) < 3:
        raise ValueError(f"too few out-of-distribution images ({len(ood)}); install scikit-image for more")
    probe_files = test[:: max(1, len(test) // max(probes, 1))][:probes] if probes else []
    log(f"layout prior from {n_prior} CamVid train label maps; CamVid val {len(val)}, test {len(test)}; "
        f"OOD calibration {len(ood_cal)}, held-out {len(ood_held)}; near-OOD probes {len(probe_files)} x 2")
    calibrations, results = [], []
    for ck in checkpoints:
        manifest_path, _ = checkpoint_paths(_checkpoint_path(ck))
        manifest = Manifest.read(manifest_path)
        pred = Predictor(manifest_path, device="cpu", engine=engine, precision="fp32" if engine == "torch" else "auto")
        t0 = time.perf_counter()
        rows = {
            "camvid_val": _score_images(pred, [p for p, _ in val], prior),
            "camvid_test": _score_images(pred, [p for p, _ in test], prior),
            "ood_calibration": _score_images(pred, [im for _, _, im in ood_cal], prior),
            "ood_held_out": _score_images(pred, [im for _, _, im in ood_held], prior),
        }
        if probe_files:
            flipped, grey = [], []
            for p, _ in probe_files:
                with Image.open(p) as im:
                    rgb = im.convert("RGB")
                flipped.append(rgb.transpose(Image.FLIP_TOP_BOTTOM))
                grey.append(rgb.convert("L").convert("RGB"))
            rows["probe_upside_down"] = _score_images(pred, flipped, prior)
            rows["probe_grey"] = _score_images(pred, grey, prior)
        n_images = sum(len(v) for v in rows.values())
        log(f"{manifest_path.stem}: {n_images} images scored in {time.perf_counter() - t0:.0f} s ({pred.engine} {pred.engine_precision})")
        # every method's calibration AUROC; statistics from CamVid val
        stats = {c: (float(np.mean([r[c] for r in rows["camvid_val"]])), float(np.std([r[c] for r in rows["camvid_val"]]) or 1.0)) for c in COMPONENTS}
        table = []
        for method in _methods():
            comps = tuple((c, *stats[c]) for c in method)
            s_val, s_cal = _combined(rows["camvid_val"], comps), _combined(rows["ood_calibration"], comps)
            thr, gap = _threshold(s_val, s_cal, keep)
            s_test, s_held = _combined(rows["camvid_test"], comps), _combined(rows["ood_held_out"], comps)
            table.append({
                "method": "+".join(method), "threshold": thr, "gap": gap,
                "calibration": _rates(s_val, s_cal, thr), "held_out": _rates(s_test, s_held, thr),
            })
        # the best calibration AUROC, then the widest gap between val and the calibration OOD images
        best = max(table, key=lambda r: (round(r["calibration"]["auroc"], 3), r["gap"]))
        comps = tuple((c, *stats[c]) for c in best["method"].split("+"))
        thr = best["threshold"]
        per_source = {}
        for (source, name, _), row in zip(ood_held, rows["ood_held_out"]):
            s = float(_combined([row], comps)[0])
            per_source.setdefault(source, []).append({"name": name, "score": round(s, 3), "caught": s > thr})
        cal_names = [f"{s}/{n}" for s, n, _ in ood_cal]
        probes_out = {k: float(np.mean(_combined(rows[k], comps) > thr)) for k in ("probe_upside_down", "probe_grey") if k in rows}
        info = {
            "calibrated_on": {"in_distribution": f"camvid/val ({len(val)} images)", "keep": keep,
                              "out_of_distribution": cal_names},
            "held_out": {**best["held_out"], "camvid_test_images": len(test), "ood_images": len(ood_held)},
            "engine": f"{pred.engine} {pred.engine_precision}",
        }
        cal = OodCalibration(manifest_path.stem, manifest.sha256, comps, thr, prior if "layout" in best["method"] else None, info)
        calibrations.append(cal)
        results.append({
            "checkpoint": manifest_path.stem, "sha256": manifest.sha256, "engine": f"{pred.engine} {pred.engine_precision}",
            "chosen": best["method"], "threshold": thr, "methods": table, "held_out_per_source": per_source,
            "near_ood_probes_caught": probes_out,
            "scores": {k: v for k, v in rows.items()},
            "ood_calibration_images": cal_names, "ood_held_out_images": [f"{s}/{n}" for s, n, _ in ood_held],
        })
    return {
        "calibrations": calibrations, "results": results, "keep": keep, "layout_grid": list(LAYOUT_GRID),
        "layout_prior_images": n_prior, "seconds": time.perf_counter() - t_start,
    }


def _checkpoint_path(ck: str | os.PathLike) -> Path:
    p = Path(ck)
    if p.suffix in (".json", ".safetensors") or p.exists():
        return p
    cand = checkpoints_dir() / f"{ck}.json"
    if not cand.is_file():
        raise FileNotFoundError(f"checkpoint {ck!r} not found (looked for {cand})")
    return cand


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_results(out: dict[str, Any], ood_path: Path, bench_dir: Path | None, command: str) -> None:
    """Write ``ood.json`` (what the package reads) and, if ``bench_dir``, ``ood_calibration.{json,md}``."""
    machine = machine_description()
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "format": "workbench-ood", "format_version": 1, "created": created, "command": command,
        "about": "Out-of-distribution score per checkpoint (workbench/inference/ood.py, docs/ood.md): "
                 "score = mean z-score of the components; flagged when score > threshold.",
        "calibrations": [c.to_dict() for c in out["calibrations"]],
    }
    _atomic_write(ood_path, json.dumps(doc, indent=1) + "\n")
    if bench_dir is None:
        return
    bench_dir.mkdir(parents=True, exist_ok=True)
    bench = {"created": created, "command": command, "machine": machine, "keep": out["keep"],
             "layout_grid": out["layout_grid"], "layout_prior_images": out["layout_prior_images"],
             "seconds": round(out["seconds"], 1), "results": out["results"]}
    _atomic_write(bench_dir / "ood_calibration.json", json.dumps(bench, indent=1) + "\n")
    _atomic_write(bench_dir / "ood_calibration.md", render_markdown(bench, out["calibrations"]))


def agreement_rates(results: list[dict[str, Any]], calibrations) -> dict[str, float]:
    """Share of images flagged per set (``camvid_test``, ``ood_held_out``, ...) under the app's rule: flagged only
    when every calibrated checkpoint flags it (:func:`workbench.app.knowledge.ood_verdict`)."""
    by_name = {c.checkpoint: c for c in calibrations}
    flags: dict[str, np.ndarray] = {}
    for r in results:
        cal = by_name[r["checkpoint"]]
        for key, rows in r["scores"].items():
            f = np.array([cal.combine(row) > cal.threshold for row in rows])
            flags[key] = f if key not in flags else flags[key] & f
    return {k: float(v.mean()) for k, v in flags.items()}


def render_markdown(bench: dict[str, Any], calibrations) -> str:
    """``benchmarks/ood_calibration.md`` from the benchmark record (``ood_calibration.json``) and the calibrations."""
    machine, out, created, command = bench["machine"], bench, bench["created"], bench["command"]
    lines = [
        "# Out-of-distribution score: calibration and held-out accuracy", "",
        f"Machine: {machine_line(machine)}, ISA {machine.get('isa')}, native bf16: {'yes' if machine.get('bf16') else 'no'}. Command: `{command}` ({out['seconds']:.0f} s). Written {created}.", "",
        f"In-distribution: CamVid val calibrates (statistics; the threshold keeps at least {_pct(out['keep'])} of val and sits in the middle of the gap to the calibration OOD images), CamVid test is held out. "
        "Out-of-distribution: matplotlib and scikit-image sample images, ISBI membrane slices, synthetic textures; "
        "alternate images per source go to the calibration and the held-out half. The method is chosen by calibration AUROC, then the gap. "
        "Higher score = less like the training data.", "",
    ]
    for r in out["results"]:
        lines += [f"## {r['checkpoint']} ({r['engine']}; weights sha256 {r['sha256'][:12]}...)", "",
                  f"Chosen: **{r['chosen']}**, threshold {r['threshold']:.3f}.", "",
                  "| method | calibration AUROC | gap (val sd) | threshold | val kept | OOD caught (cal.) | held-out AUROC | CamVid test kept | OOD caught (held-out) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m in sorted(r["methods"], key=lambda m: (-round(m["calibration"]["auroc"], 3), -m["gap"])):
            c, h = m["calibration"], m["held_out"]
            name = f"**{m['method']}**" if m["method"] == r["chosen"] else m["method"]
            lines.append(f"| {name} | {c['auroc']:.3f} | {m['gap']:.1f} | {m['threshold']:.2f} | {_pct(c['in_distribution_kept'])} | {_pct(c['ood_caught'])} | "
                         f"{h['auroc']:.3f} | {_pct(h['in_distribution_kept'])} | {_pct(h['ood_caught'])} |")
        lines += ["", "Held-out OOD images, chosen method (score; caught or missed):", ""]
        for source, items in r["held_out_per_source"].items():
            caught = sum(i["caught"] for i in items)
            detail = ", ".join(f"{i['name']} {i['score']:.2f}{'' if i['caught'] else ' (missed)'}" for i in items)
            lines.append(f"- {source}: {caught}/{len(items)} caught ({detail})")
        if r["near_ood_probes_caught"]:
            lines += ["", "Near-OOD probes (CamVid test images altered; not part of the threshold): " + ", ".join(
                f"{k.removeprefix('probe_').replace('_', ' ')} {_pct(v)} flagged" for k, v in r["near_ood_probes_caught"].items())]
        lines.append("")
    if len(out["results"]) > 1:
        rates = agreement_rates(out["results"], calibrations)
        names = " and ".join(r["checkpoint"] for r in out["results"])
        lines += ["## All checkpoints agree (the app's rule)", "",
                  f"The app flags an image only when every calibrated checkpoint that ran flags it; with {names} both running:", ""]
        lines += [f"- {k.replace('_', ' ')}: {_pct(v)} flagged" for k, v in rates.items()]
        lines.append("")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(args) -> int:
    """``workbench calibrate-ood``: calibrate, print the summary, write ``ood.json`` and the benchmark files."""
    out = calibrate(args.checkpoints or DEFAULT_CHECKPOINTS, data_root=args.data_root, keep=args.keep, engine=args.engine,
                    seed=args.seed, limit=args.limit, probes=args.probes)
    ood_path = Path(args.out) if args.out else OOD_FILE
    bench_dir = None if args.no_benchmark else Path(args.benchmark_dir)
    command = "workbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] and "calibrate-ood" in sys.argv else "workbench calibrate-ood"
    write_results(out, ood_path, bench_dir, command)
    for r in out["results"]:
        best = next(m for m in r["methods"] if m["method"] == r["chosen"])
        h = best["held_out"]
        print(f"{r['checkpoint']}: {r['chosen']} threshold {r['threshold']:.3f}; held-out AUROC {h['auroc']:.3f}, "
              f"CamVid test kept {_pct(h['in_distribution_kept'])}, OOD caught {_pct(h['ood_caught'])}")
    print(f"wrote {ood_path}" + ("" if bench_dir is None else f", {bench_dir / 'ood_calibration.md'}, {bench_dir / 'ood_calibration.json'}"))
    return 0
