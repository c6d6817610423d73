"""The upsampling lab's operator comparison: every way to grow a feature map back to full resolution.

:func:`reduce_and_restore` shrinks an image by a factor and grows it back with one operator;
:func:`compare_operators` does it for all of them and scores each against the original
(:mod:`.scores`: PSNR, SSIM, checkerboard score). Every operator is the workbench's own module from
:mod:`workbench.models.upsampling`. The rest of the lab: :mod:`.overlap` (tap counts),
:mod:`.constant_input` (patterns out of nothing), :mod:`.trained` (the trained U-Net variants).

References:
    Odena, Dumoulin, Olah. "Deconvolution and Checkerboard Artifacts". Distill 2016
        (uneven overlap, resize-convolution);
    Aitken et al. "Checkerboard artifact free sub-pixel convolution". arXiv:1707.02937, 2017 (ICNR);
    Shi et al. "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
        Convolutional Neural Network". CVPR 2016 (pixel shuffle);
    Badrinarayanan, Kendall, Cipolla. "SegNet". TPAMI 2017 (max-unpooling with pooling indices);
    Long, Shelhamer, Darrell. "Fully Convolutional Networks for Semantic Segmentation". CVPR 2015
        (bilinear-initialised transposed convolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.upsampling import Upsample, icnr_, make_upsample
from .scores import checkerboard_score, psnr, ssim

__all__ = ["Operator", "OPERATORS", "reduce_image", "reduce_and_restore", "compare_operators"]


@dataclass(frozen=True)
class Operator:
    """One way to grow an image by 2 in the operator comparison.

    Attributes:
        name: key used by :func:`reduce_and_restore`.
        title: short label for captions.
        setup: how the operator is built and, for learned ones, initialised (shown in the app).
        learned: whether the operator has weights (a layer a decoder would train).
    """

    name: str
    title: str
    setup: str
    learned: bool


# The learned operators are 1-channel layers applied to each colour channel separately
# (depthwise): a 3->3 layer at initialisation would mix colours arbitrarily, while what
# we compare is the spatial structure each operator imposes. Their weights are set by
# hand to the initialisation that shows that structure (see ``setup``).
OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator("nearest", "nearest", "copy each pixel into its 2x2 block (exact)", False),
        Operator("bilinear", "bilinear", "bilinear interpolation, align_corners=False (exact)", False),
        Operator("bed_of_nails", "bed-of-nails", "each pixel to the top-left of its 2x2 block, zeros elsewhere (exact)", False),
        Operator("max_unpool", "max-unpooling", "each maximum back where the 2x2 max-pool found it, zeros elsewhere, per channel (SegNet; exact)", False),
        Operator("transposed_k4", "transposed k4 s2 (bilinear init)", "kernel 4, stride 2, bilinear initialisation (FCN, U-Net here): bilinear inside, a darker 1-pixel frame from the zero padding", True),
        Operator("transposed_k3", "transposed k3 s2 (bilinear init)", "kernel 3, stride 2, initialised with bilinear_kernel(3, 2) = [1/2, 1, 1/2]: linear interpolation, shifted by half an output pixel", True),
        Operator("transposed_k4_uniform", "transposed k4 s2 (equal taps)", "kernel 4, stride 2, all 16 taps equal (1/4): every output pixel gets 2x2 taps, so even a flat kernel gives no checkerboard", True),
        Operator("transposed_k3_uniform", "transposed k3 s2 (equal taps)", "kernel 3, stride 2, all 9 taps equal (4/9): output pixels get 1x1, 1x2 or 2x2 taps, the uneven overlap of Odena et al. made visible", True),
        Operator("resize_conv", "resize-conv", "nearest x2, then a 3x3 conv set to the [1,2,1]/4 tent: exactly bilinear inside (Odena et al.)", True),
        Operator("pixel_shuffle", "pixel shuffle (ICNR)", "3x3 conv to 4 sub-pixel channels + PixelShuffle(2), ICNR with the identity as the shared kernel: exactly nearest", True),
    )
}


def _centre_tap_(weight: torch.Tensor) -> torch.Tensor:
    """Identity kernel: 1 at the centre tap on the channel diagonal, 0 elsewhere."""
    with torch.no_grad():
        weight.zero_()
        k = weight.shape[-1] // 2
        for i in range(min(weight.shape[0], weight.shape[1])):
            weight[i, i, k, k] = 1.0
    return weight


@torch.no_grad()
def _operator(name: str) -> Upsample:
    """The 1 -> 1 channel, scale-2 module for operator ``name``, weights set as ``OPERATORS[name].setup`` says."""
    if name not in OPERATORS:
        raise ValueError(f"unknown operator {name!r}; valid: {', '.join(OPERATORS)}")
    if name in ("nearest", "bilinear", "bed_of_nails", "max_unpool", "transposed_k4", "transposed_k3"):
        return make_upsample(name, 1, 1, 2)  # the transposed ones come bilinear-initialised
    if name.startswith("transposed_k"):  # equal taps, normalised so the mean gain is 1
        k = int(name[len("transposed_k")])
        up = make_upsample({"method": "transposed", "kernel_size": k, "init": "default"}, 1, 1, 2)
        up.conv.weight.fill_((2 / k) ** 2)
        up.conv.bias.zero_()
        return up
    if name == "resize_conv":
        up = make_upsample("resize_conv", 1, 1, 2)
        tent = torch.tensor([0.25, 0.5, 0.25])
        up.conv.weight.copy_(torch.outer(tent, tent)[None, None])
        up.conv.bias.zero_()
        return up
    assert name == "pixel_shuffle", name
    up = make_upsample("pixel_shuffle", 1, 1, 2)
    icnr_(up.conv.weight, 2, init=_centre_tap_)
    up.conv.bias.zero_()
    return up


def _check_factor(factor: int) -> int:
    f = int(factor)
    if f < 2 or f & (f - 1) or f != factor:
        raise ValueError(f"factor must be a power of two >= 2 (2, 4, 8, ...), got {factor!r}")
    return f


def _as_float_batch(image: np.ndarray, factor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W[, C]) uint8 -> (1, C, H', W') float32 with H', W' padded (edge) to multiples of ``factor``."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    h, w = arr.shape[:2]
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        arr = np.pad(arr, ((0, ph), (0, pw), (0, 0)), mode="edge")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, C, H', W')
    return t, (h, w)


def _to_image(t: torch.Tensor, size: tuple[int, int], squeeze: bool) -> np.ndarray:
    h, w = size
    arr = t[0, :, :h, :w].permute(1, 2, 0).numpy()
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr[..., 0] if squeeze else arr


def reduce_image(image: np.ndarray, factor: int) -> np.ndarray:
    """The image averaged over ``factor x factor`` blocks (area reduction), as uint8.

    The size is first padded (edge pixels repeated) to a multiple of ``factor``.
    """
    f = _check_factor(factor)
    x, (h, w) = _as_float_batch(image, f)
    small = F.avg_pool2d(x, f)  # (1, C, H'/f, W'/f)
    return _to_image(small, (math.ceil(h / f), math.ceil(w / f)), np.asarray(image).ndim == 2)


@torch.no_grad()
def reduce_and_restore(image: np.ndarray, factor: int, method: str) -> np.ndarray:
    """Shrink ``image`` by ``factor`` and grow it back with operator ``method``.

    Reduction: the mean of each ``factor x factor`` block (for ``max_unpool``: the
    maximum, remembering where it was, per channel, as SegNet's encoder does).
    Restoration: the scale-2 operator applied ``log2(factor)`` times, as a decoder
    does stage by stage (for ``max_unpool`` each stage uses the positions of the
    matching max-pool stage). Learned operators are the workbench's modules with
    one input and one output channel, applied to each colour channel separately,
    with the weights :data:`OPERATORS` describes.

    Args:
        image: (H, W, 3) or (H, W) uint8.
        factor: 2, 4, 8, ... (a power of two).
        method: a key of :data:`OPERATORS`.

    Returns:
        uint8 array of the same shape as ``image`` (sizes that are not multiples of
        ``factor`` are edge-padded before and cropped after).
    """
    f = _check_factor(factor)
    up = _operator(method)
    x, size = _as_float_batch(image, f)  # (1, C, H, W)
    x = x.transpose(0, 1)  # (C, 1, H, W): every channel its own batch item, so the 1-channel layer is depthwise
    stages = int(math.log2(f))
    if method == "max_unpool":
        pyramid = [x]
        for _ in range(stages):
            pyramid.append(F.max_pool2d(pyramid[-1], 2))  # (C, 1, H/2^i, W/2^i)
        y = pyramid[-1]
        for guide in reversed(pyramid[:-1]):
            y = up(y, guide=guide)  # maxima back to the argmax positions of this max-pool stage
    else:
        y = F.avg_pool2d(x, f)  # (C, 1, H/f, W/f)
        for _ in range(stages):
            y = up(y)  # (C, 1, 2h, 2w)
    return _to_image(y.transpose(0, 1), size, np.asarray(image).ndim == 2)


def compare_operators(image: np.ndarray, factor: int, methods=None) -> list[dict]:
    """:func:`reduce_and_restore` with every operator, scored against the original.

    Returns:
        One dict per operator: ``name``, ``title``, ``setup``, ``image`` (uint8, the
        original's shape), ``psnr`` (dB, inf when identical), ``ssim`` and
        ``checkerboard`` (:func:`checkerboard_score` with stride ``factor``, so the
        periods of every stage count).
    """
    arr = np.asarray(image)
    rows = []
    for name in methods or OPERATORS:
        op = OPERATORS[name]
        out = reduce_and_restore(arr, factor, name)
        chw = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
        rows.append(
            {
                "name": name,
                "title": op.title,
                "setup": op.setup,
                "image": out,
                "psnr": psnr(out, arr),
                "ssim": ssim(out, arr),
                "checkerboard": checkerboard_score(chw.astype(np.float32), factor) if min(arr.shape[:2]) >= factor else 0.0,
            }
        )
    return rows

