"""The label-parity bar every faster inference path is held to (re-exported by :mod:`.parity`).

Kept apart from :func:`.parity.label_agreement` (which builds Predictors) so that the engine choice inside
the Predictor can apply the same rule without an import circle.
"""

from __future__ import annotations

__all__ = ["parity_holds", "PARITY_OVERALL", "PARITY_WORST_IMAGE"]

# The numerical-parity bar of every optimisation: label maps agree with fp32 eager on at least 99.5% of the
# pixels of a sample of test images, and on at least 98.5% of any single image of it (near-tied pixels flip
# on a hard image; below this a user would see the difference).
PARITY_OVERALL = 0.995
PARITY_WORST_IMAGE = 0.985


def parity_holds(agreement: list[float]) -> bool:
    """Whether per-image label agreements (images of one size) meet the parity bar."""
    return bool(agreement) and sum(agreement) / len(agreement) >= PARITY_OVERALL and min(agreement) >= PARITY_WORST_IMAGE
