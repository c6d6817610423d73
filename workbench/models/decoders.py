"""Decoders shared by several architectures.

The U-Net expanding path (Ronneberger et al. 2015) serves ``unet``, ``residual_unet``
(with residual blocks, Drozdzal et al. 2016) and the upsampling-lab variants.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoders import TimmEncoder
from .base import DoubleConv, SegmentationModel
from .upsampling import make_upsample

__all__ = ["UNetStage", "UNetDecoder", "DEFAULT_DECODER_CHANNELS", "build_unet", "skip_levels", "level_guide"]

# Decoder widths from coarse to fine (the last one at full resolution). The same
# defaults as smp.Unet so the two are comparable; "symmetric" mirrors the encoder.
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def skip_levels(channels: Sequence[int], reductions: Sequence[int], in_chans: int, *, image: str = "always") -> list[tuple[int, int, int | None]]:
    """The levels a U-shaped decoder climbs, coarse to fine: ``(skip_channels, reduction, feature index)``.

    Every encoder map finer than the coarsest is a skip; the input image is the full-resolution
    skip (index -1): ``image="always"`` adds it (U-Net), ``image="if_missing"`` only when the
    encoder has no map at reduction 1 (Tiramisu). Levels the encoder skips are filled in with
    skip-less levels (channels 0, index ``None``), so every step is a 2x one whatever the first
    reduction (1/4 for ConvNeXt, Swin, the MetaFormers; 1/16 for EfficientViT-M).

    Raises:
        ValueError: two neighbouring reductions whose ratio is not a power of two.
    """
    found = sorted(((c, r, i) for i, (c, r) in enumerate(zip(channels[:-1], reductions[:-1])) if r < reductions[-1]), key=lambda s: -s[1])
    if image == "always" or not found or found[-1][1] > 1:
        found.append((in_chans, 1, -1))
    levels: list[tuple[int, int, int | None]] = []
    r = reductions[-1]
    for c, skip_r, i in found:
        ratio = r // skip_r
        if r % skip_r or ratio & (ratio - 1):
            raise ValueError(f"encoder reductions {list(reductions)}: a step from 1/{r} to 1/{skip_r} is not a power of two")
        while r // skip_r > 2:  # a level the encoder has no map for
            r //= 2
            levels.append((0, r, None))
        levels.append((c, skip_r, i))
        r = skip_r
    return levels


class UNetStage(nn.Module):
    """Upsample ``x``, concatenate the skip, then ``block`` (two 3x3 convs in U-Net).

    ``skip_channels=0`` makes a skip-less stage (a level the encoder has no map for): upsample,
    then ``block``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int, upsample, block: Callable[[int, int], nn.Module]) -> None:
        super().__init__()
        self.up = make_upsample(upsample, in_channels, out_channels, scale)
        self.block = block(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, guide: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x, guide=skip if guide is None else guide)  # (B, out, H_skip, W_skip)
        return self.block(x if skip is None else torch.cat([x, skip], dim=1))  # (B, out, H_skip, W_skip)


def level_guide(image: torch.Tensor, reduction: int) -> torch.Tensor:
    """The image average-pooled to ``1/reduction``: the max-unpooling guide of a skip-less level."""
    return F.avg_pool2d(image, reduction) if reduction > 1 else image


class UNetDecoder(nn.Module):
    """The expanding path for any encoder pyramid.

    One stage per encoder feature finer than the coarsest, plus a last stage at
    full resolution that concatenates the input image itself (timm encoders
    start at 1/2 or 1/4), so the output always has the input's size. Every
    stage upsamples 2x: a level the encoder has no map for (1/2 under a
    1/4-first encoder such as ConvNeXt or Swin) gets a stage without a skip.

    Args:
        channels, reductions: the encoder's feature pyramid, coarsest last.
        in_chans: channels of the input image (the full-resolution skip).
        upsample: upsampling method.
        decoder_channels: widths per stage, coarse to fine, or ``"symmetric"``
            (each stage as wide as its skip; the full-resolution stage half the last).
            The default (256, 128, 64, 32, 16) grows by doublings in front (512, ...) for
            encoders that need more than five stages (VGG's 1/1..1/32, EfficientViT-M's 1/64).
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
        # skips: every finer feature map, coarse to fine, then the image at full resolution (index -1);
        # levels the encoder has no map for (1/2 under a 1/4-first encoder) come without a skip
        skips = skip_levels(channels, reductions, in_chans)
        n = len(skips)
        if decoder_channels == "symmetric":
            widths = []
            for c, _, _ in skips[:-1]:
                widths.append(c if c else max(16, (widths[-1] if widths else channels[-1]) // 2))
            widths.append(max(16, widths[-1] // 2) if widths else 16)
        else:
            widths = list(decoder_channels)
            if len(widths) < n and tuple(widths) == tuple(DEFAULT_DECODER_CHANNELS):
                widths = [widths[0] * 2 ** (n - len(widths) - k) for k in range(n - len(widths))] + widths  # deeper encoders: 512, ...
            if len(widths) < n:
                raise ValueError(f"decoder_channels needs {n} widths for this encoder, got {len(widths)}")
            widths = widths[:n] if len(widths) == n else widths[len(widths) - n:]
        self.skip_index = [i for _, _, i in skips]
        self.skip_reduction = [r for _, r, _ in skips]
        self.stages = nn.ModuleList()
        in_c, r = channels[-1], reductions[-1]
        for (skip_c, skip_r, _), out_c in zip(skips, widths):
            self.stages.append(UNetStage(in_c, skip_c, out_c, r // skip_r, upsample, block))
            in_c, r = out_c, skip_r
        self.out_channels = in_c

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = features[-1]  # (B, C, H/32, W/32)
        for idx, r, stage in zip(self.skip_index, self.skip_reduction, self.stages):
            if idx is None:  # a level the encoder has no map for: upsample and convolve, nothing to concatenate
                x = stage(x, None, guide=level_guide(image, r))
            else:
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
