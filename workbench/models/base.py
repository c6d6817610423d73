"""The encoder -> decoder -> head contract shared by every architecture.

A plugin only assembles parts (as in smp's ``SegmentationModel``). The base
class owns the one thing every user trips over: input sizes. The input is
padded (reflect) up to a multiple of the model's ``size_divisor`` and the
logits are cropped back, so any ``H, W >= 32`` works, odd sizes included.

Decoder contract: ``decoder(features, image) -> tensor`` at the (padded) input
resolution, where ``features`` is the encoder's list of feature maps (coarsest
last) and ``image`` is the padded input, used as the full-resolution guide by
max-unpooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["PadCropModel", "SegmentationModel", "WrappedModel", "pad_to_multiple", "ConvBNAct", "DoubleConv", "MIN_INPUT_SIZE"]

MIN_INPUT_SIZE = 32


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad the bottom/right of ``x`` (B, C, H, W) so H and W are multiples of ``divisor``.

    Reflect padding where the image is large enough, replicate otherwise.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class PadCropModel(nn.Module):
    """Base for every model: pads the input to a multiple of ``size_divisor`` and crops the logits.

    Subclasses implement ``forward_padded(x)`` for inputs whose height and width
    are multiples of ``size_divisor``.
    """

    size_divisor: int = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < MIN_INPUT_SIZE:
            raise ValueError(f"input {h}x{w} is too small: height and width must be at least {MIN_INPUT_SIZE}")
        xp = pad_to_multiple(x, self.size_divisor)  # (B, C, H', W'), H' and W' multiples of size_divisor
        y = self.forward_padded(xp)  # (B, num_classes, H', W')
        assert y.shape[-2:] == xp.shape[-2:], f"model returned {tuple(y.shape)} for input {tuple(xp.shape)}"
        return y[..., :h, :w]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SegmentationModel(PadCropModel):
    """``encoder -> decoder -> head`` with internal pad/crop.

    Args:
        encoder: module returning a list of feature maps.
        decoder: ``decoder(features, image)`` -> (B, C, H, W) at the padded input size.
        head: maps decoder output to logits (``nn.Identity()`` if the decoder already does).
        size_divisor: the input is padded to a multiple of this (the largest encoder reduction).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module, *, size_divisor: int) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.size_divisor = int(size_divisor)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x), x))


class WrappedModel(PadCropModel):
    """Gives any ``(B, C, H, W) -> (B, K, H, W)`` network that needs divisible sizes the workbench contract."""

    def __init__(self, inner: nn.Module, *, size_divisor: int) -> None:
        super().__init__()
        self.inner = inner
        self.size_divisor = int(size_divisor)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> ReLU, 'same' padding (with dilation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvBNAct: the U-Net stage."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNAct(in_channels, out_channels), ConvBNAct(out_channels, out_channels))
