"""The Leaderboard tab: the shipped checkpoints' CamVid test metrics beside the papers' numbers, and per
checkpoint its test confusion matrix and training curves."""

from __future__ import annotations

import gradio as gr

from workbench.evaluation import leaderboard as lb
from workbench.evaluation.report import confusion_figure
from workbench.io.checkpoint import training_log_path
from workbench.training.curves import curves_figure, read_metrics

from .common import LIGHT, zoo

__all__ = ["build", "leaderboard_view", "checkpoint_view", "evaluated_checkpoints"]


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


def evaluated_checkpoints() -> list[str]:
    """The architectures whose shipped checkpoint has test metrics (the dropdown's choices), in the zoo's order."""
    return [name for name, e in zoo().entries.items() if e.trained and (e.manifest.get("metrics") or {}).get("test")]


def checkpoint_view(name: str | None):
    """One checkpoint's details: ``(test confusion matrix figure, training curves figure, markdown)``; a figure
    is None (and the markdown says why) where the manifest has no test confusion matrix or no log is shipped."""
    entry = zoo().entries.get(name) if name else None
    if entry is None or not entry.trained:
        return None, None, "Choose a trained checkpoint."
    man = entry.manifest
    notes = []
    test = (man.get("metrics") or {}).get("test") or {}
    conf = None
    if test.get("confusion") is not None:
        conf = confusion_figure(test["confusion"], test.get("class_names"), f"{man.path.stem if man.path else name}: test set, {test.get('n_images', '?')} images")
        notes.append(f"**Test mIoU {100 * test['miou']:.1f}%**, pixel accuracy {100 * test.get('pixel_accuracy', float('nan')):.1f}%: "
                     "each row of the matrix is one ground-truth class, split by what the model predicted.")
    else:
        notes.append("No test confusion matrix in this checkpoint's manifest (`workbench eval CHECKPOINT --split test --update-manifests` records one).")
    curves = None
    log = training_log_path(man.path) if man.path else None
    training = man.get("training") or {}
    if log is not None:
        try:
            curves = curves_figure(read_metrics(log), f"{log.name}: {training.get('epochs_completed', '?')} epochs")
        except (ValueError, KeyError, TypeError) as exc:
            notes.append(f"Its training log `{log.name}` could not be drawn ({exc}).")
    else:
        notes.append("Its training log was not shipped: this checkpoint was trained before `workbench export` copied a "
                     f"run's `metrics.jsonl` beside the weights. The run: {training.get('epochs_completed', '?')} epochs, "
                     f"`{training.get('command', 'unknown command')}`.")
    return conf, curves, "\n\n".join(notes)


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
    with gr.Row():  # the choices fill on page load: building the tab reads no checkpoint
        choice = gr.Dropdown([], value=None, label="Checkpoint: test confusion matrix and training curves", scale=1)
    with gr.Row():
        confusion = gr.Plot(label="Test confusion matrix (rows: ground truth)")
        curves = gr.Plot(label="Training curves")
    details = gr.Markdown()
    choice.input(checkpoint_view, [choice], [confusion, curves, details], api_name="checkpoint_details", **LIGHT)
    demo.load(_first_checkpoint, None, [choice, confusion, curves, details], api_name=False, **LIGHT)


def _first_checkpoint():
    """On page load: the dropdown's choices, and the first checkpoint's details."""
    names = evaluated_checkpoints()
    first = names[0] if names else None
    return (gr.update(choices=names, value=first), *checkpoint_view(first))
