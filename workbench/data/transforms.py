"""Training and evaluation transforms on sample dicts, built from ``torchvision.transforms.v2``.

A sample is ``{"image": tv_tensors.Image uint8 (C, H, W), "mask": tv_tensors.Mask int64 (H, W),
"name": str}`` plus ``"weight"`` (a :class:`~workbench.data.weighting.WeightMap`, float32 (H, W)) when the
dataset computes border weights, and ``"teacher"`` (a :class:`TeacherMap` (C, H, W): a teacher's
per-class log-probabilities, uint8-quantised, added by ``workbench distill``). v2 transforms apply the same random geometry to every tv_tensor
in the dict and pass other keys through; masks and weight maps are resized with nearest
interpolation and left alone by colour transforms; a teacher map takes exactly the label's path
(nearest-exact resize, the same crop and flips), so the soft labels stay aligned with the hard ones.

Padding (where a crop is larger than the scaled image, or a rotation uncovers corners) fills
the image with 0, the mask with ``ignore_index`` and the weight and teacher maps with 0 (their
padded pixels are void in the mask, so no loss reads them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..classes import IGNORE_INDEX
from .weighting import WeightMap

__all__ = ["RandomScale", "TeacherMap", "train_transforms", "eval_transforms"]


class TeacherMap(tv_tensors.Mask):
    """A teacher's per-class map (C, H, W) that travels with the label mask through the joint transforms.

    A :class:`tv_tensors.Mask` of its own type: v2 transforms resize it with the mask's nearest-exact
    sampling (:class:`RandomScale`), crop and flip it with the mask, leave it out of colour transforms
    and normalisation, and a ``fill`` dict pads it with 0.
    """


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (the same for height and width).

    Images use ``interpolation`` (bilinear, antialiased); masks and weight maps use
    nearest-exact, which samples pixel centres and so stays aligned with the bilinear image
    (plain "nearest" is shifted by up to half an input pixel).
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0), interpolation=v2.InterpolationMode.BILINEAR, antialias: bool = True):
        super().__init__()
        lo, hi = float(scale[0]), float(scale[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.scale = (lo, hi)
        self.interpolation = interpolation
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        s = self.scale[0] + float(torch.rand(())) * (self.scale[1] - self.scale[0])
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return self._call_kernel(F.resize, inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=self.interpolation, antialias=self.antialias)


def _tag_weight(sample):
    """Give a plain ``tv_tensors.Mask`` weight map the :class:`WeightMap` type, so it is padded with 0."""
    if isinstance(sample, dict):
        w = sample.get("weight")
        if isinstance(w, tv_tensors.Mask) and not isinstance(w, WeightMap):
            sample = dict(sample)
            sample["weight"] = w.as_subclass(WeightMap)
    return sample


def _fill(ignore_index: int) -> dict:
    return {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index, WeightMap: 0, TeacherMap: 0}


def _finish(mean: Sequence[float], std: Sequence[float]) -> list:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def train_transforms(
    crop_size: tuple[int, int],
    *,
    scale: tuple[float, float] | None = (0.5, 2.0),
    hflip: bool = True,
    vflip: bool = False,
    rotate: float = 0.0,
    color_jitter: float = 0.2,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """Random scale, (rotation), random crop with padding, flips, colour jitter, float + normalise.

    Args:
        crop_size: output ``(H, W)``; smaller (scaled) images are padded (image 0, mask
            ``ignore_index``, weight 0) before the crop.
        scale: range of the random scale factor, ``None`` or ``(1, 1)`` for none.
        hflip, vflip: random flips with probability 0.5.
        rotate: random rotation by up to +-``rotate`` degrees (0: none), uncovered corners padded.
        color_jitter: brightness, contrast and saturation factors drawn from
            ``[1 - color_jitter, 1 + color_jitter]`` (no hue shift); touches the image only.
        mean, std: normalisation per channel (e.g. :func:`workbench.classes.default_normalization`).

    Output dict: ``"image"`` float32 (C, H, W) normalised, ``"mask"`` int64 (H, W), ``"weight"``
    float32 (H, W) and ``"teacher"`` (C', H, W) if present, ``"name"`` and any other keys unchanged. The crop is always exactly
    ``crop_size``.
    """
    h, w = (int(crop_size), int(crop_size)) if isinstance(crop_size, int) else (int(crop_size[0]), int(crop_size[1]))
    fill = _fill(ignore_index)
    steps: list = [_tag_weight]
    if scale is not None and tuple(scale) != (1, 1):
        steps.append(RandomScale(scale))
    if rotate:
        steps.append(v2.RandomRotation(rotate, interpolation=v2.InterpolationMode.BILINEAR, fill=fill))
    steps.append(v2.RandomCrop((h, w), pad_if_needed=True, fill=fill))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if vflip:
        steps.append(v2.RandomVerticalFlip())
    if color_jitter:
        cj = float(color_jitter)
        steps.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    return v2.Compose(steps + _finish(mean, std))


def eval_transforms(*, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """No geometry: image to float32 in [0, 1], then normalised; mask and weight unchanged."""
    return v2.Compose([_tag_weight] + _finish(mean, std))
