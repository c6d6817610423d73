"""Tiramisu: Fully Convolutional DenseNets (FC-DenseNet56/67/103).

Jegou, Drozdzal, Vazquez, Romero, Bengio, "The One Hundred Layers Tiramisu:
Fully Convolutional DenseNets for Semantic Segmentation", CVPRW 2017. Dense
blocks (each layer sees the concatenation of all earlier ones) on both the down
and the up path; on the way up only the *new* feature maps of a dense block are
upsampled, which keeps the number of feature maps, and the cost, bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from workbench import SegmentationModel, TimmEncoder, make_upsample, register_architecture
from workbench.models.decoders import level_guide, skip_levels

__all__ = ["VARIANTS", "TiramisuConfig", "DenseBlock", "FCDenseNetEncoder", "TiramisuDecoder"]


@dataclass(frozen=True)
class TiramisuConfig:
    down_layers: tuple[int, ...]  # layers per dense block on the down path
    bottleneck_layers: int  # layers of the dense block at the lowest resolution
    growth_rate: int  # new feature maps per layer (k in the paper)
    first_conv: int = 48  # channels of the initial 3x3 convolution (paper: 48)

    @property
    def up_layers(self) -> tuple[int, ...]:
        return tuple(reversed(self.down_layers))


# Table 2 of the paper.
VARIANTS = {
    "fc_densenet56": TiramisuConfig((4, 4, 4, 4, 4), 4, 12),
    "fc_densenet67": TiramisuConfig((5, 5, 5, 5, 5), 5, 16),
    "fc_densenet103": TiramisuConfig((4, 5, 7, 10, 12), 15, 16),
}


class DenseLayer(nn.Sequential):
    """BN -> ReLU -> 3x3 conv (growth_rate maps) -> dropout."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """``n_layers`` dense layers, each fed the concatenation of the input and all previous outputs.

    Returns the concatenation of the input and the new maps (``new_only=False``)
    or only the ``n_layers * growth_rate`` new maps (``new_only=True``).
    """

    def __init__(self, in_channels: int, n_layers: int, growth_rate: int, dropout: float, new_only: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(n_layers))
        self.new_only = new_only
        self.out_channels = n_layers * growth_rate + (0 if new_only else in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            out = layer(torch.cat([x, *new], dim=1))  # (B, growth_rate, H, W)
            new.append(out)
        return torch.cat(new if self.new_only else [x, *new], dim=1)


class TransitionDown(nn.Sequential):
    """BN -> ReLU -> 1x1 conv -> dropout -> 2x2 max-pool."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class FCDenseNetEncoder(nn.Module):
    """The paper's down path, built natively (the paper trains from scratch).

    Returns the skip of every dense block (reductions 1, 2, 4, 8, 16) and the
    output of the last transition down (reduction 32).
    """

    def __init__(self, cfg: TiramisuConfig, in_chans: int, dropout: float) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, cfg.first_conv, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = cfg.first_conv
        self.channels, self.reductions = [], []
        for i, n in enumerate(cfg.down_layers):
            block = DenseBlock(c, n, cfg.growth_rate, dropout, new_only=False)
            c = block.out_channels
            self.blocks.append(block)
            self.downs.append(TransitionDown(c, dropout))
            self.channels.append(c)
            self.reductions.append(2**i)
        self.channels.append(c)
        self.reductions.append(2 ** len(cfg.down_layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # (B, 48, H, W)
        feats = []
        for block, down in zip(self.blocks, self.downs):
            x = block(x)
            feats.append(x)  # skip at this resolution
            x = down(x)  # half the resolution
        feats.append(x)  # (B, C, H/32, W/32)
        return feats


class TiramisuUpStage(nn.Module):
    """Transition up (of the new maps only), concatenate the skip, dense block."""

    def __init__(self, in_channels: int, skip_channels: int, n_layers: int, growth_rate: int, scale: int, upsample, dropout: float, last: bool) -> None:
        super().__init__()
        self.up = make_upsample(upsample, in_channels, in_channels, scale)
        self.block = DenseBlock(in_channels + skip_channels, n_layers, growth_rate, dropout, new_only=not last)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, guide: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x, guide=skip if guide is None else guide)  # (B, new maps, H_skip, W_skip)
        return self.block(x if skip is None else torch.cat([x, skip], dim=1))


class TiramisuDecoder(nn.Module):
    """Bottleneck dense block, then one up stage per skip (the image is the full-resolution skip if needed).

    On a timm encoder that starts at 1/4 (ConvNeXt, Swin, ...) the 1/2 level has no skip: its up
    stage upsamples and runs its dense block on the new maps alone, so every step stays 2x.
    """

    def __init__(self, channels: list[int], reductions: list[int], in_chans: int, cfg: TiramisuConfig, upsample, dropout: float) -> None:
        super().__init__()
        self.bottleneck = DenseBlock(channels[-1], cfg.bottleneck_layers, cfg.growth_rate, dropout, new_only=True)
        if len(set(reductions)) < 2:
            raise ValueError(f"the Tiramisu needs an encoder pyramid of several reductions, got {list(reductions)}")
        # timm encoders start at 1/2 or 1/4: the image is the last skip, missing levels come without one
        skips = skip_levels(channels, reductions, in_chans, image="if_missing")
        up_layers = cfg.up_layers
        if len(up_layers) != len(skips):
            raise ValueError(
                f"{len(up_layers)} up blocks configured for an encoder with {len(skips)} levels from 1/{reductions[-1]} "
                f"to full resolution (reductions {list(reductions)}); the Tiramisu's variants climb from 1/32"
            )
        self.skip_index = [i for _, _, i in skips]
        self.skip_reduction = [r for _, r, _ in skips]
        self.stages = nn.ModuleList()
        c, r = self.bottleneck.out_channels, reductions[-1]
        for k, ((skip_c, skip_r, _), n) in enumerate(zip(skips, up_layers)):
            last = k == len(skips) - 1
            stage = TiramisuUpStage(c, skip_c, n, cfg.growth_rate, r // skip_r, upsample, dropout, last)
            self.stages.append(stage)
            c, r = stage.block.out_channels, skip_r
        self.out_channels = c

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck(features[-1])  # new maps only: (B, bottleneck_layers * k, H/32, W/32)
        for idx, r, stage in zip(self.skip_index, self.skip_reduction, self.stages):
            if idx is None:  # a level the encoder has no map for
                x = stage(x, None, guide=level_guide(image, r))
            else:
                x = stage(x, image if idx < 0 else features[idx])
        return x  # (B, out_channels, H, W)


@register_architecture(
    "tiramisu",
    title="Tiramisu (FC-DenseNet)",
    paper="Jegou, Drozdzal, Vazquez, Romero, Bengio. The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic Segmentation. CVPRW 2017",
    default_encoder=None,
    default_upsample="transposed_k3",
    explanation=(
        "The Tiramisu is a U-shaped network built from dense blocks. In a dense block every layer receives "
        "the feature maps of all layers before it, stacked together, and adds a few new ones (the growth "
        "rate, 12 or 16). Features are reused instead of recomputed, so the network is deep (56 to 103 "
        "layers) yet small: FC-DenseNet103 has only 9.4 million parameters and was trained from scratch."
        "\n\nOn the way back up, only the feature maps a dense block has just created are upsampled (with "
        "a 3x3 transposed convolution), not everything it received; otherwise the stacks would grow too "
        "large at full resolution. Skip connections bring the down path's maps across, as in U-Net."
    ),
    variants=sorted(VARIANTS),
)
def tiramisu(
    *,
    num_classes: int,
    in_chans: int = 3,
    encoder: str | None = None,
    upsample="transposed_k3",
    variant: str = "fc_densenet56",
    dropout: float = 0.2,
    encoder_weights=None,
) -> nn.Module:
    """``encoder=None`` builds the paper's native FC-DenseNet down path; a timm name (e.g. ``densenet121``) uses it instead.

    ``variant`` picks the dense block configuration (``fc_densenet56``, ``fc_densenet67``, ``fc_densenet103``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiramisu variant {variant!r}; valid choices: {', '.join(sorted(VARIANTS))}")
    cfg = VARIANTS[variant]
    if encoder is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs a timm encoder; the native FC-DenseNet trains from scratch")
        enc: nn.Module = FCDenseNetEncoder(cfg, in_chans, dropout)
    else:
        enc = TimmEncoder(encoder, in_chans=in_chans, weights=encoder_weights)
    dec = TiramisuDecoder(enc.channels, enc.reductions, in_chans, cfg, upsample, dropout)
    head = nn.Conv2d(dec.out_channels, num_classes, 1)
    return SegmentationModel(enc, dec, head, size_divisor=max(enc.reductions))
