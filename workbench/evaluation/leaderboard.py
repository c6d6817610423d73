"""The leaderboard: rows from checkpoint manifests, published anchors, and the figures that compare them.

Pure functions: manifests (:class:`~workbench.io.manifest.Manifest`, or their plain dicts) in, table rows
and matplotlib figures out.
The numbers are the ones ``workbench eval --update-manifests`` wrote into the
manifests, so the app, the README table and the eval JSON agree by construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.manifest import Manifest

__all__ = [
    "PUBLISHED_CAMVID",
    "leaderboard_rows",
    "table",
    "app_precision",
    "precision_section",
    "per_class_iou_figure",
    "miou_latency_figure",
    "class_weights_figure",
]

# the label-parity bar a faster precision must pass against fp32 eager (workbench.inference.parity; repeated here
# because evaluation reads manifests only and the parity module loads the Predictor)
PARITY_OVERALL, PARITY_WORST_IMAGE = 0.995, 0.985

# Published mean IoU on the same CamVid split (SegNet's 11 classes, 233 test images, 360x480).
PUBLISHED_CAMVID = [
    {"model": "FC-DenseNet103", "miou": 0.669, "source": "Jegou et al. 2017, Table 2", "note": "trained from scratch"},
    {"model": "Dilation8", "miou": 0.653, "source": "Yu & Koltun 2016, as reported by Jegou et al. 2017", "note": "ImageNet-pretrained VGG-16"},
    {"model": "FC-DenseNet56", "miou": 0.589, "source": "Jegou et al. 2017, Table 2", "note": "trained from scratch"},
    {"model": "FCN-8s", "miou": 0.570, "source": "Long et al. 2015, as reported by Jegou et al. 2017", "note": "ImageNet-pretrained VGG-16"},
]


def leaderboard_rows(manifests: Mapping[str, Mapping[str, Any]], split: str = "test") -> list[dict[str, Any]]:
    """One row per checkpoint that has ``metrics[split]``, best mIoU first.

    Args:
        manifests: ``{name: manifest}`` (e.g. architecture name -> its checkpoint's manifest); each a
            :class:`~workbench.io.manifest.Manifest` or its dict.
    """
    rows = []
    for name, raw in manifests.items():
        man = Manifest.of(raw)
        m = (man.metrics or {}).get(split)
        if not m:
            continue
        rows.append(
            {
                "name": name,
                "architecture": man.architecture or name,
                "miou": m.get("miou"),
                "pixel_accuracy": m.get("pixel_accuracy"),
                "mean_class_accuracy": m.get("mean_class_accuracy"),
                "per_class_iou": m.get("per_class_iou") or [],
                "class_names": man.class_names(split),
                "params": man.num_parameters,
                "gflops": (man.cost or {}).get("gflops"),
                "latency_ms": (man.cost or {}).get("cpu_latency_ms"),
                "val_miou": man.val_miou,
                "epochs": (man.training or {}).get("epochs_completed"),
                # a fine-tuned checkpoint (workbench train --init-from): the epochs of the runs it started from, first run first
                "init_epochs": man.init_epochs,
                "app_precision": app_precision(man)[0],
            }
        )
    return sorted(rows, key=lambda r: -(r["miou"] if isinstance(r["miou"], (int, float)) and not math.isnan(r["miou"]) else -1))


def _pct(v) -> str:
    return "-" if not isinstance(v, (int, float)) or math.isnan(v) else f"{100 * v:.1f}"


TABLE_HEADERS = ["model", "test mIoU", "global acc", "mean class acc", "val mIoU", "params (M)", "GFLOPs", "CPU ms", "app runs (CPU)", "note"]


def app_precision(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """Which precision the app runs a checkpoint at on the CPU, and why: ``("int8", ...)`` where the shipped int8
    model was accepted (test mIoU within the rule) and its labels pass the parity bar against fp32 eager on the
    test images measured; else fp32 where the manifest pins it, else bf16 where the CPU has native bf16 and fp32
    where it has not."""
    man = Manifest.of(manifest)
    inference = man.inference or {}
    int8 = inference.get("int8") if isinstance(inference.get("int8"), dict) else None
    fallback = ("fp32", "pinned to fp32 (bf16 missed the parity bar)") if man.pinned_precision == "fp32" else ("bf16/fp32", "bf16 where the CPU has native bf16, else fp32")
    if not int8:
        return fallback[0], f"no int8 model; {fallback[1]}"
    if not int8.get("accepted"):
        return fallback[0], f"int8 refused ({int8.get('reason', 'not evaluated')}); {fallback[1]}"
    agree = int8.get("test_label_agreement") or {}
    mean, worst = agree.get("mean"), agree.get("worst")
    if mean is None or worst is None:
        return fallback[0], f"int8 accepted on mIoU but its label agreement with fp32 was not measured; {fallback[1]}"
    if mean < PARITY_OVERALL or worst < PARITY_WORST_IMAGE:
        return fallback[0], (
            f"int8 accepted on mIoU ({int8.get('miou_drop_points')} points) but its labels agree with fp32 eager on "
            f"{100 * mean:.2f}% (worst image {100 * worst:.2f}%), below the parity bar "
            f"{100 * PARITY_OVERALL:.1f}%/{100 * PARITY_WORST_IMAGE:.1f}%; {fallback[1]}"
        )
    return "int8", f"int8 (OpenVINO) accepted: {int8.get('reason')}; labels agree with fp32 eager on {100 * mean:.2f}% (worst {100 * worst:.2f}%)"


def precision_section(manifests: Mapping[str, Mapping[str, Any]], split: str = "test") -> str:
    """Markdown: per checkpoint with ``metrics[split]``, the fp32 and int8 mIoU, the drop, the int8 label agreement
    and the precision the app runs (:func:`app_precision`)."""
    lines = [
        "## Which precision the app runs",
        "",
        "int8 (NNCF post-training quantization, OpenVINO) is accepted per checkpoint only where its CamVid test mIoU "
        "(this protocol) is at most 0.5 points below fp32; the app runs it only where its labels also pass the parity "
        f"bar against fp32 eager ({100 * PARITY_OVERALL:.1f}% of pixels, {100 * PARITY_WORST_IMAGE:.1f}% on every image). "
        "`workbench quantize` measures and records this (scripts/quantize_zoo.sh).",
        "",
        "| checkpoint | fp32 mIoU | int8 mIoU | drop (points) | int8 accepted | int8 labels = fp32 (mean / worst image) | app runs (CPU) |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for row in leaderboard_rows(manifests, split):
        man = Manifest.of(manifests[row["name"]])
        int8 = (man.inference or {}).get("int8") or {}
        agree = int8.get(f"{split}_label_agreement") or {}
        agree_txt = f"{100 * agree['mean']:.2f}% / {100 * agree['worst']:.2f}% ({agree.get('images')} images)" if agree.get("mean") is not None else "-"
        prec, _ = app_precision(man)
        lines.append(
            f"| {row['name']} | {_pct(row['miou'])} | {_pct(int8.get(f'{split}_miou'))} | "
            f"{int8.get('miou_drop_points', '-') if int8 else '-'} | {('yes' if int8.get('accepted') else 'no') if int8 else 'not quantized'} | {agree_txt} | {prec} |"
        )
    return "\n".join(lines) + "\n"


def _trained_note(r: dict) -> str:
    if not r.get("epochs"):
        return "trained here"
    if r.get("init_epochs"):
        runs = len(r["init_epochs"])
        return f"trained here, {' + '.join(map(str, [*r['init_epochs'], r['epochs']]))} epochs (fine-tuned{' ' + str(runs) + ' times' if runs > 1 else ''})"
    return f"trained here, {r['epochs']} epochs"


def table(rows: list[dict], anchors: list[dict] | None = None) -> list[list]:
    """Rows for a table with :data:`TABLE_HEADERS`; published anchors are added and marked as such."""
    out = []
    for r in rows:
        out.append(
            [
                r["name"],
                _pct(r["miou"]),
                _pct(r["pixel_accuracy"]),
                _pct(r["mean_class_accuracy"]),
                _pct(r["val_miou"]),
                "-" if r["params"] is None else f"{r['params'] / 1e6:.2f}",
                "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                "-" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}",
                r.get("app_precision", "-"),
                _trained_note(r),
            ]
        )
    for a in anchors or []:
        out.append([f"{a['model']} (published)", _pct(a["miou"]), "-", "-", "-", "-", "-", "-", "-", f"reference row: {a['note']}; {a['source']}"])
    return out


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def per_class_iou_figure(rows: list[dict], title: str = "Per-class IoU on the CamVid test set"):
    """Grouped bars: per-class IoU of every row (``name``, ``per_class_iou``, ``class_names``; an undefined IoU
    draws as 0)."""
    fig = _figure(11, 4)
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no evaluated checkpoints yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
    names = rows[0]["class_names"]
    n = len(rows)
    width = 0.8 / n
    x = np.arange(len(names))
    for i, r in enumerate(rows):
        vals = [100 * (v if isinstance(v, (int, float)) and not math.isnan(v) else 0.0) for v in r["per_class_iou"]]
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, label=r["name"])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, **({"fontsize": 9} if len(title) > 60 else {}))  # a long title in small type
    ax.legend(fontsize=7, ncol=min(n, 5))
    fig.tight_layout()
    return fig


def miou_latency_figure(rows: list[dict], anchors: list[dict] | None = None, *, xlabel: str = "CPU latency per 360x480 image (ms, log scale)",
                        ylabel: str = "test mIoU (%)", log_x: bool = True):
    """Scatter of mIoU against latency (rows: ``name``, ``miou``, ``latency_ms``); published anchors as horizontal
    reference lines."""
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    pts = [r for r in rows if r["latency_ms"] is not None and r["miou"] is not None]
    for r in pts:
        ax.scatter(r["latency_ms"], 100 * r["miou"], s=40)
        ax.annotate(r["name"], (r["latency_ms"], 100 * r["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for a in anchors or []:
        ax.axhline(100 * a["miou"], color="grey", lw=0.8, ls="--")
        ax.text(ax.get_xlim()[1] if pts else 1, 100 * a["miou"], f" {a['model']} (published)", fontsize=7, va="bottom", ha="right", color="grey")
    if pts and log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Quality against speed")
    fig.tight_layout()
    return fig


def class_weights_figure(names: list[str], computed: list[float], reference: list[float] | None = None, label: str = "median frequency (computed here)"):
    """Bars of class weights, with a reference set (e.g. SegNet's) beside them."""
    fig = _figure(9, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    w = 0.4 if reference else 0.8
    ax.bar(x - (w / 2 if reference else 0), computed, w, label=label)
    if reference:
        ax.bar(x + w / 2, reference, w, label="SegNet tutorial reference")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("loss weight")
    ax.set_title("CamVid class weights (rare classes weigh more)")
    ax.legend()
    fig.tight_layout()
    return fig
