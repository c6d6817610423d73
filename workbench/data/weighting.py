"""Loss weighting: class-frequency balancing and the U-Net border weight map.

Class balancing (per dataset)
-----------------------------
:func:`class_pixel_stats` counts, over a split's label maps, the pixels of every class
and the pixels of the images that contain each class. Ignored pixels
(``ignore_index``, the datasets' void) are left out of both counts, so frequencies
are fractions of *labelled* pixels.

* :func:`median_frequency_weights` (Eigen & Fergus 2015, used by SegNet and the
  FCN/Tiramisu CamVid recipes)::

      freq(c) = pixels(c) / image_pixels(c)     # image_pixels(c): labelled pixels of the images containing c
      w_c     = median_k freq(k) / freq(c)      # median over the classes that occur

* :func:`inverse_frequency_weights`::

      f(c) = pixels(c) / sum_k pixels(k)        # share of all labelled pixels
      w_c  = (1 / f(c)) / mean_k (1 / f(k))     # mean over the classes that occur, so mean_k w_k = 1

Classes that never occur get weight 0 (they cannot be balanced) and a warning.

U-Net border weights (per image)
--------------------------------
:func:`unet_border_weights` is eq. 2 of Ronneberger et al. 2015::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

See its docstring for the exact choices (objects, class term, where the border term
applies, truncation). :class:`WeightMap` is the tv_tensor type the datasets return
the map as, so that v2 transforms move it with the mask (nearest interpolation)
but pad it with 0 rather than with the mask's ignore value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage
from torchvision import tv_tensors

from ..classes import IGNORE_INDEX

__all__ = [
    "SEGNET_CAMVID_WEIGHTS",
    "WeightMap",
    "class_pixel_stats",
    "median_frequency_weights",
    "inverse_frequency_weights",
    "class_weights",
    "balanced_class_weight_map",
    "unet_border_weights",
    "BORDER_TOLERANCE",
]

# The SegNet tutorial's median-frequency weights for CamVid classes 0..10 (void ignored).
SEGNET_CAMVID_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]

# Border terms smaller than BORDER_TOLERANCE * w0 are dropped (see unet_border_weights).
BORDER_TOLERANCE = 1e-6


class WeightMap(tv_tensors.Mask):
    """A per-pixel float weight map: a :class:`tv_tensors.Mask` (so v2 transforms resize it with
    nearest interpolation and crop/flip it with the mask) of its own type, so that a ``fill`` dict
    can pad it with 0 while the label mask is padded with the ignore index."""


def _warn_absent(absent: np.ndarray, what: str) -> None:
    if absent.size:
        warnings.warn(
            f"{what}: class(es) {absent.tolist()} never occur in the labels; they get weight 0",
            RuntimeWarning,
            stacklevel=3,
        )


def class_pixel_stats(
    masks_iter: Iterable, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Count class pixels over label maps.

    Args:
        masks_iter: iterable of (H, W) integer label maps (numpy arrays or tensors).
        num_classes: classes are ``0 .. num_classes - 1``.
        ignore_index: label of pixels that count nowhere.

    Returns:
        ``(pixels_per_class, image_pixels_per_class)``, int64 arrays of length ``num_classes``:
        ``pixels_per_class[c]`` = pixels labelled ``c``; ``image_pixels_per_class[c]`` = labelled
        (non-ignored) pixels of the images that contain class ``c``.

    Raises:
        ValueError: a label map holds a value that is neither a class nor ``ignore_index``.
    """
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for i, m in enumerate(masks_iter):
        m = np.asarray(m)
        if m.size == 0:
            continue
        if m.dtype.kind not in "iu":
            raise ValueError(f"label map {i} has dtype {m.dtype}; expected integers")
        flat = m.ravel()
        lo = int(flat.min())
        if lo < 0:
            raise ValueError(f"label map {i} holds negative label {lo}")
        counts = np.bincount(flat)
        if 0 <= ignore_index < counts.size:
            counts[ignore_index] = 0
        extra = np.flatnonzero(counts[num_classes:])
        if extra.size:
            raise ValueError(
                f"label map {i} holds labels {(extra + num_classes).tolist()[:10]} outside 0..{num_classes - 1} "
                f"(and not the ignore index {ignore_index})"
            )
        counts = counts[:num_classes]
        if counts.size < num_classes:
            counts = np.pad(counts, (0, num_classes - counts.size))
        pixels += counts
        image_pixels[counts > 0] += int(counts.sum())
    return pixels, image_pixels


