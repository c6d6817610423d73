"""Segmentation metrics: one confusion matrix, and the ISBI 2012 membrane metrics.

Everything here is pure computation (torch, numpy, scipy), no I/O.

Multi-class metrics come from a single accumulated ``(C, C)`` confusion
matrix (rows = ground truth, columns = prediction), so dataset-level numbers
are *global*: the IoU of a class is ``TP / (TP + FP + FN)`` summed over every
pixel of every image, not a mean of per-image IoUs. Pixels whose target is the
ignore index (255, void) count nowhere::

    cm = ConfusionMatrix(num_classes=11)
    for pred, target in batches:          # integer tensors of the same shape
        cm.update(pred, target)
    cm.compute()["miou"]

Binary metrics for the ISBI 2012 membranes (label 0 = membrane, 1 = cell):
:func:`pixel_error`, :func:`foreground_iou` and :func:`rand_error`, the
challenge's foreground-restricted Rand error (see its docstring for the exact
variant).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage

from ..classes import IGNORE_INDEX

__all__ = [
    "ConfusionMatrix",
    "segmentation_metrics",
    "pixel_error",
    "foreground_iou",
    "rand_scores",
    "rand_error",
]


def _as_long_tensor(x, what: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor of class indices, got dtype {t.dtype}")
    return t.long()


class ConfusionMatrix:
    """Accumulates a ``(num_classes, num_classes)`` int64 confusion matrix.

    ``matrix[t, p]`` counts the pixels of target class ``t`` predicted as ``p``.

    Args:
        num_classes: number of classes ``C``; predictions must be in ``[0, C)``.
        ignore_index: target value that is skipped (default 255); any other target
            value outside ``[0, C)`` is an error.
        device: where the matrix lives (default CPU). Inputs on another device are
            counted there and only the ``(C, C)`` counts are moved.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX, device: str | torch.device | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, pixels={int(self.matrix.sum())})"

    def update(self, pred, target) -> torch.Tensor:
        """Count ``pred`` against ``target`` (integer tensors or arrays of the same shape).

        Returns:
            The ``(C, C)`` matrix of this update alone (the running total is ``self.matrix``).

        Raises:
            ValueError: shapes differ, or a counted prediction / target lies outside ``[0, C)``.
            TypeError: floating-point inputs (pass class indices, e.g. ``logits.argmax(1)``).
        """
        p = _as_long_tensor(pred, "pred")
        t = _as_long_tensor(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
        if t.device != p.device:
            t = t.to(p.device)
        p, t = p.reshape(-1), t.reshape(-1)
        if self.ignore_index is not None:
            keep = t != self.ignore_index
            p, t = p[keep], t[keep]
        c = self.num_classes
        if t.numel():
            lo = torch.minimum(p.min(), t.min()).item()
            hi = torch.maximum(p.max(), t.max()).item()
            if lo < 0 or hi >= c:
                bad_t = t[(t < 0) | (t >= c)]
                if bad_t.numel():
                    raise ValueError(f"target value {bad_t[0].item()} is outside [0, {c}) and is not the ignore index {self.ignore_index}")
                bad_p = p[(p < 0) | (p >= c)]
                raise ValueError(f"prediction value {bad_p[0].item()} is outside [0, {c})")
        counts = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        counts = counts.to(self.matrix.device)
        self.matrix += counts
        return counts

    def reset(self) -> ConfusionMatrix:
        self.matrix.zero_()
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this matrix (same ``num_classes`` and ``ignore_index``)."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge another ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) "
                f"into a {self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ``torch.distributed`` ranks (no-op when not initialised).

        With the NCCL backend a CPU matrix is reduced via the current CUDA device
        and copied back.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        m = self.matrix
        if dist.get_backend() == "nccl" and m.device.type != "cuda":
            buf = m.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            self.matrix.copy_(buf.cpu())
        else:
            dist.all_reduce(m, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """Metrics of the accumulated matrix; see :func:`segmentation_metrics`."""
        return segmentation_metrics(self.matrix)


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def segmentation_metrics(confusion: torch.Tensor) -> dict[str, Any]:
    """Metrics from one ``(C, C)`` confusion matrix (rows = target, columns = prediction).

    Returns a dict of plain Python numbers and lists:

    * ``per_class_iou``: ``TP / (TP + FP + FN)`` per class; ``nan`` where the class is
      absent from both target and prediction (union 0).
    * ``miou``: mean of ``per_class_iou`` over the classes that are not ``nan``.
    * ``pixel_accuracy``: global accuracy, ``trace / total``.
    * ``per_class_accuracy``: recall ``TP / (TP + FN)``; ``nan`` where the class is
      absent from the target.
    * ``mean_class_accuracy``: mean of ``per_class_accuracy`` over non-``nan`` classes.
    * ``support``: target pixels per class; ``n_pixels``: counted (non-ignored) pixels.
    * ``confusion``: the matrix as a nested list of ints.

    Every value is ``nan`` (never an exception) when nothing was counted.
    """
    m = torch.as_tensor(confusion).detach().to("cpu")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {tuple(m.shape)}")
    mf = m.to(torch.float64)
    tp = torch.diagonal(mf)
    gt = mf.sum(1)
    pr = mf.sum(0)
    union = gt + pr - tp
    nan = torch.tensor(math.nan, dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = float(mf.sum())
    return {
        "per_class_iou": iou.tolist(),
        "miou": _nanmean(iou),
        "pixel_accuracy": float(tp.sum()) / total if total > 0 else math.nan,
        "per_class_accuracy": acc.tolist(),
        "mean_class_accuracy": _nanmean(acc),
        "support": [int(v) for v in m.sum(1).tolist()],
        "n_pixels": int(m.sum()),
        "confusion": m.to(torch.int64).tolist(),
    }


# ----------------------------------------------------------------------------- binary / EM metrics


def _binary_inputs(pred, target, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    for a, what in ((p, "pred"), (t, "target")):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise TypeError(f"{what} must hold integer labels, got dtype {a.dtype}")
    valid = t != ignore_index if ignore_index is not None else np.ones(t.shape, bool)
    return p, t, valid


def pixel_error(pred, target, *, ignore_index: int | None = IGNORE_INDEX) -> float:
    """``1 - accuracy`` over the pixels whose target is not ``ignore_index`` (``nan`` if none)."""
    p, t, valid = _binary_inputs(pred, target, ignore_index)
    n = int(valid.sum())
    return float((p[valid] != t[valid]).sum()) / n if n else math.nan


def foreground_iou(pred, target, foreground: int = 1, *, ignore_index: int | None = IGNORE_INDEX) -> float:
    """IoU of the ``foreground`` label over non-ignored pixels (``nan`` if it is absent from both)."""
    p, t, valid = _binary_inputs(pred, target, ignore_index)
    pf, tf = (p == foreground) & valid, (t == foreground) & valid
    union = int((pf | tf).sum())
    return float((pf & tf).sum()) / union if union else math.nan


def rand_scores(pred, target, foreground: int = 1, *, ignore_index: int | None = IGNORE_INDEX, connectivity: int = 1) -> dict[str, float]:
    """Foreground-restricted Rand scores of the ISBI 2012 challenge (``V_rand``), for one 2D image.

    The variant implemented is the challenge's final metric as computed by Fiji's
    ``trainableSegmentation.metrics.RandError.foregroundRestrictedStatsN2``
    (Arganda-Carreras et al., Front. Neuroanat. 2015), i.e. the SNEMI3D
    "adapted Rand" with N^2 normalisation (pairs drawn *with* replacement):

    1. Both maps are binarised (``== foreground``) and cut into cells by connected
       components of the foreground (``scipy.ndimage.label``; ``connectivity=1`` is
       4-connectivity as in Fiji, 2 is 8-connectivity). Ground truth = segments
       ``S_i``, prediction = segments ``T_j``; label 0 = boundary / background.
    2. Only the ``n`` pixels inside ground-truth cells count (GT membrane and
       ignore pixels are excluded). ``p_ij`` = fraction of them in ``S_i`` and
       ``T_j``; ``p_i0`` = fraction in ``S_i`` that the prediction calls boundary.
       Each such predicted-boundary pixel is its own singleton segment.
    3. ``sum_AB = sum_{i,j>0} p_ij^2 + sum_i p_i0 / n``,
       ``sum_B = sum_{j>0} (sum_i p_ij)^2 + sum_i p_i0 / n``,
       ``sum_A = sum_i (sum_j p_ij)^2`` (``j`` over all columns, 0 included).
    4. ``precision = sum_AB / sum_B`` (penalises merges), ``recall = sum_AB / sum_A``
       (penalises splits), ``f_score = V_rand = 2PR / (P + R)``, ``error = 1 - V_rand``.

    Not included: the challenge's sweep over binarisation thresholds of a
    probability map (here the prediction is already a label map) and its border
    thinning. scikit-image's ``adapted_rand_error`` uses pairs *without* replacement
    (``n(n-1)``) and treats predicted label 0 as one segment, so its numbers differ
    slightly.

    Returns:
        ``{"precision", "recall", "f_score", "error", "n_pixels"}``; the scores are
        ``nan`` when the ground truth has no foreground pixel.
    """
    p, t, valid = _binary_inputs(pred, target, ignore_index)
    if p.ndim != 2:
        raise ValueError(f"rand_scores expects 2D label maps, got shape {p.shape}")
    structure = ndimage.generate_binary_structure(2, connectivity)
    gt_seg, _ = ndimage.label((t == foreground) & valid, structure=structure)
    pr_seg, _ = ndimage.label(p == foreground, structure=structure)
    inside = gt_seg > 0
    n = int(inside.sum())
    if n == 0:
        return {"precision": math.nan, "recall": math.nan, "f_score": math.nan, "error": math.nan, "n_pixels": 0}
    a = gt_seg[inside].astype(np.int64)
    b = pr_seg[inside].astype(np.int64)
    n0 = int((b == 0).sum())  # GT-foreground pixels predicted as boundary: singletons
    pairs = a[b > 0] * (int(b.max()) + 1) + b[b > 0]
    _, n_ij = np.unique(pairs, return_counts=True)
    n_i = np.bincount(a)
    n_j = np.bincount(b[b > 0])
    # counts squared; the common 1 / n^2 normalisation cancels in the ratios
    sum_ab = float((n_ij.astype(np.float64) ** 2).sum()) + n0
    sum_a = float((n_i.astype(np.float64) ** 2).sum())
    sum_b = float((n_j.astype(np.float64) ** 2).sum()) + n0
    precision = sum_ab / sum_b
    recall = sum_ab / sum_a
    f = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f_score": f, "error": 1.0 - f, "n_pixels": n}


def rand_error(pred, target, foreground: int = 1, *, ignore_index: int | None = IGNORE_INDEX, connectivity: int = 1) -> float:
    """ISBI 2012 foreground-restricted Rand error ``1 - V_rand`` of one 2D image; see :func:`rand_scores`."""
    return rand_scores(pred, target, foreground, ignore_index=ignore_index, connectivity=connectivity)["error"]
