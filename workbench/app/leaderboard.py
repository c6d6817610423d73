"""The Leaderboard tab: the shipped checkpoints' CamVid test metrics beside the papers' numbers."""

from __future__ import annotations

import gradio as gr

from workbench.evaluation import leaderboard as lb

from .common import LIGHT, zoo

__all__ = ["build", "leaderboard_view"]


def leaderboard_view():
    """The Leaderboard tab: test metrics from the shipped manifests, published anchors, two figures.

    Returns:
        ``(table rows, per-class IoU figure, mIoU-vs-latency figure, markdown)``.
    """
    manifests = {name: e.manifest for name, e in zoo().entries.items() if e.trained}
    rows = lb.leaderboard_rows(manifests, "test")
    if rows:
        text = (
            f"**{len(rows)} checkpoints trained here** on CamVid train (val for model selection), evaluated on the 233 test "
            "images at 360x480, void excluded (`python -m workbench eval checkpoints/*.json --split test`). "
            "Rows marked *published* are the papers' numbers on the same split, for reference."
        )
    else:
        text = "No evaluated checkpoints are shipped yet: the table shows the published reference numbers only."
    return lb.table(rows, lb.PUBLISHED_CAMVID), lb.per_class_iou_figure(rows), lb.miou_latency_figure(rows, lb.PUBLISHED_CAMVID), text


def build(demo: gr.Blocks) -> None:
    """The tab's layout and events (inside a ``gr.Tab``); the table fills on page load."""
    text = gr.Markdown()
    table = gr.Dataframe(headers=lb.TABLE_HEADERS, label="CamVid test set (233 images, 360x480, 11 classes, void excluded)", interactive=False, wrap=True)
    bars = gr.Plot(label="Per-class IoU")
    scatter = gr.Plot(label="mIoU against CPU latency")
    button = gr.Button("Refresh")
    outputs = [table, bars, scatter, text]
    button.click(leaderboard_view, None, outputs, api_name="leaderboard", **LIGHT)
    demo.load(leaderboard_view, None, outputs, api_name=False, **LIGHT)
