"""The Loss weighting tab: median-frequency class weights (CamVid) and the U-Net border weight map (ISBI 2012)."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np

from workbench import viz
from workbench.classes import IGNORE_INDEX, ISBI_CLASSES
from workbench.data import weighting
from workbench.data.datasets import DatasetError, build_dataset
from workbench.data.examples import shipped_isbi, shipped_isbi_slices
from workbench.data.isbi import ISBI_TEST_SLICES
from workbench.evaluation import leaderboard as lb
from workbench.evaluation.metrics import foreground_iou, pixel_error, rand_error
from workbench.inference.predictor import Predictor
from workbench.io.manifest import CheckpointError, Manifest
from workbench.paths import bundled_path, checkpoints_dir

from .common import HEAVY, LIGHT, engine_kwargs
from .gpu import on_gpu

__all__ = ["build", "camvid_class_weights", "class_weights_view", "isbi_predictors", "isbi_test_set", "isbi_view"]

_WEIGHTS_CACHE: dict[str, dict] = {}
_ISBI: dict[str, Predictor] = {}


def camvid_class_weights() -> dict:
    """Median-frequency weights computed from the CamVid training labels (or the committed copy without data)."""
    if "camvid" not in _WEIGHTS_CACHE:
        try:
            ds = build_dataset("camvid", "train")
            pixels, image_pixels = weighting.class_pixel_stats(ds.masks(), ds.num_classes, IGNORE_INDEX)
            data = {"classes": ds.class_names, "weights": [float(w) for w in weighting.median_frequency_weights(pixels, image_pixels)], "source": "computed now from the training labels"}
        except DatasetError:
            saved_path = bundled_path("benchmarks") / "camvid_class_weights.json"
            if not saved_path.is_file():
                raise gr.Error("CamVid is not under the data root and no saved weights were found.") from None
            saved = json.loads(saved_path.read_text())
            data = {"classes": saved["classes"], "weights": saved["weights"], "source": "saved by `workbench weights --json` (CamVid not found under the data root)"}
        data["segnet"] = list(weighting.SEGNET_CAMVID_WEIGHTS)
        _WEIGHTS_CACHE["camvid"] = data
    return _WEIGHTS_CACHE["camvid"]


def class_weights_view():
    """Returns ``(figure, rows [class, computed, SegNet reference], markdown)``."""
    d = camvid_class_weights()
    fig = lb.class_weights_figure(d["classes"], d["weights"], d["segnet"])
    rows = [[c, f"{w:.4f}", f"{r:.4f}"] for c, w, r in zip(d["classes"], d["weights"], d["segnet"])]
    text = (
        "**Median-frequency balancing** (Eigen & Fergus; used by FCN and SegNet): freq(c) = pixels of class c / pixels of the "
        "images that contain c, and w_c = median(freq) / freq(c). Rare classes (poles, pedestrians, cyclists) weigh up to "
        f"about 40x more than the road in the cross-entropy. Weights {d['source']}; the shipped CamVid models train with them."
    )
    return fig, rows, text


def isbi_predictors() -> dict[str, Predictor]:
    """The two shipped ISBI U-Nets, keyed "without" / "with" border weighting (lazily loaded)."""
    if not _ISBI:
        for path in sorted(checkpoints_dir().glob("*.json")):
            try:
                man = Manifest.read(path)
            except CheckpointError:
                continue
            if man.dataset_name != "isbi":
                continue
            key = "with" if man.training_config.get("border_weights") else "without"
            _ISBI.setdefault(key, Predictor(path, "auto", precision="fp32", **engine_kwargs()))  # fp32: the error figures in the text
    return _ISBI


def isbi_test_set():
    """``(dataset, source)``: the held-out ISBI slices from the data root, else the slices shipped with the
    package (``workbench/examples``; a Space has no data root). Raises ``gr.Error`` if neither is there."""
    try:
        return build_dataset("isbi", "test"), "data root"
    except DatasetError as exc:
        missing = str(exc)
    try:
        return shipped_isbi(), "shipped"
    except DatasetError:
        raise gr.Error(f"{missing} (and no ISBI slices are shipped with this installation)") from None


def _slider_range() -> tuple[int, int]:
    """The held-out slices the view can show: 24-29 with the data root's ISBI stack, else the shipped ones."""
    try:
        build_dataset("isbi", "test")
        return min(ISBI_TEST_SLICES), max(ISBI_TEST_SLICES)
    except DatasetError:
        shipped = shipped_isbi_slices()
        return (min(shipped), max(shipped)) if shipped else (min(ISBI_TEST_SLICES), max(ISBI_TEST_SLICES))


