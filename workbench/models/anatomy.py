"""Model anatomy: parameters, FLOPs and feature-map sizes stage by stage."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["StageShape", "count_parameters", "count_flops", "stage_shapes", "stage_outputs"]


@dataclass
class StageShape:
    name: str  # e.g. "encoder[2]", "decoder.stages.1", "head"
    channels: int
    height: int
    width: int
    reduction: float  # input height / feature height


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int] = (360, 480), in_chans: int = 3) -> int:
    """Floating-point operations of one forward pass (``torch.utils.flop_counter``: 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, *input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


# Modules whose outputs make the stage-by-stage picture, by qualified name.
_STAGE_PATTERNS = [
    r"(inner\.)?encoder",
    r"decoder\.(bottleneck|fc|front_head|context)",
    r"decoder\.(stages|blocks|ups)\.\d+",
    r"decoder\.final_up",
    r"decoder\.up",
    r"(inner\.)?decoder",
    r"head|(inner\.)?segmentation_head",
]


@torch.no_grad()
def stage_shapes(model: nn.Module, input_size: tuple[int, int] = (360, 480), in_chans: int = 3) -> list[StageShape]:
    """Output shape of every encoder level and decoder stage for an input of ``input_size`` (H, W).

    Works on any model built from the ``encoder``/``decoder``/``head`` contract (and
    smp models); shapes are those inside the model, after its internal padding.
    """
    d = int(getattr(model, "size_divisor", 1))
    h = -(-input_size[0] // d) * d  # the height after the model's internal padding
    return [StageShape(name, o.shape[1], o.shape[2], o.shape[3], round(h / o.shape[2], 2))
            for name, o in stage_outputs(model, torch.zeros(1, in_chans, *input_size))]


@torch.no_grad()
def stage_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The output of every encoder level and decoder stage (then the head) for the input batch ``x``, in the
    order the forward pass produces them: ``[(name, (B, C, h, w) tensor)]``, e.g. ``encoder[2]``,
    ``decoder.stages.1``, ``head``. Run in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    records: list[tuple[str, torch.Tensor]] = []
    hooks = []
    pattern = re.compile("^(" + "|".join(_STAGE_PATTERNS) + ")$")

    def record(name):
        def hook(_module, _inp, out):
            outs = out if isinstance(out, (list, tuple)) else [out]
            for i, o in enumerate(outs):
                if not isinstance(o, torch.Tensor) or o.ndim != 4:
                    continue
                records.append((f"{name}[{i}]" if len(outs) > 1 else name, o.detach()))

        return hook

    for name, module in model.named_modules():
        if name and pattern.match(name):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        model(x)
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return records
