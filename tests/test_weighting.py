"""Loss weighting: class-frequency weights and the U-Net border weight map, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from workbench.data.weighting import (
    BORDER_TOLERANCE,
    SEGNET_CAMVID_WEIGHTS,
    balanced_class_weight_map,
    class_pixel_stats,
    class_weights,
    inverse_frequency_weights,
    median_frequency_weights,
    unet_border_weights,
)

# Three tiny label maps (255 = ignore), counted by hand:
#   A: class 0 x5, class 1 x1             (6 labelled pixels)
#   B: class 0 x1, class 2 x3             (4)
#   C: class 1 x2, class 0 x2, ignore x2  (4 labelled)
# pixels(c)       = 0: 5+1+2 = 8,  1: 1+2 = 3,  2: 3
# image_pixels(c) = 0: 6+4+4 = 14, 1: 6+4 = 10, 2: 4
MASKS = [
    np.array([[0, 0, 0], [0, 0, 1]]),
    np.array([[0, 2], [2, 2]]),
    np.array([[1, 1, 255], [255, 0, 0]]),
]


def test_class_pixel_stats_by_hand():
    pixels, image_pixels = class_pixel_stats(MASKS, 3)
    assert pixels.tolist() == [8, 3, 3]
    assert image_pixels.tolist() == [14, 10, 4]


def test_median_frequency_weights_by_hand():
    # freq = 8/14 = 4/7, 3/10, 3/4; median = 4/7; w = (4/7) / freq
    w = median_frequency_weights(*class_pixel_stats(MASKS, 3))
    np.testing.assert_allclose(w, [1.0, 40 / 21, 16 / 21], rtol=1e-12)
    assert np.allclose(class_weights(MASKS, 3, "median"), w)


def test_inverse_frequency_weights_by_hand():
    # f = 8/14, 3/14, 3/14; 1/f = 7/4, 14/3, 14/3, mean 133/36 -> w = 9/19, 24/19, 24/19 (mean 1)
    w = inverse_frequency_weights(class_pixel_stats(MASKS, 3)[0])
    np.testing.assert_allclose(w, [9 / 19, 24 / 19, 24 / 19], rtol=1e-12)
    np.testing.assert_array_equal(inverse_frequency_weights(*class_pixel_stats(MASKS, 3)), w)  # same call as median
    assert w.mean() == pytest.approx(1.0)
    assert np.allclose(class_weights(MASKS, 3, "inverse"), w)


def test_absent_class_gets_zero_and_a_warning():
    with pytest.warns(RuntimeWarning, match=r"class\(es\) \[3\] never occur"):
        w = median_frequency_weights(*class_pixel_stats(MASKS, 4))
    np.testing.assert_allclose(w, [1.0, 40 / 21, 16 / 21, 0.0], rtol=1e-12)
    with pytest.warns(RuntimeWarning, match=r"\[3\]"):
        w = inverse_frequency_weights(class_pixel_stats(MASKS, 4)[0])
    assert w[3] == 0 and w[:3].mean() == pytest.approx(1.0)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"labels \[5\] outside 0..2"):
        class_pixel_stats([np.array([[0, 5]])], 3)
    with pytest.raises(ValueError, match="method"):
        class_weights(MASKS, 3, "sqrt")


def test_segnet_reference_weights():
    assert len(SEGNET_CAMVID_WEIGHTS) == 11
    assert SEGNET_CAMVID_WEIGHTS[6] == 9.6446 and SEGNET_CAMVID_WEIGHTS[3] == 0.1417


def test_balanced_class_weight_map_by_hand():
    m = np.array([[0, 0, 0], [1, 255, 0]])  # N = 5 labelled, K = 2, n0 = 4, n1 = 1
    w = balanced_class_weight_map(m)
    np.testing.assert_allclose(w, [[5 / 8, 5 / 8, 5 / 8], [5 / 2, 0, 5 / 8]], rtol=1e-6)
    assert w.dtype == np.float32
    assert w[m != 255].mean() == pytest.approx(1.0)


def _term(d1, d2, w0=10.0, sigma=5.0):
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def test_border_weights_two_pixels_on_a_line():
    m = np.zeros((9, 21), np.int64)
    m[4, 5] = m[4, 15] = 1
    w = unet_border_weights(m, w0=10.0, sigma=5.0, class_weights=[1.0, 1.0])
    assert w.dtype == np.float32 and w.shape == m.shape
    assert w[4, 8] == pytest.approx(1 + _term(3, 7), rel=1e-6)  # d1 = 3, d2 = 7
    assert w[4, 10] == pytest.approx(1 + _term(5, 5), rel=1e-6)
    d = math.hypot(4, 5)  # (0, 10): 4 rows up, 5 columns from each object
    assert w[0, 10] == pytest.approx(1 + _term(d, d), rel=1e-6)
    assert w[4, 0] == pytest.approx(1 + _term(5, 15), rel=1e-5)
    assert w[4, 5] == 1.0 and w[4, 15] == 1.0  # object pixels keep the class weight only
    # default class term: per-image balancing, N = 189, K = 2, n0 = 187, n1 = 2
    wb = unet_border_weights(m, w0=10.0, sigma=5.0)
    assert wb[4, 8] == pytest.approx(189 / 374 + _term(3, 7), rel=1e-6)
    assert wb[4, 5] == pytest.approx(189 / 4, rel=1e-6)


def test_border_weights_two_squares():
    m = np.zeros((9, 17), np.uint8)
    m[3:6, 2:5] = 1  # columns 2..4
    m[3:6, 12:15] = 1  # columns 12..14
    w = unet_border_weights(m, w0=5.0, sigma=3.0, class_weights=[0.5, 2.0])
    assert w[4, 8] == pytest.approx(0.5 + _term(4, 4, 5.0, 3.0), rel=1e-6)
    assert w[4, 6] == pytest.approx(0.5 + _term(2, 6, 5.0, 3.0), rel=1e-6)
    assert w[0, 8] == pytest.approx(0.5 + _term(5, 5, 5.0, 3.0), rel=1e-6)  # hypot(3, 4) = 5 to each corner
    assert (w[m == 1] == 2.0).all()


def test_border_weights_fewer_than_two_objects_and_far_objects():
    one = np.zeros((20, 20), np.int64)
    one[5:8, 5:8] = 1
    np.testing.assert_array_equal(unet_border_weights(one, class_weights=[1, 3]), np.where(one == 1, 3.0, 1.0))
    none = np.zeros((20, 20), np.int64)
    np.testing.assert_array_equal(unet_border_weights(none, class_weights=[1, 3]), np.ones((20, 20)))
    far = np.zeros((10, 200), np.int64)
    far[5, 0] = far[5, 199] = 1  # 199 px apart: the term is ~exp(-792), below the tolerance
    w = unet_border_weights(far, class_weights=[1, 1])
    np.testing.assert_allclose(w, 1.0, atol=10 * BORDER_TOLERANCE)


def test_border_weights_ignored_pixels_are_zero():
    m = np.zeros((9, 21), np.int64)
    m[4, 5] = m[4, 15] = 1
    m[:, 9:11] = 255
    w = unet_border_weights(m, class_weights=[1.0, 1.0])
    assert (w[:, 9:11] == 0).all()
    assert w[4, 8] == pytest.approx(1 + _term(3, 7), rel=1e-6)


def test_border_weights_objects_are_labelled_per_class():
    m = np.zeros((1, 10), np.int64)
    m[0, 0:2] = 1
    m[0, 2:4] = 2  # touches the class-1 object: still a second object
    w = unet_border_weights(m, object_classes=(1, 2), class_weights=[1, 1, 1])
    assert w[0, 4] == pytest.approx(1 + _term(1, 3), rel=1e-6)
    assert w[0, 9] == pytest.approx(1 + _term(6, 8), rel=1e-5)
    only_one_class = unet_border_weights(m, object_classes=(1,), class_weights=[1, 1, 1])
    assert (only_one_class == 1).all()


def _reference_border_weights(mask, w0, sigma, object_classes, class_weights):
    """Straightforward eq. 2: full-image distance transform per object, sort, take the two smallest."""
    dists = []
    in_object = np.zeros(mask.shape, bool)
    for c in object_classes:
        lab, n = ndimage.label(mask == c)
        in_object |= mask == c
        dists += [ndimage.distance_transform_edt(lab != k) for k in range(1, n + 1)]
    d = np.sort(np.stack(dists), axis=0)
    border = w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return np.asarray(class_weights)[mask] + np.where(in_object, 0.0, border)


def test_border_weights_match_a_brute_force_reference():
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.normal(size=(70, 90)), 2.0)
    mask = (blobs > 0.15).astype(np.int64)
    mask[(blobs < -0.25)] = 2
    n1 = ndimage.label(mask == 1)[1]
    n2 = ndimage.label(mask == 2)[1]
    assert n1 + n2 > 10  # many objects, so the windowed computation is exercised
    for w0, sigma in [(10.0, 5.0), (3.0, 2.0)]:
        got = unet_border_weights(mask, w0=w0, sigma=sigma, object_classes=(1, 2), class_weights=[1.0, 1.5, 2.0])
        want = _reference_border_weights(mask, w0, sigma, (1, 2), [1.0, 1.5, 2.0])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2 * w0 * BORDER_TOLERANCE)


def test_border_weights_argument_checks():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        unet_border_weights(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ValueError, match="class_weights"):
        unet_border_weights(np.array([[0, 3]]), class_weights=[1, 1])
    with pytest.raises(ValueError, match="sigma"):
        unet_border_weights(np.zeros((4, 4), np.int64), sigma=0)
