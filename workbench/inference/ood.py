"""Does an image look like the training data? An out-of-distribution (OOD) score from a model's logits.

The CamVid models know 11 street classes and nothing else: shown a portrait, a cat or a microscope slice they
still paint every pixel with a street class, often confidently. This module scores how unlike the training
data an image is, from the logits any engine returned (:attr:`Prediction.logits_work`), so the app can say
"these models were trained on street scenes; this image looks unlike them".

Per-image component scores (higher = less like the training data), all from the (C, h, w) logits:

- ``msp``: ``1 - mean max softmax probability`` (Hendrycks and Gimpel, 2017);
- ``entropy``: the mean per-pixel entropy of the softmax, divided by ``log C`` (0 = certain, 1 = uniform);
- ``energy``: ``-mean logsumexp(logits)`` (Liu et al., 2020);
- ``layout``: ``-mean log prior(predicted class | position)``, where the prior is the class frequency in each
  cell of a coarse grid over CamVid's training labels: street scenes have sky at the top and road at the bottom,
  a portrait predicted as "building" in the middle and "road" at the top scores high.

A calibrated method is the mean of the z-scores of one or more components (means and standard deviations
measured on CamVid val) and a threshold on it; both live in ``workbench/inference/ood.json`` (package data,
beside this module, so a wheel and a Space carry it; not in ``checkpoints/``, whose every JSON is a manifest), written by
``workbench calibrate-ood`` (:mod:`workbench.evaluation.ood`, docs/ood.md) for the checkpoints whose weights'
sha256 it records. The score depends on the logits only, so it is the same whatever engine produced them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = [
    "COMPONENTS",
    "OOD_FILE",
    "OOD_MESSAGE",
    "LayoutPrior",
    "OodCalibration",
    "OodResult",
    "component_scores",
    "load_calibrations",
    "calibration_for",
    "assess",
]

COMPONENTS = ("msp", "entropy", "energy", "layout")
OOD_FILE = Path(__file__).with_name("ood.json")  # package data: travels with the package into a wheel and a Space
OOD_MESSAGE = (
    "These models were trained on street scenes (CamVid: 11 classes such as road, car, pedestrian); "
    "this image looks unlike them, so their masks are guesses in street classes, not a reading of what is there."
)
IN_DISTRIBUTION_MESSAGE = "This image looks like the street scenes these models were trained on."


@dataclass(frozen=True)
class LayoutPrior:
    """Class frequencies per cell of a coarse grid over the training labels: ``probs`` (C, gh, gw), each cell
    summing to 1 over the classes. Image positions map to cells proportionally, whatever the image size."""

    probs: np.ndarray

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=np.float64)
        if p.ndim != 3 or min(p.shape) < 1:
            raise ValueError(f"a layout prior is (C, gh, gw), got shape {p.shape}")
        if not np.all(p > 0):
            raise ValueError("a layout prior needs every probability > 0 (smooth the counts)")
        object.__setattr__(self, "probs", p)

    @classmethod
    def from_counts(cls, counts: np.ndarray, smoothing: float = 0.01) -> LayoutPrior:
        """From per-cell class pixel counts (C, gh, gw): each cell gets ``smoothing`` of its mass spread
        uniformly over the classes, so no class is impossible anywhere."""
        c = np.asarray(counts, dtype=np.float64)
        if c.ndim != 3:
            raise ValueError(f"counts must be (C, gh, gw), got shape {c.shape}")
        total = c.sum(0, keepdims=True)
        if np.any(total <= 0):
            raise ValueError("every grid cell needs at least one labelled pixel")
        p = (c + smoothing * total / c.shape[0]) / (total * (1 + smoothing))
        return cls(p)

    @staticmethod
    def cell_index(h: int, w: int, grid: tuple[int, int]) -> np.ndarray:
        """(h, w) int64 cell number (row-major on the ``grid``) of every pixel of an h x w map."""
        gh, gw = grid
        rows = (np.arange(h) * gh // h).astype(np.int64)
        cols = (np.arange(w) * gw // w).astype(np.int64)
        return rows[:, None] * gw + cols[None, :]

    def score(self, labels: np.ndarray) -> float:
        """``-mean log prior(label | cell)`` over the pixels of an (h, w) label map (labels >= C are skipped)."""
        labels = np.asarray(labels)
        c, gh, gw = self.probs.shape
        if labels.ndim != 2:
            raise ValueError(f"labels must be (h, w), got shape {labels.shape}")
        cells = self.cell_index(*labels.shape, (gh, gw))
        valid = labels < c
        if not valid.any():
            raise ValueError("no pixel has a label the prior knows")
        counts = np.bincount((cells[valid] * c + labels[valid]).ravel(), minlength=gh * gw * c)
        neg_log = -np.log(self.probs.transpose(1, 2, 0).reshape(-1))  # (gh * gw * C,), cell-major like the counts
        return float(counts @ neg_log / counts.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.probs.shape), "probs": [round(float(v), 6) for v in self.probs.ravel()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayoutPrior:
        return cls(np.asarray(data["probs"], dtype=np.float64).reshape(data["shape"]))


COMPONENTS = ("msp", "entropy", "energy", "layout")


def component_scores(logits: np.ndarray, prior: LayoutPrior | None = None, only: Iterable[str] | None = None) -> dict[str, float]:
    """The component scores of one image from its (C, h, w) logits (any float dtype); higher = less like the
    training data. ``layout`` is included when a ``prior`` with the same number of classes is given; ``only``
    (names of :data:`COMPONENTS`) computes just those (a calibration needs two: half the time at 360x480)."""
    want = set(COMPONENTS if only is None else only)
    z = np.asarray(logits, dtype=np.float32)
    if z.ndim != 3 or z.shape[0] < 2:
        raise ValueError(f"logits must be (C, h, w) with C >= 2, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    c = z.shape[0]
    out = {}
    if want & {"msp", "entropy", "energy"}:
        m = z.max(0)
        zm = z - m
        e = np.exp(zm)  # (C, h, w), the max class is 1
        s = e.sum(0)  # (h, w)
        log_s = np.log(s)
        if "msp" in want:
            out["msp"] = float(1.0 - (1.0 / s).mean())  # the max probability: exp(0) / sum
        if "entropy" in want:  # entropy = log s - sum(e * (z - m)) / s
            out["entropy"] = float((log_s - (e * zm).sum(0) / s).mean() / np.log(c))
        if "energy" in want:
            out["energy"] = float(-(m + log_s).mean())
    if prior is not None and "layout" in want:
        if prior.probs.shape[0] != c:
            raise ValueError(f"the layout prior has {prior.probs.shape[0]} classes, the logits {c}")
        out["layout"] = prior.score(z.argmax(0))
    return out


@dataclass(frozen=True)
class OodResult:
    """One image's verdict: ``score`` (the calibrated method's, higher = less like the training data), the
    ``threshold`` above which it is flagged, ``flagged``, the components, and a plain-language ``message``."""

    score: float
    threshold: float
    flagged: bool
    method: str
    checkpoint: str
    components: dict[str, float]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 4), "threshold": round(self.threshold, 4), "flagged": self.flagged,
            "method": self.method, "checkpoint": self.checkpoint,
            "components": {k: round(v, 4) for k, v in self.components.items()}, "message": self.message,
        }


@dataclass(frozen=True)
class OodCalibration:
    """A calibrated OOD method for one checkpoint (an entry of ``workbench/inference/ood.json``).

    ``components``: ``[(name, mean, std)]`` measured on the in-distribution calibration images; the score is the
    mean of ``(component - mean) / std``. ``threshold``: images scoring above it are flagged.
    """

    checkpoint: str
    sha256: str
    components: tuple[tuple[str, float, float], ...]
    threshold: float
    prior: LayoutPrior | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError("an OOD method needs at least one component score")
        for name, _, std in self.components:
            if name not in COMPONENTS:
                raise ValueError(f"unknown OOD component {name!r}; known: {', '.join(COMPONENTS)}")
            if not std > 0:
                raise ValueError(f"component {name!r} has std {std}; it must be > 0")
        if any(n == "layout" for n, _, _ in self.components) and self.prior is None:
            raise ValueError("the 'layout' component needs a layout prior")

    @property
    def method(self) -> str:
        return "+".join(n for n, _, _ in self.components)

    def combine(self, scores: dict[str, float]) -> float:
        """The method's score from component scores (a dict with at least the method's components)."""
        return float(np.mean([(scores[n] - mean) / std for n, mean, std in self.components]))

    def score_logits(self, logits: np.ndarray) -> OodResult:
        """Score one image's (C, h, w) logits and compare with the threshold."""
        names = [n for n, _, _ in self.components]
        comps = component_scores(logits, self.prior if "layout" in names else None, only=names)
        s = self.combine(comps)
        flagged = s > self.threshold
        return OodResult(s, self.threshold, flagged, self.method, self.checkpoint, comps, OOD_MESSAGE if flagged else IN_DISTRIBUTION_MESSAGE)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "checkpoint": self.checkpoint, "sha256": self.sha256, "method": self.method,
            "components": [{"name": n, "mean": m, "std": s} for n, m, s in self.components],
            "threshold": self.threshold, **self.info,
        }
        if self.prior is not None:
            out["layout_prior"] = self.prior.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OodCalibration:
        known = {"checkpoint", "sha256", "method", "components", "threshold", "layout_prior"}
        try:
            comps = tuple((str(c["name"]), float(c["mean"]), float(c["std"])) for c in data["components"])
            prior = LayoutPrior.from_dict(data["layout_prior"]) if data.get("layout_prior") else None
            return cls(str(data["checkpoint"]), str(data["sha256"]), comps, float(data["threshold"]), prior,
                       {k: v for k, v in data.items() if k not in known})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed OOD calibration entry: {exc!r}") from None


