"""Decoders shared by several architectures.

The U-Net expanding path (Ronneberger et al. 2015) serves ``unet``, ``residual_unet``
(with residual blocks, Drozdzal et al. 2016) and the upsampling-lab variants.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from .encoders import TimmEncoder
from .base import DoubleConv, SegmentationModel
from .upsampling import make_upsample

__all__ = ["UNetStage", "UNetDecoder", "DEFAULT_DECODER_CHANNELS", "build_unet"]

# Decoder widths from coarse to fine (the last one at full resolution). The same
# defaults as smp.Unet so the two are comparable; "symmetric" mirrors the encoder.
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class UNetStage(nn.Module):
    """Upsample ``x``, concatenate the skip, then ``block`` (two 3x3 convs in U-Net)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int, upsample, block: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.up = make_upsample(upsample, in_channels, out_channels, scale)
        self.block = block(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x, guide=skip)  # (B, out, H_skip, W_skip)
        return self.block(torch.cat([x, skip], dim=1))  # (B, out, H_skip, W_skip)


class UNetDecoder(nn.Module):
    """The expanding path for any encoder pyramid.

    One stage per encoder feature finer than the coarsest, plus a last stage at
    full resolution that concatenates the input image itself (timm encoders
    start at 1/2 or 1/4), so the output always has the input's size.

    Args:
        channels, reductions: the encoder's feature pyramid, coarsest last.
        in_chans: channels of the input image (the full-resolution skip).
        upsample: upsampling method.
        decoder_channels: widths per stage, coarse to fine, or ``"symmetric"``
            (each stage as wide as its skip; the full-resolution stage half the last).
        block: ``block(in, out)`` module applied after each concatenation.
    """

    def __init__(
        self,
        channels: list[int],
        reductions: list[int],
        in_chans: int,
        upsample,
        decoder_channels: Sequence[int] | str = DEFAULT_DECODER_CHANNELS,
        block: Callable[[int, int], nn.Module] = DoubleConv,
    ) -> None:
        super().__init__()
        # skips: every finer feature map, coarse to fine, then the image at full resolution
        skips = [(c, r, i) for i, (c, r) in enumerate(zip(channels[:-1], reductions[:-1])) if r < reductions[-1]]
        skips = sorted(skips, key=lambda s: -s[1])
        skips.append((in_chans, 1, -1))  # -1: the image
        n = len(skips)
        if decoder_channels == "symmetric":
            widths = [c for c, _, _ in skips[:-1]]
            widths.append(max(16, widths[-1] // 2) if widths else 16)
        else:
            widths = list(decoder_channels)
            if len(widths) < n:
                raise ValueError(f"decoder_channels needs {n} widths for this encoder, got {len(widths)}")
            widths = widths[:n] if len(widths) == n else widths[len(widths) - n:]
        self.skip_index = [i for _, _, i in skips]
        self.stages = nn.ModuleList()
        in_c, r = channels[-1], reductions[-1]
        for (skip_c, skip_r, _), out_c in zip(skips, widths):
            self.stages.append(UNetStage(in_c, skip_c, out_c, r // skip_r, upsample, block))
            in_c, r = out_c, skip_r
        self.out_channels = in_c

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = features[-1]  # (B, C, H/32, W/32)
        for idx, stage in zip(self.skip_index, self.stages):
            x = stage(x, image if idx < 0 else features[idx])  # one scale finer each time
        return x  # (B, out_channels, H, W)


def build_unet(*, num_classes: int, in_chans: int, encoder: str, upsample, decoder_channels, encoder_weights=None, block=DoubleConv, encoder_wrapper=None) -> SegmentationModel:
    """Shared by U-Net variants: timm encoder, U-Net decoder, 1x1 head."""
    enc = TimmEncoder(encoder, in_chans=in_chans, weights=encoder_weights)
    channels, reductions = enc.channels, enc.reductions
    if encoder_wrapper is not None:
        enc = encoder_wrapper(enc)
    dec = UNetDecoder(channels, reductions, in_chans, upsample, decoder_channels, block)
    head = nn.Conv2d(dec.out_channels, num_classes, 1)
    return SegmentationModel(enc, dec, head, size_divisor=max(reductions))
