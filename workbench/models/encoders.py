"""One adapter around ``timm.create_model(..., features_only=True)``.

Every timm quirk lives here (as in smp's ``TimmUniversalEncoder``): decoders see
only ``channels`` and ``reductions``, never a hard-coded channel count, and
always NCHW feature maps of exactly ``input size / reduction``.

What the adapter irons out, read from timm's own ``feature_info`` and
``pretrained_cfg`` (:func:`encoder_spec`, cached per name):

- **Any first reduction.** ResNets start at 1/2, ConvNeXt, Swin, EdgeNeXt, FastViT and the
  MetaFormers at 1/4, EfficientViT-M at 1/16; ``reductions`` says which, and the decoders fill
  the missing levels themselves.
- **Channels-last outputs.** Swin and MambaOut return NHWC maps (timm's ``output_fmt``); they are
  permuted to NCHW.
- **Transformers built for one input size.** Where timm can make them size-agnostic it is asked to
  (``dynamic_img_size``/``dynamic_img_pad``: ViT, DeiT, EVA, Swin); window-partitioned ones (MaxViT)
  get their input padded to a multiple of the size they were built for; the rest (CoAtNet, Hiera,
  LeViT, EfficientFormer) are padded to that size exactly, and a larger input is refused with a
  message saying so. Feature maps are cropped back, so the padding is invisible outside.
- **Single-scale encoders.** A plain ViT has one stride (1/16, or 1/14 for EVA-02): a simple
  feature pyramid (Li et al. 2022, ViTDet: transposed convolutions up to 1/8 and 1/4, a max-pool
  down to 1/32) turns its last map into the usual 1/4..1/32 pyramid.

Weights: ``weights=None`` trains from scratch (the default: these machines
cannot download); ``weights="imagenet"`` asks timm for its default pretrained
weights (needs internet); a path to a ``.safetensors``/``.pth`` file loads that
file through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``),
which is how users with weights on disk use them offline.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TimmEncoder", "list_encoders", "DEFAULT_ENCODER", "EncoderSpec", "encoder_spec", "SimpleFeaturePyramid", "PYRAMID_REDUCTIONS"]

# The shared encoder of the classic architectures: a ResNet-10-T (4.9 M parameters,
# about 13 ms on 1x3x384x480 in bf16 on a 2-core EPYC; see docs/performance.md "Per architecture").
DEFAULT_ENCODER = "resnet10t"

# The strides the simple feature pyramid gives a single-scale encoder (ViTDet's 1/4..1/32).
PYRAMID_REDUCTIONS = (4, 8, 16, 32)

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

# Keyword sets that make a fixed-size timm transformer accept other sizes, most capable first:
# ViT/EVA take both (and then pad to the patch size themselves); Swin V1/V2 take dynamic_img_size.
_DYNAMIC_KWARGS = ({"dynamic_img_size": True, "dynamic_img_pad": True}, {"dynamic_img_size": True})


def list_encoders(pattern: str = "*") -> list[str]:
    """timm model names usable as encoders (anything timm lists supports ``features_only``)."""
    return timm.list_models(pattern)


@dataclass(frozen=True)
class EncoderSpec:
    """What the workbench needs to know about a timm encoder before it builds one.

    Attributes:
        name: the timm model name.
        timm_kwargs: extra ``timm.create_model`` keywords that make it size-agnostic (e.g.
            ``dynamic_img_size``), empty for most encoders.
        channels, reductions: timm's ``feature_info`` (before any pyramid is added).
        out_indices: timm's ``feature_info.out_indices`` (what ``out_indices=`` selects among).
        channels_last: the feature maps come out NHWC (Swin, MambaOut).
        input_multiple: ``(h, w)`` the input must be a multiple of (window-partitioned models built
            for one size); ``(1, 1)``: any size the model's own reductions allow.
        fixed_size: ``(h, w)``: the only input size the encoder accepts (inputs are padded to it);
            ``None``: any size.
    """

    name: str
    timm_kwargs: tuple[tuple[str, object], ...]
    channels: tuple[int, ...]
    reductions: tuple[int, ...]
    out_indices: tuple[int, ...]
    channels_last: bool
    input_multiple: tuple[int, int] = (1, 1)
    fixed_size: tuple[int, int] | None = None

    @property
    def single_scale(self) -> bool:
        """Every feature map at the same stride (plain ViT, DeiT, EVA, XCiT): no pyramid of its own."""
        return len(set(self.reductions)) == 1


def _unknown(name: str) -> ValueError:
    close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:10]
    return ValueError(
        f"unknown timm encoder {name!r}"
        + (f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()")
    )


def _is_channels_last(model: nn.Module) -> bool:
    return str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")


def _runs(model: nn.Module, h: int, w: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w))
        return True
    except Exception:  # noqa: BLE001 - timm raises AssertionError, RuntimeError or ValueError for a wrong size
        return False


@functools.lru_cache(maxsize=None)
def encoder_spec(name: str) -> EncoderSpec:
    """How ``name`` must be built and fed (cached: the probing below runs once per name and process).

    Encoders timm does not mark ``fixed_input_size`` are read without running them (on the meta
    device where timm allows). Fixed-size ones are asked for ``dynamic_img_size`` where their class
    takes it, then tried on a small input; if that fails, on multiples of their built size; if that
    fails too, their built size is the only one they take.

    Raises:
        ValueError: unknown name, or an encoder that runs on no input size tried.
    """
    if not timm.is_model(name):
        raise _unknown(name)
    cfg = timm.get_pretrained_cfg(name)
    fixed = bool(getattr(cfg, "fixed_input_size", False))
    if not fixed:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, features_only=True)
        except Exception:  # noqa: BLE001 - some models cannot be built on the meta device
            model = timm.create_model(name, features_only=True)
        fi = model.feature_info
        return EncoderSpec(name, (), tuple(fi.channels()), tuple(fi.reduction()), tuple(fi.out_indices), _is_channels_last(model))

    model, kwargs = None, {}
    for candidate in (*_DYNAMIC_KWARGS, {}):
        try:
            model = timm.create_model(name, features_only=True, **candidate)
        except TypeError as exc:
            if "unexpected keyword" in str(exc) and candidate:
                continue
            raise
        kwargs = candidate
        break
    model.eval()
    fi = model.feature_info
    reductions = tuple(fi.reduction())
    base = dict(
        name=name,
        timm_kwargs=tuple(sorted(kwargs.items())),
        channels=tuple(fi.channels()),
        reductions=reductions,
        out_indices=tuple(fi.out_indices),
        channels_last=_is_channels_last(model),
    )
    # the outer model pads to a multiple of the largest reduction (32 for a pyramid): try such a size
    unit = max(32, max(reductions)) if len(set(reductions)) == 1 else max(reductions)
    if _runs(model, 2 * unit, 3 * unit):
        return EncoderSpec(**base)
    size = tuple(int(s) for s in (getattr(cfg, "input_size", None) or (3, 224, 224))[-2:])
    if _runs(model, size[0], 2 * size[1]) and _runs(model, 2 * size[0], size[1]):
        return EncoderSpec(**base, input_multiple=size)
    if _runs(model, *size):
        return EncoderSpec(**base, fixed_size=size)
    raise ValueError(f"timm encoder {name!r} runs on none of the input sizes tried (multiples of {unit}, of {size[0]}x{size[1]}, or {size[0]}x{size[1]} itself)")


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad the bottom/right of ``x`` to ``h x w`` (reflect where the image is large enough, replicate otherwise)."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (Li, Mao, Girshick, He 2022) over one stride-16 map.

    1/4: two 2x2 transposed convolutions (BN-GELU between), 1/8: one, 1/16: the map itself,
    1/32: a 2x2 max-pool. Maps whose grid is not 1/16 of the input (EVA-02's 14-pixel patches)
    are resized to it first.

    Args:
        channels: channels of the single-scale map.
        reductions: which of 4, 8, 16, 32 to return.
    """

    def __init__(self, channels: int, reductions: tuple[int, ...] = PYRAMID_REDUCTIONS) -> None:
        super().__init__()
        bad = sorted(set(reductions) - set(PYRAMID_REDUCTIONS))
        if bad or not reductions:
            raise ValueError(f"the simple feature pyramid gives strides {PYRAMID_REDUCTIONS}, not {bad or 'none'}")
        c2, c4 = max(channels // 2, 8), max(channels // 4, 8)
        levels = {
            4: nn.Sequential(
                nn.ConvTranspose2d(channels, c2, 2, stride=2),
                nn.BatchNorm2d(c2),
                nn.GELU(),
                nn.ConvTranspose2d(c2, c4, 2, stride=2),
            ),
            8: nn.ConvTranspose2d(channels, c2, 2, stride=2),
            16: nn.Identity(),
            32: nn.MaxPool2d(2),
        }
        widths = {4: c4, 8: c2, 16: channels, 32: channels}
        self.reductions = sorted(reductions)
        self.channels = [widths[r] for r in self.reductions]
        self.levels = nn.ModuleList(levels[r] for r in self.reductions)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
        h, w = size  # the input's size
        grid = (math.ceil(h / 16), math.ceil(w / 16))
        if tuple(x.shape[-2:]) != grid:
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)  # (B, C, H/16, W/16)
        out = []
        for r, level in zip(self.reductions, self.levels):
            y = level(x)  # (B, c_r, H/r, W/r) for H a multiple of 32
            target = (math.ceil(h / r), math.ceil(w / r))
            if tuple(y.shape[-2:]) != target:
                y = F.interpolate(y, size=target, mode="bilinear", align_corners=False)
            out.append(y)
        return out


