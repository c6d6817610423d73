"""A run's log: ``metrics.jsonl`` (one record per epoch) and its picture ``curves.png``.

The trainer appends a record per epoch (:func:`append_metrics`) and, on resume, drops the records
of epochs it will redo (:func:`truncate_metrics`); :func:`read_metrics`, :func:`ema_comparison` and
:func:`plot_curves` read them back (also for scripts/ema_report.py).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.checkpoint import atomic_write_bytes

__all__ = ["append_metrics", "truncate_metrics", "read_metrics", "ema_comparison", "plot_curves", "curves_figure"]


def append_metrics(out: Path, record: dict) -> None:
    """Append ``record`` to ``<out>/metrics.jsonl`` and redraw ``<out>/curves.png``."""
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    with contextlib.suppress(Exception):  # a plot must never stop a run
        plot_curves(out / "metrics.jsonl", out / "curves.png")


def truncate_metrics(path: Path, completed: int) -> None:
    """Drop log lines of epochs the resumed run will redo (written after the last resume point).

    Lines carry 1-based epoch numbers; ``completed`` epochs are kept.
    """
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= completed:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, one per epoch, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def ema_comparison(records: Iterable[dict]) -> dict[str, Any] | None:
    """What the weight average bought in a run: validation of the average (``val``) against the trained
    weights (``val_raw``) at every evaluation of a ``--ema-decay`` run's ``metrics.jsonl`` records.

    Returns ``None`` when no record has both; else mIoU in percent: the best of each, the mean and range of
    (average - trained), and each one's spread (max - min) over the evaluations, which is how much picking
    the best epoch on val depends on when one looks.
    """
    pairs = [(100 * r["val"]["miou"], 100 * r["val_raw"]["miou"]) for r in records if "val" in r and "val_raw" in r]
    if not pairs:
        return None
    avg, raw = [a for a, _ in pairs], [b for _, b in pairs]
    diff = [a - b for a, b in pairs]
    return {
        "evaluations": len(pairs),
        "best_average": max(avg),
        "best_trained": max(raw),
        "average_minus_trained_mean": sum(diff) / len(diff),
        "average_minus_trained_range": [min(diff), max(diff)],
        "spread_average": max(avg) - min(avg),
        "spread_trained": max(raw) - min(raw),
    }


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """Training loss and validation mIoU against epochs, from ``metrics.jsonl``."""
    fig = curves_figure(read_metrics(metrics_path))
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out_png)


def curves_figure(records: Iterable[dict], title: str = "") -> Figure:
    """Training loss (left axis) and validation mIoU (right axis, where evaluated) against epochs, from a
    run's ``metrics.jsonl`` records; records without an epoch or a train loss are skipped."""
    rows = [r for r in records if isinstance(r, dict) and "epoch" in r and "train_loss" in r]
    if not rows:
        raise ValueError("no epoch records with a training loss")
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)  # no pyplot: no global backend, no figure registry in a training process
    ax1 = fig.add_subplot()
    ax1.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    val = [(r["epoch"], r["val"]["miou"]) for r in rows if isinstance(r.get("val"), dict) and "miou" in r["val"]]
    if val:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*val), color="tab:orange", marker="o", label="val mIoU")
        ax2.set_ylabel("val mIoU", color="tab:orange")
    if title:
        ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
