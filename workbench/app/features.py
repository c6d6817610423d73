"""The Feature maps tab: a model's activations stage by stage, down the encoder and back up the decoder, each
at its own resolution (:mod:`workbench.lab.features`)."""

from __future__ import annotations

import gradio as gr
import numpy as np

from workbench.lab.features import feature_stages

from .common import HEAVY, architecture_dropdown, badge, image_input, zoo
from .gpu import on_gpu
from .receptive import _input, _read_small

__all__ = ["build", "feature_maps_view"]


DISPLAY_SIDE = 240  # small maps are enlarged with nearest neighbours to about this size, so their pixels show as blocks


def _blocky(picture: np.ndarray) -> np.ndarray:
    k = max(1, -(-DISPLAY_SIDE // max(picture.shape[:2])))
    return picture.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else picture


@on_gpu(duration=20)
def feature_maps_view(image_path: str | None, arch: str, top_channels: int = 3):
    """The stages of ``arch`` on the image: ``(gallery of (picture, caption), markdown table)``; each picture is
    at the stage's own resolution, enlarged by a whole factor with nearest neighbours (its pixels show as blocks;
    the captions give the real size)."""
    image, _ = _read_small(image_path)
    if arch not in zoo().entries:
        raise gr.Error(f"Unknown architecture {arch!r}.")
    try:
        stages = feature_stages(zoo().predictor(arch).model, _input(arch, image).float(), top_channels=int(top_channels))
    except Exception as exc:
        raise gr.Error(f"{arch} failed: {type(exc).__name__}: {exc}") from None
    gallery = [(_blocky(pic), f"{cap} · {s.size[0]}x{s.size[1]} (1/{s.reduction:g})") for s in stages for pic, cap in s.maps]
    rows = "\n".join(f"| {s.name} | {s.part} | {s.channels} | {s.size[0]} x {s.size[1]} | 1/{s.reduction:g} |" for s in stages)
    table = (
        f"**{arch}** {badge(zoo().entries[arch])}: each stage's output, in the order the forward pass makes it. The encoder "
        "halves the resolution step by step while the channels grow (more kinds of pattern, coarser places); the decoder "
        "brings the resolution back, and its skip connections (U-Net) bring back the encoder's fine detail.\n\n"
        "| stage | part | channels | size | resolution |\n| --- | --- | ---: | --- | --- |\n" + rows
    )
    return gallery, table


def build(names: list[str], examples: list[str]) -> None:
    """The tab's layout and events (inside a ``gr.Tab``)."""
    gr.Markdown("What the network computes on the way: every encoder level and decoder stage, at its own resolution "
                "(first the mean activation over its channels, then its strongest channels).")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            image = image_input()
            arch = architecture_dropdown(names)
            top = gr.Slider(0, 8, value=3, step=1, label="Strongest channels per stage")
            button = gr.Button("Show feature maps", variant="primary")
            gr.Examples(examples, inputs=image, label="Examples")
        with gr.Column(scale=2, min_width=320):
            table = gr.Markdown()
            gallery = gr.Gallery(label="Stage by stage (captions: the real size)", columns=4, height="auto")
    button.click(feature_maps_view, [image, arch, top], [gallery, table], api_name="feature_maps", **HEAVY)
