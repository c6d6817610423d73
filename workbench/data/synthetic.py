"""A synthetic dataset made in code (no files): shapes on textured, noisy backgrounds.

Deterministic: shapes (circles, rectangles, triangles) of ``num_classes - 1`` object classes on
textured, noisy backgrounds. Options ``size=(H, W)`` (96, 128), ``length`` (64 train, 16
val/test), ``num_classes`` (4), ``seed`` (0), ``void_border`` (width in px of an ignored band along
object edges, 0).
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..classes import IGNORE_INDEX, palette
from .base import DatasetError, SegDataset
from .files import check_options

__all__ = ["SyntheticDataset", "synthetic_sample", "build_synthetic"]

_SYNTH_SPLITS = ("train", "val", "test")
_SHAPES = ("circle", "rectangle", "triangle")


class SyntheticDataset(SegDataset):
    """Deterministic shapes on textured backgrounds; item ``i`` is a pure function of (seed, split, i)."""

    def __init__(self, *, split: str, size=(96, 128), length: int | None = None, num_classes: int = 4, seed: int = 0, void_border: int = 0, **kwargs):
        if split not in _SYNTH_SPLITS:
            raise DatasetError(f"unknown split {split!r} for dataset 'synthetic'; valid: {', '.join(_SYNTH_SPLITS)}")
        num_classes = int(num_classes)
        if num_classes < 2:
            raise DatasetError(f"synthetic num_classes must be >= 2 (background + objects), got {num_classes}")
        h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if h < 16 or w < 16:
            raise DatasetError(f"synthetic size must be at least 16x16, got {h}x{w}")
        if length is None:
            length = 64 if split == "train" else 16
        colours = palette(num_classes)
        classes = [{"name": "background", "color": [70, 70, 70]}]
        for c in range(1, num_classes):
            shape = _SHAPES[(c - 1) % 3]
            classes.append({"name": shape if c <= 3 else f"{shape}_{(c - 1) // 3 + 1}", "color": colours[c]})
        self.size = (h, w)
        self.seed = int(seed)
        self.void_border = int(void_border)
        names = [f"synthetic-{split}-{i:04d}" for i in range(int(length))]
        super().__init__(name="synthetic", split=split, classes=classes, in_chans=3, files=names, **kwargs)

    def sample_name(self, i: int) -> str:
        return self.files[i]

    def _load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_sample(i, split=self.split, size=self.size, num_classes=self.num_classes, seed=self.seed, void_border=self.void_border)

    def _load_mask(self, i: int) -> np.ndarray:
        return self._load_pair(i)[1]


def synthetic_sample(index: int, *, split: str = "train", size=(96, 128), num_classes: int = 4, seed: int = 0, void_border: int = 0):
    """One synthetic ((H, W, 3) uint8 image, (H, W) uint8 labels) pair, a pure function of its arguments.

    Object class ``c`` (1..num_classes-1) is always the same shape kind (circle, rectangle,
    triangle, cycling) in a saturated class colour with per-object brightness jitter and pixel
    noise; the background is a low-saturation grey texture (smooth blobs, stripes, noise).
    """
    h, w = size
    rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])
    # background: smooth grey blobs + a stripe pattern + pixel noise, slightly tinted
    coarse = rng.uniform(70, 180, size=(max(2, h // 16), max(2, w // 16)))
    smooth = ndimage.zoom(coarse, (h / coarse.shape[0], w / coarse.shape[1]), order=1)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w]
    theta, period = rng.uniform(0, np.pi), rng.uniform(5, 20)
    stripes = 14.0 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    tint = rng.uniform(-10, 10, size=3)
    image = smooth[..., None] + stripes[..., None] + tint + rng.normal(0, 10, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    colours = np.asarray(palette(num_classes), np.float64)
    r_lo, r_hi = 0.08 * min(h, w), 0.22 * min(h, w)
    for _ in range(int(rng.integers(2, 7))):
        c = int(rng.integers(1, num_classes))
        kind = _SHAPES[(c - 1) % 3]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(r_lo, r_hi)
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        elif kind == "rectangle":
            a, b = r * rng.uniform(0.6, 1.2), r * rng.uniform(0.6, 1.2)
            draw.rectangle([cx - a, cy - b, cx + a, cy + b], fill=1)
        else:
            t0 = rng.uniform(0, 2 * np.pi)
            angles = t0 + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
            draw.polygon([(cx + 1.25 * r * np.cos(a), cy + 1.25 * r * np.sin(a)) for a in angles], fill=1)
        sel = np.asarray(layer, bool)
        if not sel.any():
            continue
        colour = colours[c] * rng.uniform(0.8, 1.15)
        image[sel] = colour + rng.normal(0, 12, (int(sel.sum()), 3))
        mask[sel] = c
    if void_border > 0:
        k = 2 * int(void_border) + 1
        edge = ndimage.maximum_filter(mask, size=k) != ndimage.minimum_filter(mask, size=k)
        mask[edge] = IGNORE_INDEX
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def build_synthetic(split, data_root, common, options):
    """The synthetic dataset's ``split`` (:func:`~workbench.data.build_dataset`; ``common``: the options every dataset takes)."""
    check_options("synthetic", options, {"size", "length", "num_classes", "seed", "void_border"})
    return SyntheticDataset(split=split, **options, **common)
