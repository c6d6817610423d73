"""How many kernel taps land on each output pixel: the uneven overlap of a transposed convolution.

:func:`overlap_map_1d` / :func:`overlap_map_2d` count the taps per output pixel of the workbench's own
modules (uneven for a transposed convolution whose kernel is not divisible by its stride; even for
resize-convolution and ICNR pixel shuffle), and :func:`overlap_figure` draws them.

Reference: Odena, Dumoulin, Olah. "Deconvolution and Checkerboard Artifacts". Distill 2016.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..models.upsampling import make_upsample

__all__ = ["OVERLAP_METHODS", "overlap_map_1d", "overlap_map_2d", "overlap_figure"]


OVERLAP_METHODS = ("transposed", "resize_conv", "pixel_shuffle")


def _transposed_geometry(kernel: int, stride: int) -> tuple[int, int]:
    """Padding and output padding of the workbench's TransposedUp for this kernel and stride."""
    up = make_upsample({"method": "transposed", "kernel_size": int(kernel), "init": "default"}, 1, 1, int(stride))
    return up.conv.padding[0], up.conv.output_padding[0]


def _check_overlap_args(kernel: int | None, stride: int, method: str) -> None:
    if method not in OVERLAP_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(OVERLAP_METHODS)}")
    if int(stride) < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if method != "transposed" and kernel not in (None, 3):
        raise ValueError(f"{method} uses the workbench's 3x3 convolution; pass kernel=None or 3, got {kernel!r}")
    if method == "transposed" and (kernel is None or int(kernel) < 1):
        raise ValueError(f"a transposed convolution needs a positive kernel size, got {kernel!r}")


@torch.no_grad()
def overlap_map_1d(kernel: int | None, stride: int, length: int = 12, method: str = "transposed") -> np.ndarray:
    """How many kernel taps land on each output pixel, along one axis, away from the borders.

    ``transposed``: an all-ones 1-D transposed convolution with the workbench
    TransposedUp's padding and output padding, run on an all-ones input, interior
    cropped so index 0 is the first output pixel of an input pixel's block (a
    position divisible by ``stride``). ``resize_conv`` and ``pixel_shuffle``: the
    same count for their 3-tap convolution (even: 3 everywhere).

    Returns:
        (length,) int array.
    """
    _check_overlap_args(kernel, stride, method)
    s = int(stride)
    k = int(kernel) if kernel is not None else 3
    border = math.ceil(k / s) + 1  # input pixels whose outputs still see the edge
    n = math.ceil(length / s) + 2 * border
    x = torch.ones(1, 1, n)
    if method == "transposed":
        pad, out_pad = _transposed_geometry(k, s)
        y = F.conv_transpose1d(x, torch.ones(1, 1, k), stride=s, padding=pad, output_padding=out_pad)
    elif method == "resize_conv":
        y = F.conv1d(F.interpolate(x, scale_factor=s, mode="nearest"), torch.ones(1, 1, 3), padding=1)
    else:  # 1-D sub-pixel convolution: s output channels, interleaved
        z = F.conv1d(x, torch.ones(s, 1, 3), padding=1)  # (1, s, n)
        y = z.transpose(1, 2).reshape(1, 1, n * s)
    start = s * border
    return np.rint(y[0, 0, start : start + length].numpy()).astype(np.int64)


@torch.no_grad()
def overlap_map_2d(kernel: int | None, stride: int, size: int = 12, method: str = "transposed") -> np.ndarray:
    """How many kernel taps land on each output pixel of the workbench's own 2-D module, away from the borders.

    The module (``make_upsample``: TransposedUp with kernel ``kernel``, ResizeConv or
    PixelShuffleUp; scale ``stride``; one channel) gets all-ones weights, zero bias
    and an all-ones input; the output is cropped as in :func:`overlap_map_1d`. For a
    square kernel this is the outer product of the 1-D map.

    Returns:
        (size, size) int array.
    """
    _check_overlap_args(kernel, stride, method)
    s = int(stride)
    k = int(kernel) if kernel is not None else 3
    spec = {"method": "transposed", "kernel_size": k, "init": "default"} if method == "transposed" else method
    up = make_upsample(spec, 1, 1, s)
    for name, p in up.named_parameters():
        p.fill_(0.0 if name.endswith("bias") else 1.0)
    border = math.ceil(k / s) + 1
    n = math.ceil(size / s) + 2 * border
    y = up(torch.ones(1, 1, n, n))
    start = s * border
    return np.rint(y[0, 0, start : start + size, start : start + size].numpy()).astype(np.int64)


def overlap_figure(kernel: int, stride: int, size: int | None = None):
    """A matplotlib Figure (Agg): 1-D bars and 2-D maps of the tap counts for a transposed
    convolution (``kernel``, ``stride``), resize-convolution and ICNR pixel shuffle."""
    s = int(stride)
    size = size or 4 * s
    panels = [
        (f"transposed conv k{kernel} s{s}", "transposed", kernel),
        (f"resize-conv (nearest x{s} + 3x3)", "resize_conv", None),
        (f"pixel shuffle x{s} (3x3, ICNR)", "pixel_shuffle", None),
    ]
    fig = Figure(figsize=(10.5, 6.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, gridspec_kw={"height_ratios": [1, 2]})
    for col, (title, method, k) in enumerate(panels):
        one = overlap_map_1d(k, s, size, method)
        two = overlap_map_2d(k, s, size, method)
        even = one.min() == one.max()
        ax = axes[0, col]
        ax.bar(np.arange(size), one, color="#2b8a3e" if even else "#c92a2a")
        ax.set_ylim(0, max(one.max(), 1) * 1.25)
        ax.set_title(f"{title}\n{'even' if even else 'uneven'}: {one.min()}..{one.max()} taps", fontsize=9)
        ax.set_xlabel("output pixel (1-D)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax = axes[1, col]
        ax.imshow(two, cmap="viridis", vmin=0, vmax=max(two.max(), 1))
        if size <= 16:
            for (i, j), v in np.ndenumerate(two):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v < 0.6 * two.max() else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"2-D: {two.min()}..{two.max()} taps per pixel", fontsize=9)
    fig.tight_layout()
    return fig