class TimmEncoder(nn.Module):
    """timm backbone returning a pyramid of NCHW feature maps, coarsest last.

    Args:
        name: any timm model name (``timm.list_models()``).
        in_chans: input channels (1 or 3; timm adapts the stem).
        output_stride: 32 (default), 16 or 8 (dilated); only passed to timm when != 32.
        weights: ``None`` (random init), ``"imagenet"`` (timm's pretrained default)
            or a path to a weights file.
        out_indices: which stages to return (timm's default: all).
        max_reduction: return only the feature maps at this reduction or finer, and build
            nothing deeper (the dilated net on encoders timm cannot dilate).

    Attributes:
        channels: output channels per returned feature map.
        reductions: spatial reduction (input size / feature size) per feature map; for an
            input whose sides are multiples of ``max(reductions)`` each map is exactly that.
        size_divisor: what the input's height and width must be multiples of (``max(reductions)``
            unless ``max_reduction`` cut the encoder short: then the whole encoder's).
        spec: the :class:`EncoderSpec` it was built from.
        pyramid: the :class:`SimpleFeaturePyramid` of a single-scale encoder, else ``None``.
    """

    def __init__(
        self,
        name: str,
        *,
        in_chans: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike | None = None,
        out_indices: tuple[int, ...] | None = None,
        max_reduction: int | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        if out_indices is not None and max_reduction is not None:
            raise ValueError("give out_indices or max_reduction, not both")
        spec = encoder_spec(name)
        kwargs: dict = {"features_only": True, "in_chans": in_chans, **dict(spec.timm_kwargs)}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if max_reduction is not None and not spec.single_scale:
            keep = tuple(i for i, r in zip(spec.out_indices, spec.reductions) if r <= max_reduction)
            if not keep:
                raise ValueError(
                    f"timm encoder {name!r} has no feature map at 1/{max_reduction} or finer (reductions {list(spec.reductions)})"
                )
            out_indices = keep
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
        except (TypeError, AssertionError) as exc:
            if output_stride != 32 and (isinstance(exc, AssertionError) or "output_stride" in str(exc) or "dilation" in str(exc)):
                raise ValueError(
                    f"timm encoder {name!r} does not support output_stride={output_stride}; "
                    "pick a ResNet/EfficientNet/ConvNeXt-style encoder for dilated models"
                ) from exc
            raise
        self.name = name
        self.in_chans = in_chans
        self.output_stride = output_stride
        self.spec = spec
        timm_reductions = list(self.model.feature_info.reduction())
        if output_stride != 32 and max(timm_reductions) != output_stride:
            raise ValueError(
                f"timm encoder {name!r} does not support output_stride={output_stride} "
                f"(it took the option but its reductions stay {timm_reductions})"
            )
        self.channels_last = spec.channels_last
        self.pyramid: SimpleFeaturePyramid | None = None
        if spec.single_scale:
            levels = tuple(r for r in PYRAMID_REDUCTIONS if max_reduction is None or r <= max_reduction)
            if not levels:
                raise ValueError(f"the pyramid of timm encoder {name!r} has no level at 1/{max_reduction} or finer")
            self.pyramid = SimpleFeaturePyramid(self.model.feature_info.channels()[-1], levels)
            self.channels: list[int] = list(self.pyramid.channels)
            self.reductions: list[int] = list(self.pyramid.reductions)
        else:
            self.channels = list(self.model.feature_info.channels())
            self.reductions = timm_reductions
        # what the input's sides must be multiples of: the whole timm model's largest reduction even when
        # fewer stages are returned (HRNet's branches, Hiera's mask units), 16 at least for a pyramid's grid
        self.size_divisor = max(16, *self.reductions) if self.pyramid is not None else max(spec.reductions)
        self._pads = spec.fixed_size is not None or spec.input_multiple != (1, 1)

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

    def _pad_input(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        fixed = self.spec.fixed_size
        if fixed is not None:
            if h > fixed[0] or w > fixed[1]:
                raise ValueError(
                    f"timm encoder {self.name!r} takes inputs up to {fixed[0]}x{fixed[1]} only (timm builds it for one "
                    f"size, its attention tables fixed; smaller inputs are padded to it): got {h}x{w} after padding; "
                    "use smaller crops or sliding windows (workbench eval --window H W)"
                )
            return _pad_to(x, fixed[0], fixed[1])
        mh, mw = self.spec.input_multiple
        return _pad_to(x, math.ceil(h / mh) * mh, math.ceil(w / mw) * mw)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: (B, in_chans, H, W) -> [(B, channels[i], H / reductions[i], W / reductions[i])]
        h, w = x.shape[-2:]
        feats = list(self.model(self._pad_input(x) if self._pads else x))
        if self.channels_last:
            feats = [f.permute(0, 3, 1, 2) for f in feats]  # (B, H, W, C) -> (B, C, H, W)
        if self.pyramid is not None:
            return self.pyramid(feats[-1], (h, w))
        if self._pads:  # crop away what the padding added
            feats = [f[..., : math.ceil(h / r), : math.ceil(w / r)] for f, r in zip(feats, self.reductions)]
        return feats
