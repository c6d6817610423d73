"""The upsampling lab: every way to grow a feature map back to full resolution, compared and explained.

Small pure functions (numpy or torch in, numpy or dicts out) behind the app's
Upsampling tab; every operator is the workbench's own module from
:mod:`workbench.upsampling`.

- :func:`reduce_and_restore` shrinks an image by a factor and grows it back with one operator;
  :func:`compare_operators` does it for all of them and scores each against the original
  (:func:`psnr`, :func:`ssim`, :func:`checkerboard_score`).
- :func:`overlap_map_1d` / :func:`overlap_map_2d` count how many kernel taps land on each output
  pixel (uneven for a transposed convolution whose kernel is not divisible by its stride), and
  :func:`overlap_figure` draws them.
- :func:`checkerboard_score` measures the share of a map's energy in a pattern that repeats every
  ``stride`` pixels, for any image, logits or probability map.
- :func:`constant_input_artifacts` feeds the U-Net decoder at random initialisation a constant
  input: which upsampling methods make a pattern out of nothing.

References:
    Odena, Dumoulin, Olah. "Deconvolution and Checkerboard Artifacts". Distill 2016
        (uneven overlap, resize-convolution);
    Aitken et al. "Checkerboard artifact free sub-pixel convolution". arXiv:1707.02937, 2017 (ICNR);
    Shi et al. "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
        Convolutional Neural Network". CVPR 2016 (pixel shuffle);
    Badrinarayanan, Kendall, Cipolla. "SegNet". TPAMI 2017 (max-unpooling with pooling indices);
    Long, Shelhamer, Darrell. "Fully Convolutional Networks for Semantic Segmentation". CVPR 2015
        (bilinear-initialised transposed convolution);
    Wang, Bovik, Sheikh, Simoncelli. "Image Quality Assessment: From Error Visibility to Structural
        Similarity". IEEE TIP 2004 (SSIM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.decoders import DEFAULT_DECODER_CHANNELS, UNetDecoder
from ..models.upsampling import Upsample, icnr_, make_upsample

__all__ = [
    "OPERATORS",
    "TRAINED_METHODS",
    "CONSTANT_INPUT_METHODS",
    "reduce_image",
    "reduce_and_restore",
    "compare_operators",
    "psnr",
    "ssim",
    "checkerboard_score",
    "overlap_map_1d",
    "overlap_map_2d",
    "overlap_figure",
    "constant_input_artifacts",
    "constant_input_gallery",
    "variant_checkpoints",
    "variant_table",
]


# ----------------------------------------------------------------------------- operators


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

# The upsampling methods of the trained U-Net variants (``--upsample`` values).
TRAINED_METHODS = ("nearest", "bilinear", "transposed_k3", "transposed_k4", "resize_conv", "pixel_shuffle", "bed_of_nails", "max_unpool")


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


# ----------------------------------------------------------------------------- image quality


def psnr(restored: np.ndarray, original: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` over all pixels and channels.

    Returns ``math.inf`` for identical images.
    """
    a, b = np.asarray(restored, np.float64), np.asarray(original, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(restored: np.ndarray, original: np.ndarray, data_range: float = 255.0, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004), mean over pixels and channels.

    The standard definition: an 11x11 Gaussian window with sigma 1.5, ``K1 = 0.01``,
    ``K2 = 0.03``, local statistics without the sample-size correction; the map is
    averaged over every pixel, the window mirrored at the borders (``d c b | a b c d``).
    That is exactly what torchmetrics' ``structural_similarity_index_measure`` computes
    (tested); Wang et al.'s MATLAB code averages over the window positions inside the
    image only, which differs in the 5-pixel frame. Images smaller than the window are
    compared with the largest odd window they hold.
    """
    from scipy.ndimage import correlate1d

    a, b = np.asarray(restored, np.float64), np.asarray(original, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    size = min(window, *(s - (1 - s % 2) for s in a.shape[:2]))  # an odd window that fits
    g = _gaussian_window(size, sigma)

    def blur(z: np.ndarray) -> np.ndarray:  # (H, W, C) Gaussian-weighted local means
        return correlate1d(correlate1d(z, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a**2, 0.0)
    var_b = np.maximum(blur(b * b) - mu_b**2, 0.0)
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


# ----------------------------------------------------------------------------- checkerboard score


def checkerboard_score(x: np.ndarray | torch.Tensor, stride: int = 2) -> float:
    """Share of a map's energy at the frequencies of a pattern that repeats every ``stride`` pixels.

    Definition: crop the map (top-left) to a multiple of ``stride`` in both axes,
    ``(h, w)``; per channel subtract the mean and take the 2-D DFT power
    ``P_c(u, v) = |FFT2(x_c)|^2``. A pattern with period ``stride`` in both axes puts
    all its energy on the lattice ``u in {0, h/s, ..., (s-1)h/s}``,
    ``v in {0, w/s, ..., (s-1)w/s}`` (frequencies ``k/s`` of the sampling frequency,
    ``k = 0..s-1``, in either axis; for ``s = 2``: (pi, 0), (0, pi) and (pi, pi)). Then

        score = sum_c sum_{(u,v) on the lattice} P_c(u, v) / sum_c sum_{all (u,v)} P_c(u, v)

    By Parseval this equals ``||p||^2 / ||x - mean||^2`` (summed over channels) where
    ``p`` is the periodic component: each pixel replaced by the mean of all pixels with
    the same position modulo ``stride`` (its phase). That is how it is computed here:
    the same number as the FFT (tested), in one pass per channel and without a complex
    copy of the map. 1 for a pure period-``stride`` pattern such as a +-1
    checkerboard, near 0 for smooth maps, 0 for a constant map (no energy at all; also
    when the fluctuations are below float32 rounding, 1e-9 of the map's energy).

    Args:
        x: (H, W) map or (C, H, W) maps (logits, probabilities, an image as (C, H, W)).
        stride: the period to look for (2 for a stride-2 upsampling's checkerboard;
            ``s`` also catches the periods that divide ``s``).

    Returns:
        A float in [0, 1].
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (C, H, W) map, got shape {a.shape}")
    s = int(stride)
    if s < 2 or s != stride:
        raise ValueError(f"stride must be an integer >= 2, got {stride!r}")
    h, w = a.shape[1] - a.shape[1] % s, a.shape[2] - a.shape[2] % s
    if h == 0 or w == 0:
        raise ValueError(f"the map {a.shape[1:]} is smaller than the stride {s}")
    if not a.flags.c_contiguous:  # e.g. channels-last logits: one whole-array copy beats a strided copy per channel 3x
        a = np.ascontiguousarray(a)
    raw = fluct = lattice = 0.0
    n = h * w
    per_phase = n // (s * s)
    for channel in a:  # one (h, w) channel at a time
        c = np.ascontiguousarray(channel[:h, :w], dtype=np.float32)
        phase_sums = c.reshape(h // s, s, w // s, s).sum(axis=0).sum(axis=1, dtype=np.float64)  # (s, s): sum of c[p::s, q::s]
        mean = float(phase_sums.sum()) / n
        flat = c.ravel()
        sq = float(np.dot(flat, flat))  # BLAS, float32 accumulation: relative error ~1e-6
        spread = sq - n * mean * mean  # sum of (c - mean)^2 ...
        if n * mean * mean > 16.0 * max(spread, 0.0):  # ... unless the mean dominates (cancellation): centre first
            d = flat - np.float32(mean)
            spread = float(np.dot(d, d))
        raw += sq
        fluct += max(0.0, spread)
        phase_means = phase_sums / per_phase - mean
        lattice += per_phase * float(np.square(phase_means).sum())
    if fluct == 0.0 or fluct <= 1e-9 * raw or lattice == 0.0:
        return 0.0
    return float(min(1.0, lattice / fluct))


# ----------------------------------------------------------------------------- overlap maps

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


# ----------------------------------------------------------------------------- constant input

# label -> (upsample spec for the decoder, re-initialisation after building or None)
CONSTANT_INPUT_METHODS: dict[str, tuple] = {
    "nearest": ("nearest", None),
    "bilinear": ("bilinear", None),
    "transposed k3 s2 (default init)": ({"method": "transposed", "kernel_size": 3, "init": "default"}, None),
    "transposed k4 s2 (default init)": ({"method": "transposed", "kernel_size": 4, "init": "default"}, None),
    "transposed k3 s2 (bilinear init)": ("transposed_k3", None),
    "transposed k4 s2 (bilinear init)": ("transposed_k4", None),
    "resize-conv": ("resize_conv", None),
    "pixel shuffle (ICNR)": ("pixel_shuffle", None),
    "pixel shuffle (default init, no ICNR)": ("pixel_shuffle", "reset"),
    "bed-of-nails": ("bed_of_nails", None),
    "max-unpooling": ("max_unpool", None),
}

# The pyramid of the default encoder (resnet10t): channels and reductions of its five stages.
RESNET10T_CHANNELS = (64, 64, 128, 256, 512)
RESNET10T_REDUCTIONS = (2, 4, 8, 16, 32)


@torch.no_grad()
def constant_input_artifacts(
    method: str,
    *,
    seed: int = 0,
    size: int = 320,
    crop: int = 64,
    channels=RESNET10T_CHANNELS,
    reductions=RESNET10T_REDUCTIONS,
    decoder_channels=DEFAULT_DECODER_CHANNELS,
    stride: int = 2,
) -> dict:
    """The U-Net decoder with ``method`` at random initialisation, fed constant encoder features.

    The decoder is :class:`~workbench.decoders.UNetDecoder` (what ``unet`` builds) for
    the given encoder pyramid (default: resnet10t's), created after
    ``torch.manual_seed(seed)`` and run in eval mode. Every encoder feature map is
    spatially constant (a per-channel value drawn uniformly from [0, 1), like
    post-ReLU features) and the full-resolution image skip is constant too, so any
    spatial pattern in the output comes from the decoder itself. The zero padding of
    the convolutions disturbs the borders (by up to about 125 pixels with five stages),
    so the score is computed on a central ``crop x crop`` window aligned to the
    coarsest grid (at least 128 pixels from the borders with the defaults), where
    the output is exactly periodic.

    Args:
        method: a key of :data:`CONSTANT_INPUT_METHODS`, or any ``upsample=`` spec.

    Returns:
        ``{"label", "output": (C, crop, crop) float32 decoder output in the window,
        "score": checkerboard_score(output, stride), "spread": the largest max - min of a channel}``.
    """
    spec, reinit = CONSTANT_INPUT_METHODS.get(method, (method, None))
    torch.manual_seed(seed)
    dec = UNetDecoder(list(channels), list(reductions), 3, spec, decoder_channels).eval()
    if reinit == "reset":  # PyTorch's default init instead of ICNR for every pixel-shuffle conv
        for m in dec.modules():
            if getattr(m, "method", "") == "pixel_shuffle":
                m.conv.reset_parameters()
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.rand(1, c, 1, 1, generator=gen).expand(1, c, size // r, size // r).contiguous() for c, r in zip(channels, reductions)]
    image = torch.full((1, 3, size, size), 0.5)
    out = dec(feats, image)[0]  # (C, size, size)
    grid = max(reductions)
    start = max(0, (size // 2 - crop // 2) // grid * grid)
    win = out[:, start : start + crop, start : start + crop].float()
    return {
        "label": method,
        "output": win.numpy(),
        "score": checkerboard_score(win, stride),
        "spread": float((win.amax(dim=(1, 2)) - win.amin(dim=(1, 2))).max()),
    }


def _display(win: np.ndarray, zoom: int = 4) -> np.ndarray:
    """The channel with the largest variance, stretched to its own range, enlarged without smoothing."""
    from ..viz import heatmap

    ch = win[int(np.argmax(win.reshape(len(win), -1).var(1)))]
    lo, hi = float(ch.min()), float(ch.max())
    img = heatmap(ch, lo, hi) if hi - lo > 1e-6 * max(1.0, abs(hi)) else heatmap(np.zeros_like(ch))
    return np.repeat(np.repeat(img, zoom, 0), zoom, 1)


def constant_input_gallery(seed: int = 0, methods=None, **kwargs) -> list[dict]:
    """:func:`constant_input_artifacts` for every method, plus a display image (``"image"``)."""
    out = []
    for label in methods or CONSTANT_INPUT_METHODS:
        res = constant_input_artifacts(label, seed=seed, **kwargs)
        res["image"] = _display(res["output"])
        out.append(res)
    return out


# ----------------------------------------------------------------------------- operator comparison


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


# ----------------------------------------------------------------------------- trained variants


def variant_checkpoints(folder=None) -> dict[str, Path]:
    """The trained U-Net upsampling variants: ``{method: manifest path}`` in :data:`TRAINED_METHODS` order.

    A variant is a checkpoint whose manifest says ``"upsampling_lab": true``
    (``scripts/train_upsampling.sh publish`` writes them as
    ``checkpoints/upsampling_unet_<method>``); the method is the model's ``upsample`` kwarg.
    Unreadable manifests are skipped.
    """
    from ..io.checkpoint import CheckpointError, read_manifest
    from ..paths import checkpoints_dir
    from ..models.upsampling import canonical_upsample

    folder = checkpoints_dir() if folder is None else Path(folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            man = read_manifest(path)
        except CheckpointError:
            continue
        if not man.get("upsampling_lab"):
            continue
        up = (man.get("kwargs") or {}).get("upsample")
        try:
            method = canonical_upsample(up) if up is not None else path.stem.removeprefix("upsampling_unet_")
        except ValueError:
            method = path.stem.removeprefix("upsampling_unet_")
        found.setdefault(method if isinstance(method, str) else path.stem, path)
    order = {m: i for i, m in enumerate(TRAINED_METHODS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def variant_table(checkpoints: list, images: list, *, device: str = "auto", stride: int = 2) -> list[dict]:
    """Test mIoU and CPU latency from each manifest, and the mean checkerboard score of its
    probability maps over ``images`` (paths or arrays), one dict per checkpoint."""
    from ..io.checkpoint import read_manifest
    from ..inference.predictor import Predictor
    from ..models.upsampling import canonical_upsample

    rows = []
    for path in checkpoints:
        man = read_manifest(path)
        pred = Predictor(path, device)
        scores = [checkerboard_score(pred.predict(im).probs_work, stride) for im in images]
        up = (man.get("kwargs") or {}).get("upsample")
        rows.append(
            {
                "name": Path(path).stem,
                "method": canonical_upsample(up) if up is not None else "?",
                "miou": ((man.get("metrics") or {}).get("test") or {}).get("miou"),
                "checkerboard": float(np.mean(scores)) if scores else None,
                "cpu_latency_ms": (man.get("cost") or {}).get("cpu_latency_ms"),
                "num_parameters": man.get("num_parameters"),
            }
        )
    return rows


def variant_markdown(rows: list[dict], n_images: int) -> str:
    """The trained-variant table as Markdown."""

    def fmt(v, pattern):
        return "-" if v is None else pattern.format(v)

    lines = [
        f"| variant | upsample | test mIoU | checkerboard score (mean of {n_images} test images, stride 2) | CPU latency 360x480 (ms) | params (M) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['method']}` | {fmt(r['miou'] and 100 * r['miou'], '{:.1f}')} | {fmt(r['checkerboard'], '{:.2e}')} "
            f"| {fmt(r['cpu_latency_ms'], '{:.0f}')} | {fmt(r['num_parameters'] and r['num_parameters'] / 1e6, '{:.2f}')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.lab table [CHECKPOINT ...] --images N --out FILE``: the trained-variant table."""
    import argparse

    from ..paths import resolve_data_root

    p = argparse.ArgumentParser(prog="python -m workbench.lab", description="Upsampling lab: the trained-variant table.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="test mIoU, checkerboard score and latency of the trained U-Net upsampling variants")
    t.add_argument("checkpoints", nargs="*", help="manifests (default: every upsampling_lab checkpoint in checkpoints/)")
    t.add_argument("--images", type=int, default=20, help="CamVid test images to average the checkerboard score over (default 20)")
    t.add_argument("--data-root", default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    ckpts = [Path(c) for c in args.checkpoints] or list(variant_checkpoints().values())
    if not ckpts:
        print("error: no upsampling-lab checkpoints found (scripts/train_upsampling.sh publish writes them)")
        return 2
    folder = resolve_data_root(args.data_root) / "camvid" / "test"
    files = sorted(folder.glob("*.png"))
    step = max(1, len(files) // max(args.images, 1))
    images = [str(f) for f in files[::step][: args.images]]
    if not images:
        print(f"warning: no CamVid test images under {folder}: checkerboard scores left empty")
    text = variant_markdown(variant_table(ckpts, images, device=args.device), len(images))
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
