"""Modern baselines from segmentation_models_pytorch (smp), with the workbench contract.

smp's ``Unet`` and ``DeepLabV3Plus`` on the same timm encoder as the classic
architectures (through smp's ``tu-`` universal timm encoder), wrapped so they
take any input size like every other model here. They are what a practitioner
would reach for today, so the classic designs are compared against them.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch.nn as nn

from workbench import DEFAULT_ENCODER, WrappedModel, register_architecture

__all__ = ["SMP_ARCHITECTURES"]


def _smp(cls, *, num_classes: int, in_chans: int, encoder: str, encoder_weights, **kwargs) -> nn.Module:
    if encoder_weights not in (None, "imagenet"):
        raise ValueError("smp baselines take encoder_weights=None or 'imagenet'")
    inner = cls(encoder_name=f"tu-{encoder}", encoder_weights=encoder_weights, in_channels=in_chans, classes=num_classes, **kwargs)
    return WrappedModel(inner, size_divisor=32)


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