@on_gpu(duration=20)
def isbi_view(slice_index: float) -> list:
    """An ISBI held-out slice: image, label, the U-Net border weight map, and both U-Nets' predictions with errors.

    Reads the data root's ISBI stack, else the slices shipped with the package (:func:`isbi_test_set`).

    Returns:
        ``[image, label, weight map, without, its errors, with, its errors, markdown]`` (None where no checkpoint).
    """
    idx = int(slice_index)
    ds, source = isbi_test_set()
    names = [p.stem for p, _ in ds.files]
    if str(idx) not in names:
        hint = " shipped with the app (workbench fetch-data isbi brings all six)" if source == "shipped" else ""
        raise gr.Error(f"slice {idx} is not one of the held-out slices{hint}: {', '.join(names)}")
    sample = ds[names.index(str(idx))]
    image = sample["image"].numpy()[0]
    gt = sample["mask"].numpy()
    weights = weighting.unet_border_weights(gt)
    out = [image, viz.colorize(gt, ISBI_CLASSES), viz.heatmap(weights, 0.0, float(weights.max()), "magma")]
    shipped_note = " One of the slices shipped with the app (no ISBI stack under the data root)." if source == "shipped" else ""
    lines = [f"Slice {idx} (held out: never trained or selected on).{shipped_note} Border weight map: w(x) = w_c(x) + 10 exp(-(d1 + d2)^2 / (2 * 5^2)), max {weights.max():.1f}."]
    preds = isbi_predictors()
    for key in ("without", "with"):
        pred = preds.get(key)
        if pred is None:
            out += [None, None]
            lines.append(f"- U-Net {key} border weighting: no checkpoint shipped yet.")
            continue
        labels = pred.predict(image).labels.astype(np.int64)
        out += [viz.colorize(labels, ISBI_CLASSES), viz.error_map(labels, gt, image)]
        lines.append(
            f"- U-Net **{key}** border weighting: pixel error {100 * pixel_error(labels, gt):.2f}%, "
            f"cell IoU {100 * foreground_iou(labels, gt):.1f}%, Rand error {rand_error(labels, gt):.4f}"
        )
    return [*out, "\n".join(lines)]


def build() -> None:
    """The tab's layout and events (inside a ``gr.Tab``)."""
    gr.Markdown("## Class weighting for imbalance (Long et al.; SegNet)")
    with gr.Row():
        w_plot = gr.Plot(label="CamVid class weights")
        w_table = gr.Dataframe(headers=["class", "computed", "SegNet reference"], interactive=False)
    w_text = gr.Markdown()
    w_button = gr.Button("Compute class weights")
    gr.Markdown(
        "## U-Net border weighting (Ronneberger et al.)\nTouching cells are separated by membranes a few pixels thin. "
        "The border weight map makes the loss care most about the pixels between two cells; compare the U-Net trained "
        "with it and the one trained without it on the held-out slices 24-29."
    )
    with gr.Row():
        low, high = _slider_range()
        isbi_slice = gr.Slider(low, high, value=low, step=1, label="Held-out ISBI slice")
        isbi_button = gr.Button("Show slice", variant="primary")
    with gr.Row():
        isbi_img = gr.Image(label="EM slice", format="png", interactive=False)
        isbi_gt = gr.Image(label="Label (membrane red)", format="png", interactive=False)
        isbi_w = gr.Image(label="Border weight map", format="png", interactive=False)
    with gr.Row():
        isbi_plain = gr.Image(label="U-Net without border weighting", format="png", interactive=False)
        isbi_plain_err = gr.Image(label="its errors", format="png", interactive=False)
        isbi_border = gr.Image(label="U-Net with border weighting", format="png", interactive=False)
        isbi_border_err = gr.Image(label="its errors", format="png", interactive=False)
    isbi_text = gr.Markdown()
    w_button.click(class_weights_view, None, [w_plot, w_table, w_text], api_name="class_weights", **LIGHT)
    isbi_outputs = [isbi_img, isbi_gt, isbi_w, isbi_plain, isbi_plain_err, isbi_border, isbi_border_err, isbi_text]
    isbi_button.click(isbi_view, isbi_slice, isbi_outputs, api_name="isbi", **HEAVY)
