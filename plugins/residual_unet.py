"""Residual U-Net: long and short skip connections.

Drozdzal, Vorontsov, Chartrand, Kadoury, Pal, "The Importance of Skip
Connections in Biomedical Image Segmentation", DLMIA 2016. A U-Net whose long
skips (encoder to decoder, concatenated) are complemented by short residual
skips inside every block, which keep gradients flowing through deep stacks and
let the network train faster and more stably.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench import DEFAULT_DECODER_CHANNELS, DEFAULT_ENCODER, TimmEncoder, build_unet, register_architecture

__all__ = ["ResidualBlock", "ResidualEncoder"]


class ResidualBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016, as used by Drozdzal et al.).

    ``x -> BN-ReLU-conv3x3 -> BN-ReLU-conv3x3 -> + shortcut(x)``, the shortcut a
    1x1 convolution when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)  # short skip


class ResidualEncoder(nn.Module):
    """Adds a residual block after every stage of an encoder that has no short skips of its own."""

    def __init__(self, encoder: TimmEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels, self.reductions = encoder.channels, encoder.reductions
        self.blocks = nn.ModuleList(ResidualBlock(c, c) for c in encoder.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [block(f) for block, f in zip(self.blocks, self.encoder(x))]


def _wrap_if_plain(force: bool | None):
    def wrap(enc: TimmEncoder) -> nn.Module:
        add = (not enc.is_residual) if force is None else force
        return ResidualEncoder(enc) if add else enc

    return wrap


@register_architecture(
    "residual_unet",
    title="Residual U-Net",
    paper="Drozdzal, Vorontsov, Chartrand, Kadoury, Pal. The Importance of Skip Connections in Biomedical Image Segmentation. DLMIA 2016",
    default_encoder=DEFAULT_ENCODER,
    default_upsample="transposed_k2",
    explanation=(
        "A U-Net has long skip connections: copies of encoder feature maps handed across to the decoder. "
        "A residual U-Net adds short skip connections as well: inside every block, the block's input is "
        "added to its output, so each block only has to learn a correction. Short skips make deep networks "
        "much easier to train, because the learning signal can flow straight through the additions."
        "\n\nDrozdzal et al. showed that the two kinds of skip do different jobs: long skips bring back "
        "spatial detail, short skips speed up and stabilise training. Here every decoder block is a "
        "pre-activation residual block; the encoder gets residual blocks too unless it already has them."
    ),
)
def residual_unet(
    *,
    num_classes: int,
    in_chans: int = 3,
    encoder: str = DEFAULT_ENCODER,
    upsample="transposed_k2",
    decoder_channels=DEFAULT_DECODER_CHANNELS,
    encoder_residual: bool | None = None,
    encoder_weights=None,
) -> nn.Module:
    """``encoder_residual``: None adds encoder residual blocks only if the encoder has none; True/False forces."""
    return build_unet(
        num_classes=num_classes,
        in_chans=in_chans,
        encoder=encoder,
        upsample=upsample,
        decoder_channels=decoder_channels,
        encoder_weights=encoder_weights,
        block=ResidualBlock,
        encoder_wrapper=_wrap_if_plain(encoder_residual),
    )
