"""Writing evaluation results: JSON per checkpoint, a Markdown leaderboard per split, confusion plots.

:func:`write_results` writes ``<stem>.<split>.json``, ``<stem>.<split>.confusion.png`` and
``leaderboard_<split>.md``; :func:`format_leaderboard` and :func:`plot_confusion` make one each.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.checkpoint import atomic_write_bytes

__all__ = ["format_leaderboard", "plot_confusion", "confusion_figure", "write_results", "jsonable"]


def jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _miou_key(r: dict) -> float:
    v = r.get("metrics", {}).get("miou")
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f}"


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    m = n / 1e6
    return f"{m:.2f}" if m >= 0.1 else f"{m:.3g}"


def _setting(r: dict) -> str:
    o = r.get("options", {})
    parts = [f"{r.get('dataset')}/{r.get('split')}", f"{r.get('n_images')} images"]
    if o.get("flip"):
        parts.append("flip")
    if o.get("scales"):
        parts.append("scales " + " ".join(f"{f:g}" for f in o["scales"]))
    if o.get("window"):
        parts.append(f"window {o['window'][0]}x{o['window'][1]} stride {o['stride'][0]}x{o['stride'][1]}")
    parts.append(str(o.get("precision", "fp32")))
    return ", ".join(parts)


def format_leaderboard(results: list[dict]) -> str:
    """A Markdown table of ``results`` sorted by mIoU (best first); values in percent."""
    rows = sorted(results, key=_miou_key, reverse=True)
    names: list[str] = []
    for r in rows:
        for n in r.get("metrics", {}).get("class_names", []):
            if n not in names:
                names.append(n)
    settings = {_setting(r) for r in rows}
    per_row_setting = len(settings) > 1
    binary = any("binary" in r for r in rows)
    head = ["#", "architecture", "checkpoint", "mIoU", "global acc", "mean class acc"]
    if binary:
        head += ["pixel error", "fg IoU", "Rand error"]
    head += [f"IoU {n}" for n in names] + ["params (M)"]
    has_cost = any("cost" in r for r in rows)
    if has_cost:
        head += ["GFLOPs", "CPU ms"]
    if per_row_setting:
        head.append("setting")
    lines = []
    if not per_row_setting and rows:
        lines.append(f"Setting: {settings.pop()}. Values in percent; mIoU and accuracies from one confusion matrix over all images.")
        if binary:
            lines.append("Pixel error, foreground IoU and Rand error are means over images.")
        lines.append("")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| " + " | ".join(["---:" if h == "#" else "---" if h in ("architecture", "checkpoint", "setting") else "---:" for h in head]) + " |")
    for rank, r in enumerate(rows, 1):
        m = r.get("metrics", {})
        iou = dict(zip(m.get("class_names", []), m.get("per_class_iou", [])))
        nparams = r.get("num_parameters")
        cells = [str(rank), str(r.get("architecture")), Path(str(r.get("checkpoint"))).stem, _pct(m.get("miou")), _pct(m.get("pixel_accuracy")), _pct(m.get("mean_class_accuracy"))]
        if binary:
            b = r.get("binary", {})
            cells += [_pct(b.get("pixel_error")), _pct(b.get("foreground_iou")), _pct(b.get("rand_error"))]
        cells += [_pct(iou.get(n)) for n in names]
        cells.append(_params(nparams))
        if has_cost:
            c = r.get("cost") or {}
            cells += [f"{c['gflops']:.1f}" if "gflops" in c else "-", f"{c['cpu_latency_ms']:.0f}" if "cpu_latency_ms" in c else "-"]
        if per_row_setting:
            cells.append(_setting(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(result: dict, path: str | os.PathLike) -> Path:
    """Save the row-normalised confusion matrix of ``result`` as a PNG (class names on both axes)."""
    m = result["metrics"]
    title = f"{result.get('architecture')} on {result.get('dataset')}/{result.get('split')}"
    fig = confusion_figure(m["confusion"], m.get("class_names"), title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def confusion_figure(confusion, class_names: list[str] | None = None, title: str = "") -> Figure:
    """The row-normalised confusion matrix (ground truth x prediction pixel counts) as a matplotlib figure,
    class names on both axes and the fractions written in the cells (for up to 20 classes)."""
    conf = np.asarray(confusion, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] == 0:
        raise ValueError(f"a confusion matrix is square, got shape {conf.shape}")
    names = list(class_names or [f"class_{i}" for i in range(conf.shape[0])])
    support = conf.sum(1, keepdims=True)
    norm = np.divide(conf, support, out=np.full_like(conf, np.nan), where=support > 0)
    c = conf.shape[0]
    side = max(4.0, 0.55 * c + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{title}\n(rows normalised; grey: class absent)".strip(), fontsize=9)
    if c <= 20:
        for t in range(c):
            for p in range(c):
                v = norm[t, p]
                if not np.isnan(v) and v >= 0.005:
                    ax.text(p, t, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def _unique_stems(results: list[dict]) -> list[str]:
    stems, used = [], {}
    for r in results:
        stem = Path(str(r.get("checkpoint", "results"))).stem
        key = (stem, r.get("split"))
        k = used.get(key, 0)
        used[key] = k + 1
        stems.append(stem if k == 0 else f"{stem}-{k + 1}")
    return stems


def write_results(results: list[dict], out_dir: str | os.PathLike, merge: bool = False) -> dict[str, list[Path]]:
    """Write ``<stem>.<split>.json`` and ``<stem>.<split>.confusion.png`` per result and ``leaderboard_<split>.md`` per split.

    JSON files use ``null`` for undefined numbers (``nan``). Results whose
    checkpoint stems collide get ``-2``, ``-3``, ... suffixes. ``merge``: the leaderboards rank every result
    in the folder (the ones written before and these, which replace theirs), not these alone; for a folder
    that collects one checkpoint at a time (``workbench quantize --out``).

    Returns:
        ``{"json": [...], "confusion": [...], "leaderboard": [...]}`` paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {"json": [], "confusion": [], "leaderboard": []}
    for r, stem in zip(results, _unique_stems(results)):
        split = r.get("split", "eval")
        jp = out / f"{stem}.{split}.json"
        atomic_write_bytes(jp, (json.dumps(jsonable(r), indent=1, allow_nan=False) + "\n").encode())
        written["json"].append(jp)
        written["confusion"].append(plot_confusion(r, out / f"{stem}.{split}.confusion.png"))
    by_split: dict[str, list[dict]] = {}
    for r in results:
        by_split.setdefault(str(r.get("split", "eval")), []).append(r)
    if merge:
        fresh = set(written["json"])
        for split in list(by_split):
            for jp in sorted(out.glob(f"*.{split}.json")):
                if jp in fresh:
                    continue
                try:
                    old_result = json.loads(jp.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # not a result (or unreadable): it is not ranked
                if isinstance(old_result, dict) and isinstance(old_result.get("metrics"), dict) and old_result.get("split") == split:
                    by_split[split].append(old_result)
    for split, rs in by_split.items():
        lp = out / f"leaderboard_{split}.md"
        text = f"# Leaderboard: {split} split\n\n" + format_leaderboard(rs)
        atomic_write_bytes(lp, text.encode())
        written["leaderboard"].append(lp)
    return written
