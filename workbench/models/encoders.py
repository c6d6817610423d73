"""One adapter around ``timm.create_model(..., features_only=True)``.

Every timm quirk lives here (as in smp's ``TimmUniversalEncoder``): decoders see
only ``channels`` and ``reductions``, never a hard-coded channel count.

Weights: ``weights=None`` trains from scratch (the default: these machines
cannot download); ``weights="imagenet"`` asks timm for its default pretrained
weights (needs internet); a path to a ``.safetensors``/``.pth`` file loads that
file through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``),
which is how users with weights on disk use them offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
import torch.nn as nn

__all__ = ["TimmEncoder", "list_encoders", "DEFAULT_ENCODER"]

# The shared encoder of the classic architectures: a ResNet-10-T (4.9 M parameters,
# about 13 ms on 1x3x384x480 in bf16 on a 2-core EPYC; see docs/performance.md "Per architecture").
DEFAULT_ENCODER = "resnet10t"

# Block classes that carry an identity/short skip. Used to tell whether an
# encoder is already residual (see residual_unet).
_RESIDUAL_BLOCKS = {
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "DepthwiseSeparableConv",
    "EdgeResidual",
    "ConvNeXtBlock",
    "DarkBlock",  # darknet/cspnet: x + shortcut
    "ResBottleneck",
    "ResBlock",
    "BottleneckBlock",
    "BasicBlockBlock",
    "PreBottleneckBlock",
    "PreActBasic",
    "PreActBottleneck",
    "Block",  # regnet/convnext-v2 style blocks with shortcuts
}


def list_encoders(pattern: str = "*") -> list[str]:
    """timm model names usable as encoders (anything timm lists supports ``features_only``)."""
    return timm.list_models(pattern)


class TimmEncoder(nn.Module):
    """timm backbone returning a pyramid of feature maps.

    Args:
        name: any timm model name (``timm.list_models()``).
        in_chans: input channels (1 or 3; timm adapts the stem).
        output_stride: 32 (default), 16 or 8 (dilated); only passed to timm when != 32.
        weights: ``None`` (random init), ``"imagenet"`` (timm's pretrained default)
            or a path to a weights file.
        out_indices: which stages to return (timm's default: all).

    Attributes:
        channels: output channels per returned feature map.
        reductions: spatial reduction (input size / feature size) per feature map.
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike | None = None,
        out_indices: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:10]
            raise ValueError(
                f"unknown timm encoder {name!r}"
                + (f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()")
            )
        kwargs: dict = {"features_only": True, "in_chans": in_chans}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if out_indices is not None:
            kwargs["out_indices"] = out_indices
        pretrained = False
        if weights is not None:
            pretrained = True
            if str(weights) != "imagenet":
                path = Path(weights)
                if not path.is_file():
                    raise FileNotFoundError(f"encoder weights file not found: {path}")
                kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            if "output_stride" in str(exc) or "dilation" in str(exc):
                raise ValueError(
                    f"timm encoder {name!r} does not support output_stride={output_stride}; "
                    "pick a ResNet/EfficientNet/ConvNeXt-style encoder for dilated models"
                ) from exc
            raise
        self.name = name
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())

    @property
    def is_residual(self) -> bool:
        """True if the backbone's blocks already carry short (identity) skips.

        timm's MobileNet/EfficientNet blocks (``DepthwiseSeparableConv``, ``InvertedResidual``,
        ...) record in ``has_skip`` whether the skip is actually used (MobileNetV1 and LCNet
        use none): a block only counts when it has one.
        """
        return any(
            type(m).__name__ in _RESIDUAL_BLOCKS and bool(getattr(m, "has_skip", True)) for m in self.model.modules()
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: (B, in_chans, H, W) -> [(B, channels[i], H / reductions[i], W / reductions[i])]
        return list(self.model(x))
