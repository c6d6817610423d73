"""Test-time augmentation and sliding windows: softmax probabilities of one image, as ``workbench eval`` computes them.

* ``flip``: average the softmax probabilities of the image and of its
  horizontal mirror (mirrored back).
* ``window=(h, w)``: sliding-window inference for images larger than the window
  (in either dimension): tiles of ``window`` (clipped to the image) at ``stride``
  (default half the window), the last tile flush with the border; overlapping
  probabilities are averaged with equal weights. ``flip`` applies per tile.
* ``scales=(0.75, 1.0, 1.25)``: multi-scale inference: the image is resized
  (bilinear, antialiased when shrinking) by each factor, predicted (with
  ``flip`` and ``window`` as above), and the probabilities are resized back to
  the full resolution and averaged with equal weights.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..inference.predictor import autocast_context
from ..models.base import MIN_INPUT_SIZE
from .validate import plain_tensor

__all__ = ["predict_probs", "sliding_window_starts", "check_scales", "as_pair"]


def as_pair(v, what: str) -> tuple[int, int]:
    """``v`` as ``(h, w)``: an int stands for both; ValueError naming ``what`` otherwise."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair (h, w), got {v!r}") from None
    return h, w


def sliding_window_starts(size: int, window: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: every ``stride``, the last tile flush with the end.

    A ``size`` not larger than ``window`` gives one tile at 0 (of length ``size``).
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def check_scales(scales: Iterable[float] | None) -> tuple[float, ...] | None:
    """Validated multi-scale factors (``None`` or ``(1.0,)`` means single-scale).

    Raises ``ValueError`` for an empty list, a non-finite or non-positive factor,
    a factor above 4 (16x the pixels: a typo, not a test-time augmentation) or a
    repeated factor.
    """
    if scales is None:
        return None
    out = tuple(float(s) for s in scales)
    if not out:
        raise ValueError("scales must name at least one factor, e.g. 0.75 1.0 1.25")
    for s in out:
        if not math.isfinite(s) or s <= 0 or s > 4:
            raise ValueError(f"scale factor {s:g} is out of range: use factors in (0, 4], e.g. 0.75 1.0 1.25")
    if len(set(out)) != len(out):
        raise ValueError(f"scale factors repeat: {' '.join(f'{s:g}' for s in out)}")
    return None if out == (1.0,) else out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _forward_probs(model: nn.Module, x: torch.Tensor, flip: bool, device: torch.device, precision: str) -> torch.Tensor:
    """(1, C, h, w) float32 softmax probabilities of ``x`` (1, C_in, h, w), flip-averaged if asked."""
    xb = torch.cat([x, x.flip(-1)]) if flip else x
    xb = xb.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, precision):
        logits = model(xb)
    probs = logits.float().softmax(1)
    if flip:
        probs = (probs[:1] + probs[1:].flip(-1)) * 0.5
    return probs


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    *,
    flip: bool = False,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    scales: Iterable[float] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Softmax probabilities ``(C, H, W)`` (float32, on the model's device) for one normalised image ``(C_in, H, W)``.

    ``flip`` averages with the mirrored image; ``window`` switches to sliding-window
    inference when the image is larger than the window; ``scales`` averages over
    resized copies of the image (see the module docstring).
    ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
    """
    device = _model_device(model)
    x = plain_tensor(image).to(device=device, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected one (C, H, W) image, got shape {tuple(x.shape)}")
    x = x[None]
    factors = check_scales(scales)
    if factors is None:
        return _predict_one_scale(model, x, flip, window, stride, device, precision)
    H, W = x.shape[-2:]
    acc = None
    for f in factors:
        h, w = max(MIN_INPUT_SIZE, round(H * f)), max(MIN_INPUT_SIZE, round(W * f))
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=f < 1)
        p = _predict_one_scale(model, xs, flip, window, stride, device, precision)
        if (h, w) != (H, W):
            p = F.interpolate(p[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        acc = p if acc is None else acc + p
    return acc / len(factors)


def _predict_one_scale(model, x, flip, window, stride, device, precision) -> torch.Tensor:
    """``predict_probs`` for a (1, C_in, H, W) batch at its own size (flip and sliding window only)."""
    H, W = x.shape[-2:]
    if window is None:
        return _forward_probs(model, x, flip, device, precision)[0]
    wh, ww = as_pair(window, "window")
    if min(wh, ww) < MIN_INPUT_SIZE:
        raise ValueError(f"window {wh}x{ww} is too small: the models need at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
    sh, sw = as_pair(stride, "stride") if stride is not None else (max(1, wh // 2), max(1, ww // 2))
    if not (1 <= sh <= wh and 1 <= sw <= ww):
        raise ValueError(f"stride {sh}x{sw} must be between 1 and the window {wh}x{ww} (larger strides would skip pixels)")
    if H <= wh and W <= ww:
        return _forward_probs(model, x, flip, device, precision)[0]
    th, tw = min(wh, H), min(ww, W)
    acc = None
    count = torch.zeros((1, 1, H, W), dtype=torch.float32, device=device)
    for r in sliding_window_starts(H, th, sh):
        for c in sliding_window_starts(W, tw, sw):
            p = _forward_probs(model, x[..., r : r + th, c : c + tw], flip, device, precision)
            if acc is None:
                acc = torch.zeros((1, p.shape[1], H, W), dtype=torch.float32, device=device)
            acc[..., r : r + th, c : c + tw] += p
            count[..., r : r + th, c : c + tw] += 1
    return (acc / count)[0]
