"""Numerical parity: does a fast inference path give the labels of the fp32 eager model?

Every optimisation (Conv-BN folding, channels_last, bf16; later other engines)
is held to one bar: label maps agree with fp32 eager on at least
:data:`PARITY_OVERALL` of the pixels of a sample of test images, and on at
least :data:`PARITY_WORST_IMAGE` of any single image of it.
scripts/check_bf16_parity.py pins a checkpoint to fp32 when bf16 misses it.
"""

from __future__ import annotations

import torch.nn as nn

from .predictor import Predictor

__all__ = ["label_agreement", "parity_holds", "PARITY_OVERALL", "PARITY_WORST_IMAGE"]

# The numerical-parity bar of every optimisation: label maps agree with fp32 eager on at least 99.5% of the
# pixels of a sample of test images, and on at least 98.5% of any single image of it (near-tied pixels flip
# on a hard image; below this a user would see the difference).
PARITY_OVERALL = 0.995
PARITY_WORST_IMAGE = 0.985


def label_agreement(model: nn.Module, images, precision: str = "bf16", device: str = "cpu") -> list[float]:
    """Per image (paths or PIL images), the share of pixels where the app's fast path (folded BN,
    channels_last, ``precision``; ``"auto"`` honours a manifest's pinned fp32) gives the label of the
    fp32 eager model: the numerical-parity measure of scripts/check_bf16_parity.py and tests/test_optimize.py."""
    ref = Predictor(model, device, precision="fp32", optimize=False)
    fast = Predictor(model, device, precision=precision, optimize=True)
    return [float((ref.predict(im).labels == fast.predict(im).labels).mean()) for im in images]


def parity_holds(agreement: list[float]) -> bool:
    """Whether per-image label agreements (:func:`label_agreement`, images of one size) meet the parity bar."""
    return bool(agreement) and sum(agreement) / len(agreement) >= PARITY_OVERALL and min(agreement) >= PARITY_WORST_IMAGE
