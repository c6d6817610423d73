"""The Architectures tab: what each architecture is, and its feature maps stage by stage."""

from __future__ import annotations

import html

import gradio as gr

import workbench
from workbench.models.anatomy import count_flops, stage_shapes

from .common import HEAVY, zoo
from .gpu import on_gpu

__all__ = ["build", "describe_architecture"]

_ANATOMY_CACHE: dict[tuple, tuple] = {}


@on_gpu(duration=20)  # builds the model (its zoo predictor, warmed up) and runs it once to read the shapes
def describe_architecture(arch: str, height: float, width: float):
    """The Architectures tab: explanation, stage-by-stage feature-map sizes, parameters and FLOPs.

    Returns:
        ``(markdown, rows)``: rows are ``[stage, channels, "H x W", "1/reduction"]``.
    """
    info = workbench.get_architecture(arch)
    h, w = int(height or 360), int(width or 480)
    if min(h, w) < 32 or max(h, w) > 2048:
        raise gr.Error("Height and width must be between 32 and 2048 pixels.")
    key = (arch, h, w)
    if key not in _ANATOMY_CACHE:
        model = zoo().predictor(arch).model
        in_chans = zoo().predictor(arch).in_chans
        rows = [[s.name, s.channels, f"{s.height} x {s.width}", f"1/{s.reduction:g}"] for s in stage_shapes(model, (h, w), in_chans)]
        _ANATOMY_CACHE[key] = (rows, zoo().predictor(arch).num_parameters, count_flops(model, (h, w), in_chans))
    rows, params, flops = _ANATOMY_CACHE[key]
    text = (
        f"### {html.escape(info.title or arch)}\n*{html.escape(info.paper)}*\n\n{info.explanation}\n\n"
        f"**{params / 1e6:.2f} M parameters · {flops / 1e9:.1f} GFLOPs at {h}x{w}** "
        f"(default encoder: `{info.default_encoder}`, upsampling: `{info.default_upsample}`)"
    )
    return text, rows


def build(demo: gr.Blocks, names: list[str]) -> None:
    """The tab's layout and events (inside a ``gr.Tab``); the first architecture is described on page load."""
    with gr.Row():
        arch = gr.Dropdown(names, value=names[0], label="Architecture")
        height = gr.Number(360, label="Input height", precision=0)
        width = gr.Number(480, label="Input width", precision=0)
        button = gr.Button("Describe")
    text = gr.Markdown()
    table = gr.Dataframe(headers=["stage", "channels", "feature map (H x W)", "resolution"], label="Feature maps stage by stage", interactive=False)
    button.click(describe_architecture, [arch, height, width], [text, table], api_name="describe_architecture", **HEAVY)
    demo.load(describe_architecture, [arch, height, width], [text, table], api_name=False, **HEAVY)
