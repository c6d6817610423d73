"""The Task representation tab: a network's answer is one probability map per class, then an argmax."""

from __future__ import annotations

import gradio as gr
import numpy as np

from workbench import viz
from workbench.data.camvid import find_ground_truth

from .common import HEAVY, architecture_dropdown, badge, image_input, read_upload, zoo
from .knowledge import ood_html, ood_verdict, training_note
from .gpu import on_gpu

__all__ = ["build", "task_representation"]


@on_gpu(duration=20)
def task_representation(image_path: str | None, arch: str, opacity: float):
    """The Task tab: per-class probability maps (the one-hot channels), argmax map and overlay.

    Returns:
        ``(gallery, one-hot pairs gallery, mask, overlay, legend_html, note)``: the pairs put each class's one-hot
        target (the ground truth where the image is a known CamVid image, else the model's own argmax) beside
        its probability map.
    """
    image = read_upload(image_path)
    try:
        pred = zoo().predict(arch, image)
    except Exception as exc:
        raise gr.Error(f"{arch} failed: {type(exc).__name__}: {exc}") from None
    probs = pred.probs_work  # (C, h, w) at the working size
    gallery = viz.class_probability_maps(probs, pred.classes)
    mask = viz.colorize(pred.labels, pred.classes)
    over = viz.overlay(np.asarray(image), mask, opacity)
    gt = find_ground_truth(image_path, np.asarray(image)) if len(pred.classes) == 11 else None  # CamVid's 11 classes
    target, source = (gt, "the **ground truth**") if gt is not None else (pred.labels, "the model's own **argmax** (no ground truth is known for this image)")
    pairs = viz.one_hot_pairs(target, probs, pred.classes)
    note = (
        f"The network outputs **{probs.shape[0]} channels**, one per class: a score per pixel, turned into probabilities "
        "by a softmax across channels (bright = likely). Training compares them with the one-hot target, where exactly one "
        "channel is 1 at every pixel. The label map is the **argmax** across channels: each pixel takes the class whose "
        f"channel is brightest. {badge(zoo().entries[arch])}\n\n"
        f"Below, each class's **one-hot target** channel (white: this class; grey: void, in no channel) is drawn from {source}, "
        "beside the probability channel the network produced: training pushes the right half towards the left, channel by channel."
    )
    if str((zoo().predictor(arch).manifest.dataset_name or "")).lower() == "camvid":  # trained on CamVid: say what it knows
        note = f"{ood_html(ood_verdict([(zoo().predictor(arch).manifest.sha256, pred)]))}\n\n{note}\n\n{training_note(pred.classes)}"
    return gallery, pairs, mask, over, viz.legend_html(pred.classes), note


def build(names: list[str], examples: list[str]) -> None:
    """The tab's layout and events (inside a ``gr.Tab``)."""
    gr.Markdown("How a segmentation network represents its answer: one probability map per class, then an argmax.")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            image = image_input()
            arch = architecture_dropdown(names)
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
            button = gr.Button("Show representation", variant="primary")
            gr.Examples(examples, inputs=image, label="Examples")
        with gr.Column(scale=2, min_width=320):
            note = gr.Markdown()
            gallery = gr.Gallery(label="Per-class probability maps (one channel per class)", columns=4, height="auto")
            with gr.Row():
                mask = gr.Image(label="Argmax label map", format="png", interactive=False)
                over = gr.Image(label="Overlay", format="png", interactive=False)
            legend = gr.HTML()
            pairs = gr.Gallery(label="One-hot target | probability, per class", columns=3, height="auto")
    button.click(task_representation, [image, arch, opacity], [gallery, pairs, mask, over, legend, note], api_name="task_representation", **HEAVY)
