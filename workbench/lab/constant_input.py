"""Which upsampling methods make a pattern out of nothing: the U-Net decoder at random initialisation
fed constant encoder features (:func:`constant_input_artifacts`, :func:`constant_input_gallery`).

References:
    Odena, Dumoulin, Olah. "Deconvolution and Checkerboard Artifacts". Distill 2016;
    Aitken et al. "Checkerboard artifact free sub-pixel convolution". arXiv:1707.02937, 2017 (ICNR).
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.decoders import DEFAULT_DECODER_CHANNELS, UNetDecoder
from ..viz import heatmap
from .scores import checkerboard_score

__all__ = ["CONSTANT_INPUT_METHODS", "constant_input_artifacts", "constant_input_gallery"]


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

    The decoder is :class:`~workbench.models.decoders.UNetDecoder` (what ``unet`` builds) for
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