def median_frequency_weights(pixels_per_class, image_pixels_per_class) -> np.ndarray:
    """Median-frequency balancing: ``w_c = median(freq) / freq(c)``, ``freq(c) = pixels(c) / image_pixels(c)``.

    The median is over the classes that occur; classes that never occur get 0 and a warning.
    Returns float64 weights of length ``num_classes``.
    """
    pixels = np.asarray(pixels_per_class, np.float64)
    image_pixels = np.asarray(image_pixels_per_class, np.float64)
    if pixels.shape != image_pixels.shape:
        raise ValueError(f"pixel counts {pixels.shape} and image pixel counts {image_pixels.shape} differ in length")
    present = pixels > 0
    weights = np.zeros_like(pixels)
    _warn_absent(np.flatnonzero(~present), "median-frequency weights")
    if not present.any():
        return weights
    freq = pixels[present] / image_pixels[present]
    weights[present] = np.median(freq) / freq
    return weights


def inverse_frequency_weights(pixels_per_class, image_pixels_per_class=None) -> np.ndarray:
    """Inverse-frequency balancing: ``w_c = (1/f(c)) / mean_k(1/f(k))`` with ``f(c) = pixels(c) / all pixels``.

    The mean is over the classes that occur, so their weights average to 1; classes that never
    occur get 0 and a warning. Returns float64 weights of length ``num_classes``.
    ``image_pixels_per_class`` is not used; it is accepted so that both weighting functions can be
    called as ``fn(*class_pixel_stats(...))``.
    """
    pixels = np.asarray(pixels_per_class, np.float64)
    present = pixels > 0
    weights = np.zeros_like(pixels)
    _warn_absent(np.flatnonzero(~present), "inverse-frequency weights")
    if not present.any():
        return weights
    inv = pixels[present].sum() / pixels[present]
    weights[present] = inv / inv.mean()
    return weights


