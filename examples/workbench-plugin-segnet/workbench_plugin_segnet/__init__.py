"""SegNet as a third-party workbench plugin.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", TPAMI 2017. A VGG-style encoder that
halves the resolution with 2x2 max-pooling, and a mirrored decoder that grows
it back with *max-unpooling*: every value goes back to the position where the
encoder's max-pool found its maximum, zeros elsewhere, and 3x3 convolutions
then fill in the sparse map. No feature maps are concatenated (unlike U-Net):
the pooling positions are all the decoder gets from the encoder.

Installing this package (``pip install ./examples/workbench-plugin-segnet``)
declares the module under the ``workbench.plugins`` entry-point group; the
workbench imports it during plugin discovery and the decorator below registers
``segnet``. See ``docs/plugins.md`` in the workbench for the plugin contract.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench import ConvBNAct, SegmentationModel, TimmEncoder, make_upsample, register_architecture

__all__ = ["SegNetEncoder", "SegNetDecoder", "segnet", "VGG_DEPTHS"]
__version__ = "0.1.0"

# 3x3 convolutions per stage of VGG-16's 13-layer feature extractor (the paper's encoder).
VGG_DEPTHS = (2, 2, 3, 3, 3)


class SegNetEncoder(nn.Module):
    """VGG-style encoder: per stage, ``depth`` 3x3 ConvBNAct layers, then 2x2 max-pooling.

    Widths are ``width * (1, 2, 4, 8, 8)`` (``width=64`` is VGG-16). Returns the
    map each max-pool reduced (reductions 1, 2, 4, 8, 16), which carries the
    pooling indices, and the output of the last pool (reduction 32).
    """

    def __init__(self, in_chans: int, width: int, depths: tuple[int, ...] = VGG_DEPTHS) -> None:
        super().__init__()
        widths = [width * m for m in (1, 2, 4, 8, 8)][: len(depths)]
        self.stages = nn.ModuleList()
        c = in_chans
        for w, n in zip(widths, depths):
            self.stages.append(nn.Sequential(*[ConvBNAct(c if i == 0 else w, w) for i in range(n)]))
            c = w
        self.pool = nn.MaxPool2d(2, stride=2)
        self.channels = widths + [widths[-1]]
        self.reductions = [2**i for i in range(len(depths) + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)  # (B, w, H/r, W/r)
            feats.append(x)  # the map this stage's max-pool reduces: the decoder unpools into its maxima
            x = self.pool(x)  # (B, w, H/2r, W/2r)
        feats.append(x)  # (B, 8 * width, H/32, W/32)
        return feats


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: per scale, upsample, then ``depth`` 3x3 ConvBNAct layers (no concatenation).

    With ``upsample="max_unpool"`` each step is :class:`workbench.models.upsampling.MaxUnpool`
    guided by the encoder map of the same size and width: it max-pools that map
    2x2 again (the identical operation the encoder ran on the identical tensor),
    so its indices *are* the encoder's pooling indices, and every value returns to
    the position its maximum came from, per channel. Any other method from
    ``workbench.models.upsampling`` can replace it, which is what the upsampling comparison is for.

    With a timm encoder (strided convolutions, no max-pool) the positions are the
    2x2 maxima of each encoder map, SegNet's rule applied to another backbone; the
    last step to full resolution takes them from the image when the encoder starts at 1/2.
    """

    def __init__(self, channels: list[int], reductions: list[int], upsample, depths: tuple[int, ...]) -> None:
        super().__init__()
        r_bottom = reductions[-1]
        guides = sorted(((c, r, i) for i, (c, r) in enumerate(zip(channels[:-1], reductions[:-1])) if r < r_bottom), key=lambda g: -g[1])
        if not guides or guides[-1][1] > 1:
            guides.append((None, 1, -1))  # -1: the image guides the last step
        if len(depths) < len(guides):
            depths = tuple(depths) + (depths[-1],) * (len(guides) - len(depths))
        self.guide_index = [i for _, _, i in guides]
        self.ups = nn.ModuleList()
        self.stages = nn.ModuleList()
        c, r = channels[-1], r_bottom
        for k, ((gc, gr, _), n) in enumerate(zip(guides, depths)):
            out_c = c if gc is None else gc  # unpool into the guide's width: per-channel positions
            nxt = guides[k + 1][0] if k + 1 < len(guides) else None
            next_c = out_c if nxt is None else nxt  # the last conv narrows to the next scale's width
            self.ups.append(make_upsample(upsample, c, out_c, r // gr))
            self.stages.append(nn.Sequential(*[ConvBNAct(out_c, out_c if i < n - 1 else next_c) for i in range(n)]))
            c, r = next_c, gr
        self.out_channels = c

    def forward(self, features: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        x = features[-1]  # (B, C, H/32, W/32)
        for idx, up, stage in zip(self.guide_index, self.ups, self.stages):
            guide = image if idx < 0 else features[idx]
            x = stage(up(x, guide=guide))  # one scale finer: (B, C', H/r, W/r)
        return x  # (B, out_channels, H, W)


@register_architecture(
    "segnet",
    title="SegNet",
    paper=(
        "Badrinarayanan, Kendall, Cipolla. SegNet: A Deep Convolutional Encoder-Decoder Architecture "
        "for Image Segmentation. TPAMI 2017"
    ),
    default_encoder=None,  # None: its own VGG-style encoder (max-pooling gives it the indices)
    default_upsample="max_unpool",
    explanation=(
        "SegNet is an encoder-decoder. The encoder is a VGG network: blocks of 3x3 convolutions, each "
        "followed by a 2x2 max-pool that keeps the largest of every four values and halves the image. "
        "While pooling, SegNet writes down *where* in each 2x2 window the largest value was. The decoder "
        "mirrors the encoder and grows the map back step by step."
        "\n\nTo grow it, the decoder does not interpolate or learn an upsampling: it puts every value back "
        "at the remembered position and leaves the other three positions empty (max-unpooling), then "
        "3x3 convolutions fill the gaps. Remembering positions costs almost nothing, unlike U-Net's "
        "copies of whole feature maps, and it puts object boundaries back where the encoder saw them. "
        "SegNet was built for road scenes (CamVid) on limited memory."
    ),
)
def segnet(
    *,
    num_classes: int,
    in_chans: int = 3,
    encoder: str | None = None,
    upsample="max_unpool",
    width: int = 16,
    encoder_weights=None,
) -> nn.Module:
    """``encoder=None`` builds the paper's VGG-style encoder with widths ``width * (1, 2, 4, 8, 8)``.

    ``width=16`` (the default) has 1.8 M parameters; ``width=64`` is the paper's VGG-16 SegNet
    (29.5 M). A timm name (e.g. ``resnet10t``) uses that backbone instead, its maps guiding the unpooling.
    """
    if encoder is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs a timm encoder; the native VGG-style encoder trains from scratch")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        enc: nn.Module = SegNetEncoder(in_chans, width)
        depths = tuple(reversed(VGG_DEPTHS))  # the decoder mirrors the encoder: 3, 3, 3, 2, 2 layers
    else:
        enc = TimmEncoder(encoder, in_chans=in_chans, weights=encoder_weights)
        depths = (2,)
    dec = SegNetDecoder(enc.channels, enc.reductions, upsample, depths)
    head = nn.Conv2d(dec.out_channels, num_classes, 1)  # the per-pixel classifier
    return SegmentationModel(enc, dec, head, size_divisor=max(enc.reductions))
