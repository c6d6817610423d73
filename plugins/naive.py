"""The naive segmenter: a plain stack of 3x3 convolutions at full resolution.

The strawman every tutorial starts from (e.g. the CS231n lecture on
segmentation): never downsample, so no detail is lost, but every layer runs on
every pixel (expensive) and a stack of L 3x3 layers sees only a
(2L+1) x (2L+1) window, far too little context to tell a road from a pavement.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench import ConvBNAct, SegmentationModel, register_architecture

__all__ = ["ConvStack"]


class ConvStack(nn.Module):
    """``depth`` same-padded 3x3 ConvBNAct layers; returns a one-level pyramid at reduction 1."""

    def __init__(self, in_chans: int, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[ConvBNAct(in_chans if i == 0 else width, width) for i in range(depth)])
        self.channels, self.reductions = [width], [1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.layers(x)]  # (B, width, H, W)


class _Last(nn.Module):
    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        return features[-1]


@register_architecture(
    "naive",
    title="Naive full-resolution conv stack",
    paper="The strawman of CS231n Lecture 11 ('Fully convolutional, no downsampling')",
    explanation=(
        "The simplest idea: run 3x3 convolutions over the image without ever shrinking it, and predict a "
        "class for every pixel from the last layer. Nothing is lost to downsampling, so edges could in "
        "principle be perfect."
        "\n\nIn practice it fails twice. Every layer runs on every pixel, so it is slow and memory-hungry "
        "at full resolution; and each layer only widens the view by one pixel on each side, so after 8 "
        "layers a pixel has seen a 17x17 patch, too little to tell road from pavement or sky from wall. "
        "The encoder-decoder designs exist to fix both problems."
    ),
)
def naive(*, num_classes: int, in_chans: int = 3, width: int = 32, depth: int = 8) -> nn.Module:
    """``depth`` 3x3 layers of ``width`` channels; receptive field ``2 * depth + 1`` pixels."""
    enc = ConvStack(in_chans, width, depth)
    return SegmentationModel(enc, _Last(), nn.Conv2d(width, num_classes, 1), size_divisor=1)
