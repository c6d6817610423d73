"""Dilated convolutions: a front-end at output stride 8 plus a context module.

Yu, Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions", ICLR
2016. Instead of shrinking the image and growing it back, keep the feature map
at 1/8 resolution (the encoder's last stages use dilated convolutions instead
of striding) and aggregate context with a stack of 3x3 convolutions whose
dilation doubles (1, 1, 2, 4, 8, 16), initialised to the identity.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench import DEFAULT_ENCODER, ConvBNAct, SegmentationModel, TimmEncoder, make_upsample, register_architecture

__all__ = ["ContextModule", "DilatedDecoder", "CONTEXT_DILATIONS"]

# Table 1 of the paper: dilations of the seven 3x3 layers, then a 1x1 layer.
CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
_LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)  # multiples of C for the large context module


def _identity_init_(conv: nn.Conv2d, base: int, noise: float = 0.0) -> None:
    """The paper's identity initialisation, generalised to different in/out widths (section 3).

    ``k(t, a)[b] = C / c_out`` at the centre tap when ``floor(a C / c_in) == floor(b C / c_out)``,
    else 0 (plus optional small noise), with ``C = base`` the number of classes; for
    ``c_in == c_out == C`` this is the exact identity.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    with torch.no_grad():
        conv.weight.normal_(0.0, noise) if noise > 0 else conv.weight.zero_()
        a = torch.arange(c_in)
        b = torch.arange(c_out)
        match = (a[None, :] * base // c_in) == (b[:, None] * base // c_out)  # (c_out, c_in)
        conv.weight[:, :, kh // 2, kw // 2] += match.float() * (base / c_out)
        if conv.bias is not None:
            conv.bias.zero_()


class ContextModule(nn.Module):
    """Seven 3x3 dilated convolutions with ReLU, then a 1x1 convolution; identity-initialised.

    Args:
        num_classes: C, the width of input and output (class scores).
        large: the paper's "large" module (widths 2C..32C) instead of the "basic" one (all C).
    """

    def __init__(self, num_classes: int, large: bool = False) -> None:
        super().__init__()
        widths = [m * num_classes for m in _LARGE_WIDTHS] if large else [num_classes] * len(CONTEXT_DILATIONS)
        layers: list[nn.Module] = []
        c = num_classes
        for d, w in zip(CONTEXT_DILATIONS, widths):
            conv = nn.Conv2d(c, w, 3, padding=d, dilation=d)
            _identity_init_(conv, num_classes, noise=1e-3 * num_classes / w if large else 0.0)
            layers += [conv, nn.ReLU(inplace=True)]
            c = w
        final = nn.Conv2d(c, num_classes, 1)
        _identity_init_(final, num_classes)
        layers.append(final)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, C, H/8, W/8): same shape, wider context


class DilatedDecoder(nn.Module):
    """Front-end scores at 1/8, the context module, then upsampling to the input size."""

    def __init__(self, channels: list[int], reductions: list[int], num_classes: int, upsample, context: str, dropout: float) -> None:
        super().__init__()
        c = channels[-1]  # the coarsest map: 1/8 (or 1/16), dilated by timm or the encoder cut there
        mid = max(c // 4, num_classes)
        self.front_head = nn.Sequential(ConvBNAct(c, mid), nn.Dropout2d(dropout), nn.Conv2d(mid, num_classes, 1))
        if context not in ("basic", "large", "none"):
            raise ValueError(f"context must be 'basic', 'large' or 'none', got {context!r}")
        self.context = nn.Identity() if context == "none" else ContextModule(num_classes, large=context == "large")
        self.up = make_upsample(upsample, num_classes, num_classes, reductions[-1])

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = self.front_head(features[-1])  # (B, K, H/8, W/8)
        # The context module and the upsampling work on class scores, where argmax decides: under bf16
        # autocast (8-bit mantissa) their seven dilated layers flipped near-tied pixels, and the trained
        # CamVid model's labels agreed with fp32 on only 99.48% of pixels. In fp32 they cost little (K
        # channels at 1/8 resolution) and the agreement is back above 99.5% (tests/test_optimize.py).
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.context(x.float())  # (B, K, H/8, W/8)
            return self.up(x, guide=image.float())  # (B, K, H, W)


@register_architecture(
    "dilated",
    title="Dilated convolutions (Yu & Koltun)",
    paper="Yu, Koltun. Multi-Scale Context Aggregation by Dilated Convolutions. ICLR 2016",
    default_encoder=DEFAULT_ENCODER,
    default_upsample="bilinear",
    explanation=(
        "Most segmentation networks shrink the image to 1/32 and then have to grow it back. A dilated "
        "network refuses to shrink that far: it stops at 1/8 and makes its later convolutions 'dilated', "
        "spreading their 3x3 taps apart with gaps, so they still see a wide area without losing resolution."
        "\n\nOn top sits the context module: seven 3x3 convolutions whose gaps double (1, 1, 2, 4, 8, 16) "
        "so the receptive field grows exponentially while the map keeps its size. It starts as the identity, "
        "so adding it can only help, and learns to use the wider context. The result is upsampled 8x "
        "bilinearly. Cost: every late layer runs at 1/8 resolution, which is slow."
    ),
)
def dilated(
    *,
    num_classes: int,
    in_chans: int = 3,
    encoder: str = DEFAULT_ENCODER,
    upsample="bilinear",
    output_stride: int = 8,
    context: str = "basic",
    dropout: float = 0.1,
    encoder_weights=None,
) -> nn.Module:
    """``context``: ``"basic"`` (the paper's C-wide module), ``"large"`` or ``"none"`` (front-end only).

    Encoders timm can dilate (ResNets, EfficientNets, ConvNeXt, ...) keep their later stages at
    ``1/output_stride`` with dilated convolutions, as in the paper. Encoders it cannot (Swin, ViT,
    MaxViT, the MetaFormers, ...) are cut after their ``1/output_stride`` stage (a plain ViT's simple
    feature pyramid gives it one) and the context module's dilated convolutions supply the wide
    view the dropped stages would have; an encoder with no map that fine is refused.
    """
    try:
        enc = TimmEncoder(encoder, in_chans=in_chans, output_stride=output_stride, weights=encoder_weights)
    except ValueError as exc:
        if "does not support output_stride" not in str(exc):
            raise
        # no dilation in timm: the encoder up to its 1/output_stride stage, the context module on top
        refusal = ValueError(
            f"dilated needs a 1/{output_stride} feature map: timm encoder {encoder!r} cannot be dilated "
            f"(timm has no output_stride for it) and has no feature map at 1/{output_stride} to cut it at"
        )
        try:
            enc = TimmEncoder(encoder, in_chans=in_chans, weights=encoder_weights, max_reduction=output_stride)
        except ValueError as cut_exc:
            if "or finer" not in str(cut_exc):
                raise
            raise refusal from None
        if enc.reductions[-1] != output_stride:
            raise refusal from None
        # the stages kept may still need inputs the full encoder needs (HRNet's branches, Hiera's mask units)
        dec = DilatedDecoder(enc.channels, enc.reductions, num_classes, upsample, context, dropout)
        return SegmentationModel(enc, dec, nn.Identity(), size_divisor=enc.size_divisor)
    dec = DilatedDecoder(enc.channels, enc.reductions, num_classes, upsample, context, dropout)
    return SegmentationModel(enc, dec, nn.Identity(), size_divisor=max(enc.reductions))
