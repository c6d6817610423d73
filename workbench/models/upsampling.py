"""Every way a decoder grows a feature map, as interchangeable modules.

All modules map ``(B, in_channels, H, W)`` to ``(B, out_channels, s*H, s*W)``
and share the signature ``forward(x, guide=None)``. ``guide`` is the encoder
feature (or input image) at the *output* resolution; only ``max_unpool`` uses
it (SegNet-style: the positions of the maxima of a ``s x s`` max-pool of the
guide). Methods that do not change channels by themselves (nearest, bilinear,
bed-of-nails, max-unpooling) get a 1x1 projection at the low resolution when
``in_channels != out_channels``.

References:
    Long, Shelhamer, Darrell 2015 (bilinear-initialised transposed convolution);
    Badrinarayanan et al. 2017, SegNet (max-unpooling with pooling indices);
    Shi et al. 2016 (pixel shuffle / sub-pixel convolution);
    Odena, Dumoulin, Olah 2016, "Deconvolution and Checkerboard Artifacts" (resize-convolution);
    Aitken et al. 2017 (ICNR initialisation, checkerboard-free pixel shuffle at init).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "METHODS",
    "UpsampleSpec",
    "parse_upsample",
    "canonical_upsample",
    "make_upsample",
    "bilinear_kernel",
    "icnr_",
    "Upsample",
]

METHODS = ("nearest", "bilinear", "transposed", "resize_conv", "pixel_shuffle", "bed_of_nails", "max_unpool")
_TRANSPOSED_INITS = ("bilinear", "default")
_SHORTHAND = re.compile(r"^transposed_k(\d+)$")


@dataclass(frozen=True)
class UpsampleSpec:
    """A parsed ``upsample=`` option.

    Attributes:
        method: one of :data:`METHODS`.
        kernel_size: transposed convolution kernel; ``None`` means ``2 * scale``
            (overlap is even, and bilinear initialisation is exact).
        init: transposed convolution initialisation: ``"bilinear"`` or ``"default"`` (PyTorch's).
    """

    method: str
    kernel_size: int | None = None
    init: str = "bilinear"

    def to_config(self) -> str | dict:
        if self.method == "transposed" and self.init != "bilinear":
            return {"method": "transposed", "kernel_size": self.kernel_size, "init": self.init}
        if self.method == "transposed" and self.kernel_size is not None:
            return f"transposed_k{self.kernel_size}"
        return self.method


def parse_upsample(spec: str | dict | UpsampleSpec) -> UpsampleSpec:
    """Parse ``"bilinear"``, ``"transposed_k3"`` or ``{"method": "transposed", "kernel_size": 3}``.

    Raises:
        ValueError: unknown method or option, listing the valid ones.
    """
    if isinstance(spec, UpsampleSpec):
        return spec
    if isinstance(spec, str):
        m = _SHORTHAND.match(spec)
        if m:
            if int(m.group(1)) < 1:
                raise ValueError(f"kernel_size must be a positive integer, got {spec!r}")
            return UpsampleSpec("transposed", kernel_size=int(m.group(1)))
        if spec not in METHODS:
            raise ValueError(
                f"unknown upsample method {spec!r}; valid choices: {', '.join(METHODS)}, "
                "or 'transposed_k<N>' for a transposed convolution with kernel N"
            )
        return UpsampleSpec(spec)
    if isinstance(spec, dict):
        opts = dict(spec)
        method = opts.pop("method", None)
        base = parse_upsample(method) if isinstance(method, str) else None
        if base is None:
            raise ValueError(f"upsample dict needs a 'method' key with one of {', '.join(METHODS)}")
        allowed = {"kernel_size", "init"} if base.method == "transposed" else set()
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ValueError(
                f"upsample method {base.method!r} has no option(s) {bad}; valid: {sorted(allowed) or 'none'}"
            )
        kernel = opts.get("kernel_size", base.kernel_size)
        init = opts.get("init", base.init)
        if init not in _TRANSPOSED_INITS:
            raise ValueError(f"transposed init must be one of {_TRANSPOSED_INITS}, got {init!r}")
        if kernel is not None and (not isinstance(kernel, int) or kernel < 1):
            raise ValueError(f"kernel_size must be a positive integer, got {kernel!r}")
        return UpsampleSpec(base.method, kernel_size=kernel, init=init)
    raise ValueError(f"upsample must be a string or a dict, got {type(spec).__name__}")


def canonical_upsample(spec: str | dict | UpsampleSpec) -> str | dict:
    """The JSON-friendly canonical form stored in checkpoint manifests."""
    return parse_upsample(spec).to_config()


def bilinear_kernel(kernel_size: int, stride: int | None = None) -> torch.Tensor:
    """2-D bilinear interpolation kernel for a transposed convolution.

    The triangle ``1 - |t| / stride`` sampled at the taps, normalised so that the
    taps landing on each output pixel sum to one (a partition of unity). For
    ``kernel_size == 2 * stride`` this is exactly FCN's ``get_upsampling_weight``;
    for ``kernel_size == stride`` it is nearest-neighbour upsampling.
    """
    s = stride if stride is not None else (kernel_size + 1) // 2
    center = (kernel_size - 1) / 2
    taps = torch.arange(kernel_size, dtype=torch.float64)
    filt = (1 - (taps - center).abs() / s).clamp(min=0)
    for phase in range(s):  # taps i, i+s, i+2s, ... land on the same output pixel
        total = filt[phase::s].sum()
        if total > 0:
            filt[phase::s] /= total
    return (filt[:, None] * filt[None, :]).float()


@torch.no_grad()
def icnr_(weight: torch.Tensor, scale: int, init=nn.init.kaiming_normal_) -> torch.Tensor:
    """ICNR: initialise a conv feeding ``PixelShuffle(scale)`` so that its output is nearest upsampling.

    Each group of ``scale**2`` output channels (the sub-pixels of one output
    channel, in PixelShuffle's ``(C, r, r)`` order) gets the same kernel.
    """
    out_ch = weight.shape[0] // (scale * scale)
    sub = torch.empty((out_ch, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    init(sub)
    weight.copy_(sub.repeat_interleave(scale * scale, dim=0))
    return weight


class Upsample(nn.Module):
    """Base class: remembers scale and channels; subclasses implement ``forward(x, guide=None)``."""

    method = ""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.scale = in_channels, out_channels, scale

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, scale={self.scale}"


def _projection(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)


class InterpolateUp(Upsample):
    """Nearest or bilinear interpolation (no parameters besides the optional 1x1 projection)."""

    def __init__(self, in_channels: int, out_channels: int, scale: int, mode: str) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.method = mode
        self.proj = _projection(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(x)
        if self.scale == 1:
            return x
        if self.method == "bilinear":
            return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


class BedOfNails(Upsample):
    """Copy each value to the top-left of its ``s x s`` block, zeros elsewhere."""

    method = "bed_of_nails"

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.proj = _projection(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(x)
        b, c, h, w = x.shape
        s = self.scale
        # (B, C, H, 1, W, 1) padded with zeros to (B, C, H, s, W, s) then folded: (B, C, sH, sW)
        out = F.pad(x[:, :, :, None, :, None], (0, s - 1, 0, 0, 0, s - 1))
        return out.reshape(b, c, h * s, w * s)


class MaxUnpool(Upsample):
    """SegNet max-unpooling: values go to the argmax positions of an ``s x s`` max-pool of ``guide``.

    When ``guide`` has ``out_channels`` channels the indices are per channel (as in
    SegNet); otherwise the positions come from the guide's channel mean and are
    shared by all channels.
    """

    method = "max_unpool"

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.proj = _projection(in_channels, out_channels)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if guide is None:
            raise ValueError("max_unpool needs guide=: the feature map at the output resolution")
        x = self.proj(x)
        s = self.scale
        with torch.no_grad():
            g = guide.detach()
            if g.shape[1] != x.shape[1]:
                g = g.mean(1, keepdim=True)
            g = g.float()
            _, idx = F.max_pool2d(g, s, stride=s, return_indices=True)  # (B, Cg, H, W)
            if idx.shape[1] != x.shape[1]:
                idx = idx.expand(-1, x.shape[1], -1, -1)
        if idx.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"max_unpool guide {tuple(guide.shape)} is not {s}x the size of the input {tuple(x.shape)}")
        # max_unpool2d has no reduced-precision CPU kernel everywhere: run it in x's dtype via scatter
        b, c, h, w = x.shape
        out = x.new_zeros(b, c, guide.shape[-2] * guide.shape[-1])
        out = out.scatter(2, idx.reshape(b, c, h * w), x.reshape(b, c, h * w))
        return out.reshape(b, c, guide.shape[-2], guide.shape[-1])


class TransposedUp(Upsample):
    """Learned transposed convolution, stride = scale.

    Kernel ``k`` must be at least the stride. Padding and output padding are set
    so the output is exactly ``s*H``. With ``init="bilinear"`` the kernel starts as
    bilinear interpolation on the channel diagonal (Long et al.).
    """

    method = "transposed"

    def __init__(self, in_channels: int, out_channels: int, scale: int, kernel_size: int | None = None, init: str = "bilinear") -> None:
        super().__init__(in_channels, out_channels, scale)
        k = 2 * scale if kernel_size is None else kernel_size
        if k < scale:
            raise ValueError(f"transposed kernel_size {k} must be >= the stride {scale}")
        pad = math.ceil((k - scale) / 2)
        out_pad = scale - k + 2 * pad
        self.kernel_size = k
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, k, stride=scale, padding=pad, output_padding=out_pad)
        if init == "bilinear":
            with torch.no_grad():
                self.conv.weight.zero_()
                kern = bilinear_kernel(k, scale)
                for i in range(min(in_channels, out_channels)):
                    self.conv.weight[i, i] = kern
                self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kernel_size={self.kernel_size}"


class ResizeConv(Upsample):
    """Nearest resize then a 3x3 convolution (Odena et al. 2016): no checkerboard by construction."""

    method = "resize_conv"

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class PixelShuffleUp(Upsample):
    """Sub-pixel convolution: 3x3 conv to ``out * s^2`` channels, then ``PixelShuffle(s)``; ICNR init."""

    method = "pixel_shuffle"

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__(in_channels, out_channels, scale)
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, 3, padding=1)
        icnr_(self.conv.weight, scale)
        with torch.no_grad():
            bias = torch.empty(out_channels).uniform_(-1, 1) / math.sqrt(in_channels * 9)
            self.conv.bias.copy_(bias.repeat_interleave(scale * scale))
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def make_upsample(spec: str | dict | UpsampleSpec, in_channels: int, out_channels: int | None = None, scale: int = 2) -> Upsample:
    """Build the upsampling module for ``spec`` (see :func:`parse_upsample`).

    Args:
        spec: method name, ``"transposed_k<N>"`` or a dict.
        in_channels: channels of the low-resolution input.
        out_channels: channels of the output (default: ``in_channels``).
        scale: integer upsampling factor (>= 1; 1 returns a projection only).
    """
    spec = parse_upsample(spec)
    out_channels = in_channels if out_channels is None else out_channels
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    m = spec.method
    if scale == 1:  # nothing to grow: a projection only, whatever the method
        return InterpolateUp(in_channels, out_channels, 1, "nearest")
    if m in ("nearest", "bilinear"):
        return InterpolateUp(in_channels, out_channels, scale, m)
    if m == "bed_of_nails":
        return BedOfNails(in_channels, out_channels, scale)
    if m == "max_unpool":
        return MaxUnpool(in_channels, out_channels, scale)
    if m == "transposed":
        return TransposedUp(in_channels, out_channels, scale, spec.kernel_size, spec.init)
    if m == "resize_conv":
        return ResizeConv(in_channels, out_channels, scale)
    if m == "pixel_shuffle":
        return PixelShuffleUp(in_channels, out_channels, scale)
    raise AssertionError(m)  # parse_upsample already validated
