"""Numerical parity: does a fast inference path give the labels of the fp32 eager model?

Every optimisation (Conv-BN folding, channels_last, bf16; later other engines)
is held to one bar (:mod:`.parity_rule`, so that the Predictor's engine choice applies it too): label maps agree with fp32 eager on at least
:data:`PARITY_OVERALL` of the pixels of a sample of test images, and on at
least :data:`PARITY_WORST_IMAGE` of any single image of it.
scripts/check_bf16_parity.py pins a checkpoint to fp32 when bf16 misses it.
"""

from __future__ import annotations

import torch.nn as nn

from .parity_rule import PARITY_OVERALL, PARITY_WORST_IMAGE, parity_holds
from .predictor import Predictor

__all__ = ["label_agreement", "parity_holds", "PARITY_OVERALL", "PARITY_WORST_IMAGE"]


def label_agreement(model: nn.Module, images, precision: str = "bf16", device: str = "cpu") -> list[float]:
    """Per image (paths or PIL images), the share of pixels where the app's fast path (folded BN,
    channels_last, ``precision``; ``"auto"`` honours a manifest's pinned fp32) gives the label of the
    fp32 eager model: the numerical-parity measure of scripts/check_bf16_parity.py and tests/test_optimize.py."""
    ref = Predictor(model, device, precision="fp32", optimize=False)
    fast = Predictor(model, device, precision=precision, optimize=True)
    return [float((ref.predict(im).labels == fast.predict(im).labels).mean()) for im in images]
