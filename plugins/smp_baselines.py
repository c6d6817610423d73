"""Modern baselines from segmentation_models_pytorch (smp), with the workbench contract.

smp's ``Unet`` and ``DeepLabV3Plus`` on the same timm encoder as the classic
architectures (through smp's ``tu-`` universal timm encoder), wrapped so they
take any input size like every other model here. They are what a practitioner
would reach for today, so the classic designs are compared against them.
"""

from __future__ import annotations

import math

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from workbench import DEFAULT_ENCODER, WrappedModel, register_architecture
from workbench.models.encoders import encoder_spec

__all__ = ["SMP_ARCHITECTURES", "FixedSizeModel"]

# the reduction patterns smp's tu- encoder accepts (timm_universal.py): 1/2..1/32, 1/4..1/32, 1/1..1/32
_SMP_PATTERNS = ((2, 4, 8, 16, 32), (4, 8, 16, 32), (1, 2, 4, 8, 16, 32))


class FixedSizeModel(WrappedModel):
    """A wrapped network whose encoder takes one input size only: smaller inputs are padded to it, larger refused."""

    def __init__(self, inner: nn.Module, *, size: tuple[int, int], encoder: str) -> None:
        super().__init__(inner, size_divisor=math.lcm(*size))
        self.size, self.encoder_name = tuple(size), encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and (x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]):
            raise ValueError(
                f"timm encoder {self.encoder_name!r} takes inputs up to {self.size[0]}x{self.size[1]} only (timm builds it for "
                f"one size): got {x.shape[-2]}x{x.shape[-1]}; use smaller crops or sliding windows (workbench eval --window H W)"
            )
        return super().forward(x)


def _smp(cls, *, num_classes: int, in_chans: int, encoder: str, encoder_weights, **kwargs) -> nn.Module:
    """smp's ``cls`` on ``tu-<encoder>``, with the size handling the workbench's TimmEncoder uses.

    Transformers timm can make size-agnostic get ``dynamic_img_size`` (smp passes it on to timm);
    window-partitioned ones are padded to multiples of their built size, fixed-size ones to that size.
    """
    if encoder_weights not in (None, "imagenet"):
        raise ValueError("smp baselines take encoder_weights=None or 'imagenet'")
    spec = encoder_spec(encoder)
    if tuple(spec.reductions) not in _SMP_PATTERNS:
        raise ValueError(
            f"smp's tu- encoders need a timm pyramid at 1/2..1/32, 1/4..1/32 or 1/1..1/32; {encoder!r} has reductions "
            f"{list(spec.reductions)}" + (" (one scale: a plain ViT)" if spec.single_scale else "")
            + "; the workbench's own architectures (unet, fcn8s, ...) take it"
        )
    extra = dict(spec.timm_kwargs)
    try:
        inner = cls(encoder_name=f"tu-{encoder}", encoder_weights=encoder_weights, in_channels=in_chans, classes=num_classes, **extra, **kwargs)
    except (TypeError, AssertionError) as exc:
        if "output_stride" in str(exc) or (isinstance(exc, AssertionError) and cls is smp.DeepLabV3Plus):
            raise ValueError(
                f"{cls.__name__} dilates its encoder (output_stride 16), and timm cannot dilate {encoder!r}; "
                "pick a ResNet/EfficientNet/ConvNeXt-style encoder, or the workbench's dilated net (it cuts such encoders at 1/8)"
            ) from exc
        raise
    if spec.fixed_size is not None:
        return FixedSizeModel(inner, size=spec.fixed_size, encoder=encoder)
    return WrappedModel(inner, size_divisor=math.lcm(32, *spec.input_multiple))


@register_architecture(
    "smp_unet",
    title="U-Net (segmentation_models_pytorch)",
    paper="Iakubovskii, segmentation_models_pytorch (2019); U-Net by Ronneberger et al. 2015",
    default_encoder=DEFAULT_ENCODER,
    explanation=(
        "The U-Net most practitioners use today: segmentation_models_pytorch's implementation on a timm "
        "encoder, with nearest-neighbour upsampling and decoder widths 256, 128, 64, 32, 16."
        "\n\nIt is here as the reference: the workbench's own unet uses the same encoder and decoder widths, "
        "so differences between the two come from implementation details, not from the design."
    ),
)
def smp_unet(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, encoder_weights=None) -> nn.Module:
    return _smp(smp.Unet, num_classes=num_classes, in_chans=in_chans, encoder=encoder, encoder_weights=encoder_weights)


@register_architecture(
    "deeplabv3plus",
    title="DeepLabV3+ (segmentation_models_pytorch)",
    paper="Chen, Zhu, Papandreou, Schroff, Adam. Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation. ECCV 2018",
    default_encoder=DEFAULT_ENCODER,
    explanation=(
        "DeepLabV3+ combines the two families in this workbench. Like the dilated network it keeps the "
        "encoder at 1/16 resolution with dilated convolutions and gathers context with parallel dilated "
        "convolutions at several rates plus a global average (ASPP)."
        "\n\nLike U-Net it then has a small decoder that upsamples 4x, concatenates a shallow 1/4-resolution "
        "feature map for sharp boundaries, and upsamples 4x again. It was state of the art on PASCAL VOC "
        "and Cityscapes in 2018 and is still a strong default."
    ),
)
def deeplabv3plus(*, num_classes: int, in_chans: int = 3, encoder: str = DEFAULT_ENCODER, encoder_weights=None) -> nn.Module:
    return _smp(smp.DeepLabV3Plus, num_classes=num_classes, in_chans=in_chans, encoder=encoder, encoder_weights=encoder_weights)


SMP_ARCHITECTURES = ("smp_unet", "deeplabv3plus")
