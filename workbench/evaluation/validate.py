"""The one validation routine: a model's predictions over a dataset, summed into one confusion matrix.

Both the trainer's validation (logits at the training precision, each rank a shard of the split) and
:func:`workbench.evaluation.evaluate.evaluate_model` (softmax probabilities, optionally with
test-time augmentation, plus per-image records and latency) go through :func:`accumulate_confusion`;
they differ only in the ``predict`` they pass. Dataset metrics come from the one matrix
(:meth:`~workbench.evaluation.metrics.ConfusionMatrix.compute`), never from averaging per-image
scores.

This module sits below training in the layer order (as timm keeps its metrics in ``timm.utils``):
it imports only metrics and the shared constants.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..classes import IGNORE_INDEX
from .metrics import ConfusionMatrix

__all__ = ["Scored", "accumulate_confusion", "plain_tensor"]


def plain_tensor(x) -> torch.Tensor:
    """A plain tensor from a tensor subclass (tv_tensors), numpy array or PIL image."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


@dataclass
class Scored:
    """One item after prediction, as :func:`accumulate_confusion` hands it to ``on_item``."""

    index: int  # the dataset index
    item: dict[str, Any]  # the dataset's item: "image", "mask", "name", ...
    labels: torch.Tensor  # (H, W) int64 predicted classes, on the predictions' device
    counts: torch.Tensor  # (C, C) this item's confusion matrix
    latency_ms: float | None  # predict + argmax with the device synchronised (``timed=True``), else None


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def accumulate_confusion(
    dataset,
    predict: Callable[[int, dict], torch.Tensor],
    *,
    indices: Iterable[int],
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    device: torch.device | None = None,
    on_item: Callable[[Scored], None] | None = None,
    timed: bool = False,
    errors: type[Exception] | None = None,
    distributed: bool = False,
) -> ConfusionMatrix | None:
    """Predict ``dataset[i]`` for every ``i`` in ``indices`` and count the labels against the item's ``"mask"``.

    Args:
        dataset: items ``{"image", "mask", "name"}`` (the mask an integer (H, W) label map).
        predict: ``(index, item)`` -> ``(C, H, W)`` class scores (logits or probabilities); the routine takes their argmax.
        indices: which items, in order (e.g. ``range(rank, n, world)`` for this rank's shard, or a progress bar).
        num_classes: size of the matrix; ``None``: ``C`` of the first prediction (the matrix is then made lazily).
        ignore_index: target value counted nowhere.
        device: where the matrix lives (default: where the first prediction is) and which device ``timed`` synchronises.
        on_item: called with each :class:`Scored` item (per-image records, extra metrics).
        timed: measure each item's predict + argmax, synchronising ``device`` before and after.
        errors: wrap a label outside the classes (``ConfusionMatrix.update``'s ValueError) in this
            exception type, prefixed with the item's name; ``None`` lets it through unchanged.
        distributed: sum the matrix over all ``torch.distributed`` ranks (when a process group is
            up): every rank must call this, with a ``num_classes`` so that a rank with no items
            still takes part.

    Returns:
        The matrix; ``None`` if no item was predicted and no ``num_classes`` was given.
    """
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) if num_classes is not None else None
    for i in indices:
        item = dataset[i]
        if timed:
            _sync(device)
            t0 = time.perf_counter()
        scores = predict(i, item)  # (C, H, W)
        labels = scores.argmax(0)  # (H, W)
        latency_ms = None
        if timed:
            _sync(device)
            latency_ms = (time.perf_counter() - t0) * 1e3
        if cm is None:
            cm = ConfusionMatrix(scores.shape[0], ignore_index=ignore_index, device=device if device is not None else labels.device)
        mask = plain_tensor(item["mask"])
        try:
            counts = cm.update(labels, mask)
        except ValueError as exc:
            if errors is None:
                raise
            raise errors(f"{item.get('name', i)}: {exc}") from None
        if on_item is not None:
            on_item(Scored(i, item, labels, counts, latency_ms))
    if distributed and cm is not None:
        cm.all_reduce()
    return cm
