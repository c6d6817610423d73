"""Feature maps stage by stage: what an encoder-decoder computes on the way down and back up.

Every encoder level and decoder stage's output (:func:`workbench.models.anatomy.stage_outputs`) drawn at its
own resolution: the mean absolute activation over channels (where the stage responds), then the channels with
the most energy. On a U-Net the maps shrink to 1/16 or 1/32 and grow back, the skip connections bringing the
edges back; on the naive stack every map is full size; on the dilated net they stop at 1/8.

    stages = feature_stages(model, x, top_channels=3)   # [FeatureStage(name, channels, size, reduction, maps)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from workbench import viz
from workbench.models.anatomy import stage_outputs

__all__ = ["FeatureStage", "feature_stages"]


@dataclass(frozen=True)
class FeatureStage:
    """One stage's output: ``name`` (e.g. ``encoder[2]``, ``decoder.stages.1``), its channel count, its
    (height, width), its ``reduction`` against the input, and ``maps``: (picture, caption) pairs, the mean
    absolute activation first, then the strongest channels, each an (h, w, 3) uint8 heat map at the stage's
    own resolution (normalised per picture)."""

    name: str
    channels: int
    size: tuple[int, int]
    reduction: float
    maps: list[tuple[np.ndarray, str]]

    @property
    def part(self) -> str:
        """``encoder``, ``decoder`` or ``head``: where in the network the stage is."""
        return "encoder" if "encoder" in self.name else "head" if "head" in self.name else "decoder"


def _normalised(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, 1), np.percentile(a, 99)
    return viz.heatmap(np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1), cmap="magma")


@torch.no_grad()
def feature_stages(model: nn.Module, x: torch.Tensor, top_channels: int = 3) -> list[FeatureStage]:
    """The stage-by-stage activations of ``model`` on the normalised input batch ``x`` (1, C, H, W), in the
    order the forward pass makes them (see the module docstring). ``top_channels``: how many single channels
    to draw per stage besides the mean, strongest (largest mean square) first."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image as a (1, C, H, W) batch, got shape {tuple(x.shape)}")
    d = int(getattr(model, "size_divisor", 1) or 1)
    h = -(-x.shape[-2] // d) * d  # the height inside the model, after its padding to the size divisor
    out = []
    previous = None
    for name, t in stage_outputs(model, x.float()):
        if previous is not None and t.shape == previous.shape and torch.equal(t, previous):
            continue  # a container returning its last stage's output (``decoder`` after ``decoder.stages.4``)
        previous = t
        a = t[0].float().cpu().numpy()  # (C, h, w)
        maps = [(_normalised(np.abs(a).mean(0)), f"{name}: mean |activation| of {a.shape[0]} channels")]
        energy = (a.astype(np.float64) ** 2).mean((1, 2))
        for c in np.argsort(-energy, kind="stable")[:top_channels]:
            maps.append((_normalised(a[c]), f"{name}: channel {int(c)}"))
        out.append(FeatureStage(name, a.shape[0], (a.shape[1], a.shape[2]), round(h / a.shape[1], 2), maps))
    return out