def _ood_path(path: str | os.PathLike | None) -> Path:
    return Path(path) if path is not None else OOD_FILE


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> tuple[OodCalibration, ...]:
    data = json.loads(Path(path).read_text())
    if data.get("format") != "workbench-ood":
        raise ValueError(f"{path}: not a workbench OOD calibration (format {data.get('format')!r})")
    return tuple(OodCalibration.from_dict(e) for e in data.get("calibrations", []))


def load_calibrations(path: str | os.PathLike | None = None) -> tuple[OodCalibration, ...]:
    """The calibrations in ``workbench/inference/ood.json`` (or ``path``), in preference order; empty if the file is absent."""
    p = _ood_path(path)
    if not p.is_file():
        return ()
    return _load(str(p), p.stat().st_mtime_ns)


def calibration_for(sha256: str | None, path: str | os.PathLike | None = None) -> OodCalibration | None:
    """The calibration made for the checkpoint whose weights have this sha256, or ``None``: a score calibrated
    on one model's logits means nothing for another's."""
    if not sha256:
        return None
    return next((c for c in load_calibrations(path) if c.sha256 == sha256), None)


def assess(logits: np.ndarray, sha256: str | None, path: str | os.PathLike | None = None) -> OodResult | None:
    """The OOD verdict for one image's (C, h, w) logits from the checkpoint with weights ``sha256``
    (e.g. ``Prediction.logits_work`` and ``predictor.manifest.sha256``); ``None`` when that checkpoint has no
    calibration."""
    cal = calibration_for(sha256, path)
    return None if cal is None else cal.score_logits(logits)
