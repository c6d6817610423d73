"""Samplers and collate of the training data: reproducible order and augmentation, resumable mid-epoch.

* :class:`EpochSampler` yields ``(epoch, index)`` pairs in the order of a :class:`DistributedSampler`
  (one replica when not distributed), so the batch order is a pure function of (seed, epoch) and a
  resumed epoch can skip the samples it already trained on;
* :class:`SeededView` applies a transform with an RNG seeded by (seed, epoch, index), so every
  augmentation is a pure function of those three numbers;
* :func:`collate` stacks samples into the batch dict the trainer takes (the device loader makes the
  same dicts on the device).

Both training pipelines (:mod:`workbench.data.loaders`) use these.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["EpochSampler", "SeededView", "collate"]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` so the dataset can seed each sample's augmentation.

    Wraps a :class:`DistributedSampler` (one replica when not distributed) and can
    skip the first ``skip`` samples of the epoch (mid-epoch resume).
    """

    def __init__(self, base: DistributedSampler, epoch: int = 0, skip: int = 0) -> None:
        self.base, self.epoch, self.skip = base, epoch, skip

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.base.set_epoch(epoch)

    def __iter__(self):
        indices = list(self.base)[self.skip :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return len(self.base) - self.skip


class SeededView(Dataset):
    """Applies ``transform`` with an RNG seeded by (seed, epoch, index): augmentation is reproducible."""

    def __init__(self, dataset: Dataset, transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample = self.dataset[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + index)
            sample = self.transform(sample)
        return sample


def collate(batch: list[dict]) -> dict:
    """Samples -> ``{"image": float (B, C, H, W), "mask": int64 (B, H, W), ["weight": float32 (B, H, W)], ["teacher": (B, C', H, W)], "name": [str]}``."""
    out = {"image": torch.stack([torch.as_tensor(b["image"]) for b in batch]), "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]).long()}
    if "weight" in batch[0]:
        out["weight"] = torch.stack([torch.as_tensor(b["weight"]) for b in batch]).float()
    if "teacher" in batch[0]:  # a distillation teacher's quantised log-probabilities (workbench distill)
        out["teacher"] = torch.stack([torch.as_tensor(b["teacher"]).as_subclass(torch.Tensor) for b in batch])
    out["name"] = [b.get("name", "") for b in batch]
    return out
