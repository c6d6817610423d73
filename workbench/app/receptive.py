"""The Receptive field tab: which pixels an output pixel can see, and which it actually uses, per architecture.

Click a pixel of the image: for each chosen architecture the tab draws the effective receptive field (the
trained network's gradient of that pixel's winning logit with respect to the input) over the image, and the
theoretical field (every connected input pixel) as a frame, with their sizes (:mod:`workbench.lab.receptive`).
"""

from __future__ import annotations

import functools

import gradio as gr
import numpy as np
import torch

from workbench import viz
from workbench.lab.receptive import receptive_field, theoretical_extent

from .common import HEAVY, LIGHT, badge, image_input, read_upload, zoo
from .gpu import on_gpu

__all__ = ["build", "receptive_field_view", "DEFAULT_ARCHS", "MAX_SIDE"]

DEFAULT_ARCHS = ("naive", "fcn8s", "unet", "dilated")  # the tutorial's progression
MAX_SIDE = 480  # the image is shown and differentiated at most this large (a gradient costs ~3 forward passes)


@functools.lru_cache(maxsize=64)
def _extent(name: str, size: tuple[int, int], in_chans: int) -> tuple[int, int, int, int]:
    """The theoretical field's reach from the centre (depends on the architecture and the size only)."""
    return theoretical_extent(zoo().predictor(name).model, size, in_chans)


def _read_small(image_path: str | None):
    """The uploaded image shrunk to at most :data:`MAX_SIDE` a side, and the factor it was shrunk by."""
    image = read_upload(image_path)
    w0, h0 = image.size
    scale = min(1.0, MAX_SIDE / max(w0, h0))
    if scale < 1.0:
        image = image.resize((max(1, round(w0 * scale)), max(1, round(h0 * scale))))
    return image, scale


def _input(name: str, image) -> torch.Tensor:
    predictor = zoo().predictor(name)
    x = predictor.preprocess(image.convert(predictor.mode))
    return x.to(next(predictor.model.parameters()).device)


@on_gpu(duration=40)
def receptive_field_view(image_path: str | None, archs: list[str], x: int = -1, y: int = -1):
    """For pixel (``x``, ``y``) of the image (-1: the centre; pixels of the uploaded image), each architecture's
    receptive fields. Returns ``(gallery of (picture, caption), markdown table)``."""
    if not archs:
        raise gr.Error("Choose at least one architecture.")
    image, scale = _read_small(image_path)
    w, h = image.size
    px = w // 2 if x is None or x < 0 else min(int(x * scale), w - 1)
    py = h // 2 if y is None or y < 0 else min(int(y * scale), h - 1)
    shown = np.asarray(image.convert("RGB"))
    gallery, rows = [], []
    for name in archs:
        try:
            xin = _input(name, image)
            if tuple(xin.shape[-2:]) != (h, w):
                raise ValueError(f"the model works at {tuple(xin.shape[-2:])}, not at the image's {h}x{w}")
            rf = receptive_field(zoo().predictor(name).model, xin, (py, px), _extent(name, (h, w), xin.shape[1]))
        except Exception as exc:
            rows.append(f"| {name} | failed: {type(exc).__name__}: {exc} | | |")
            continue
        th, tw = rf.size
        top, left, bottom, right = rf.box
        clipped = top == 0 or left == 0 or bottom == h - 1 or right == w - 1
        theo = (f"at least the whole image ({h} x {w})" if rf.covers_image
                else f"{th} x {tw} px of the image (it reaches past the border)" if clipped else f"{th} x {tw} px")
        gallery.append((viz.receptive_field_picture(shown, rf.erf, rf.box, rf.point),
                        f"{name}: sees {theo}; uses half its gradient within ±{rf.radius50} px"))
        rows.append(f"| {name} {badge(zoo().entries[name])} | {theo} | ±{rf.radius50} px | ±{rf.radius90} px |")
    table = (
        f"Pixel ({px}, {py}) of the image at {w}x{h}. **Theoretical**: every input pixel connected to it (yellow frame). "
        "**Effective**: how strongly each input pixel moves this pixel's winning class score in the trained network "
        "(heat map; the square whose half side is given holds 50% / 90% of it).\n\n"
        "| architecture | theoretical field | 50% of the effective field | 90% |\n| --- | --- | ---: | ---: |\n" + "\n".join(rows)
    )
    return gallery, table


def _picture(image_path: str | None) -> str | None:
    """The uploaded file, shown where it can be clicked (only if it decodes: a bad upload says why)."""
    if image_path:
        read_upload(image_path)
    return image_path or None


def _on_select(image_path: str | None, archs: list[str], evt: gr.SelectData = None):  # Gradio fills evt (by this exact annotation)
    """A click on the picture: that pixel (no event: the centre)."""
    x, y = evt.index[:2] if evt is not None and evt.index is not None else (-1, -1)
    return receptive_field_view(image_path, archs, int(x), int(y))


def build(names: list[str], examples: list[str]) -> None:
    """The tab's layout and events (inside a ``gr.Tab``)."""
    gr.Markdown(
        "What one output pixel can see, and what it looks at. **Click a pixel** of the image. A stack of 3x3 layers "
        "sees a small window; every downsampling step widens the view. But the trained network relies mostly on "
        "pixels near the centre of that window (the effective receptive field, Luo et al. 2016)."
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            image = image_input(200)
            archs = gr.CheckboxGroup(names, value=[n for n in DEFAULT_ARCHS if n in names], label="Architectures")
            button = gr.Button("Centre pixel", variant="primary")
            gr.Examples(examples, inputs=image, label="Examples")
        with gr.Column(scale=2, min_width=320):
            # a picture the page shows, not an upload field: clicks on it report the pixel (an upload field does not)
            picker = gr.Image(type="filepath", label="Click a pixel here", interactive=False, height=360, elem_classes=["wb-rf-picker"])
            table = gr.Markdown()
            gallery = gr.Gallery(label="Effective receptive field (heat) and theoretical field (frame)", columns=2, height="auto")
    image.change(_picture, [image], [picker], api_name=False, **LIGHT)
    picker.select(_on_select, [image, archs], [gallery, table], api_name=False, **HEAVY)
    button.click(receptive_field_view, [image, archs], [gallery, table], api_name="receptive_field", **HEAVY)
