"""Image-quality scores of the upsampling lab: PSNR, SSIM and the checkerboard score.

Pure functions, numpy (or torch) in, a float out. :func:`checkerboard_score` measures the share of a
map's energy in a pattern that repeats every ``stride`` pixels, for any image, logits or probability
map; the app's Compare cards show it for every network's logits.

References:
    Wang, Bovik, Sheikh, Simoncelli. "Image Quality Assessment: From Error Visibility to Structural
        Similarity". IEEE TIP 2004 (SSIM).
    Odena, Dumoulin, Olah. "Deconvolution and Checkerboard Artifacts". Distill 2016.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import correlate1d

__all__ = ["psnr", "ssim", "checkerboard_score"]


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