def class_weights(masks_iter: Iterable, num_classes: int, method: str = "median", ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-class loss weights from label maps: ``method`` = ``"median"`` (median frequency) or ``"inverse"``.

    For a dataset: ``class_weights(ds.masks(), ds.num_classes)``.
    """
    if method not in ("median", "inverse"):
        raise ValueError(f"unknown weighting method {method!r}; choose 'median' or 'inverse'")
    pixels, image_pixels = class_pixel_stats(masks_iter, num_classes, ignore_index)
    if method == "median":
        return median_frequency_weights(pixels, image_pixels)
    return inverse_frequency_weights(pixels)


def balanced_class_weight_map(mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-image class balancing: ``w_c = N / (K * n_c)`` at every pixel of class ``c``, 0 where ignored.

    ``N`` = labelled pixels of the image, ``K`` = classes present in it, ``n_c`` = pixels of class ``c``
    (scikit-learn's "balanced" weights): every present class carries the same total weight and
    the mean over labelled pixels is 1.
    """
    mask = np.asarray(mask)
    valid = mask != ignore_index
    out = np.zeros(mask.shape, np.float32)
    if not valid.any():
        return out
    counts = np.bincount(mask[valid].ravel().astype(np.int64))
    present = counts > 0
    lut = np.zeros(counts.size, np.float64)
    lut[present] = valid.sum() / (present.sum() * counts[present])
    out[valid] = lut[mask[valid]]
    return out


def _two_nearest_object_distances(objects: list[np.ndarray], shape: tuple[int, int], reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, exact wherever both are within ``reach``.

    ``objects`` are label arrays (one per object class) of connected components. Each component's
    distance transform is computed only in its bounding box grown by ``reach`` and folded into two
    running minima; outside those windows the distance is > ``reach`` and left at inf.
    """
    d1 = np.full(shape, np.inf, np.float64)
    d2 = np.full(shape, np.inf, np.float64)
    r = int(math.ceil(reach))
    h, w = shape
    for lab in objects:
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            y0, y1 = max(sl[0].start - r, 0), min(sl[0].stop + r, h)
            x0, x1 = max(sl[1].start - r, 0), min(sl[1].stop + r, w)
            window = (slice(y0, y1), slice(x0, x1))
            dist = ndimage.distance_transform_edt(lab[window] != k)
            a, b = d1[window], d2[window]  # views: updated in place
            np.minimum(b, np.maximum(a, dist), out=b)
            np.minimum(a, dist, out=a)
    return d1, d2


def unet_border_weights(
    mask,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    object_classes: Sequence[int] = (1,),
    class_weights: Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """The U-Net weight map (Ronneberger et al. 2015, eq. 2) of one (H, W) label map, float32.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``, where

    * objects are the connected components (``scipy.ndimage.label``, 4-connectivity) of the
      pixels of each class in ``object_classes``, labelled per class (two touching objects of
      different classes stay two objects). For ISBI the objects are the cells (class 1) and the
      background is the membrane;
    * ``d1``/``d2`` are the Euclidean distances (``distance_transform_edt``) to the nearest and
      second-nearest object. The border term is added only on pixels outside every object (the
      gaps between objects, as in the paper's Fig. 3d); object pixels keep ``w_c``;
    * with fewer than two objects within reach ``d2 = inf`` and the border term is 0 (one object
      alone gets no border emphasis; no objects gives ``w = w_c``);
    * terms below ``BORDER_TOLERANCE * w0`` are dropped, which lets each component's distance
      transform run only in its bounding box grown by ``sigma * sqrt(2 ln(1 / BORDER_TOLERANCE))``
      pixels (about 26 px for sigma 5): the result is exact wherever the term is larger;
    * ``w_c`` is ``class_weights[label]`` when ``class_weights`` is given, else per-image class
      balancing :func:`balanced_class_weight_map` (``w_c = N / (K n_c)``, mean 1 over labelled pixels);
    * ignored pixels (``ignore_index``) get weight 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"need w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    valid = mask != ignore_index
    if class_weights is None:
        weights = balanced_class_weight_map(mask, ignore_index)
    else:
        cw = np.asarray(class_weights, np.float64)
        labels = mask[valid]
        if labels.size and (labels.min() < 0 or labels.max() >= cw.size):
            raise ValueError(f"mask holds labels outside 0..{cw.size - 1}, the range of class_weights")
        weights = np.zeros(mask.shape, np.float32)
        weights[valid] = cw[labels]
    if w0 == 0 or not object_classes:
        return weights
    objects = []
    in_object = np.zeros(mask.shape, bool)
    for c in object_classes:
        sel = mask == c
        if sel.any():
            lab, _n = ndimage.label(sel)
            objects.append(lab)
            in_object |= sel
    if sum(int(lab.max()) for lab in objects) < 2:
        return weights
    reach = sigma * math.sqrt(2.0 * math.log(1.0 / BORDER_TOLERANCE))
    d1, d2 = _two_nearest_object_distances(objects, mask.shape, reach)
    gap = valid & ~in_object & np.isfinite(d2)
    border = w0 * np.exp(-((d1[gap] + d2[gap]) ** 2) / (2.0 * sigma * sigma))
    weights[gap] += border.astype(np.float32)
    return weights
