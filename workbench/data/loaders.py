"""The training loader: one builder for both data pipelines, used by the trainer and ``workbench bench-data``.

``pipeline="dataloader"``: a :class:`~torch.utils.data.DataLoader` of CPU workers over a
:class:`~workbench.data.sampling.SeededView` (augmentation seeded per (seed, epoch, index)) with
:func:`~workbench.data.sampling.collate`. ``pipeline="device"``: a
:class:`~workbench.data.device.DeviceLoader` that keeps the split on ``device`` and augments there
(the same augmentations, drawn per (seed, rank, epoch, batch)). Either way the batch order comes
from one :class:`~workbench.data.sampling.EpochSampler` over a
:class:`~torch.utils.data.DistributedSampler` (shuffled by ``seed``, ``drop_last``, this rank's
shard), which the caller steps with ``set_epoch(epoch, skip=...)``.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..classes import IGNORE_INDEX
from .device import DeviceLoader
from .sampling import EpochSampler, SeededView, collate
from .transforms import eval_transforms, train_transforms

__all__ = ["PIPELINES", "TrainLoader", "build_train_loader"]

PIPELINES = ("dataloader", "device")


class TrainLoader(NamedTuple):
    loader: DataLoader | DeviceLoader  # iterate it for one epoch of batch dicts
    sampler: EpochSampler  # the epoch, the resume skip and the shard: ``sampler.set_epoch(epoch, skip)``


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly (a terminal sends it to all)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def build_train_loader(
    dataset: Dataset,
    *,
    pipeline: str,
    batch_size: int,
    device: torch.device,
    crop: Sequence[int] | None,
    scale: Sequence[float],
    hflip: bool,
    vflip: bool,
    color_jitter: float,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
    channels_last: bool = False,
    seed: int = 0,
    workers: int = 2,
    rank: int = 0,
    world: int = 1,
) -> TrainLoader:
    """The training batches of ``dataset`` (untransformed samples) for one process.

    Args:
        dataset: a :mod:`workbench.data` dataset with ``transform=None``.
        pipeline: ``"dataloader"`` (CPU workers) or ``"device"`` (the split on ``device``, augmented there).
        batch_size: per process; incomplete batches are dropped.
        device: the training device (pinned memory for CUDA; where the device pipeline works).
        crop, scale, hflip, vflip, color_jitter: the augmentation (:func:`~workbench.data.transforms.train_transforms`);
            ``crop=None`` trains on whole images without augmentation.
        mean, std: normalisation of the [0, 1] image.
        ignore_index: mask value of padding.
        channels_last: the device pipeline returns channels_last images (the DataLoader's are converted by the trainer).
        seed: order and augmentation draws.
        workers: DataLoader worker processes (0: load in the main process).
        rank, world: this process's shard of a distributed run.

    Raises:
        ValueError: an unknown pipeline, or fewer images than one batch per process.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    if len(base) // batch_size < 1:
        raise ValueError(f"{len(dataset)} training images are fewer than one batch of {batch_size} per process")
    sampler = EpochSampler(base)
    if pipeline == "device":
        # same sampler (order, shard, resume skip), same augmentations, run on the device in batches
        loader = DeviceLoader(
            dataset, sampler=sampler, batch_size=batch_size, device=device, crop=crop, scale=scale, hflip=hflip, vflip=vflip,
            color_jitter=color_jitter, mean=mean, std=std, ignore_index=ignore_index, channels_last=channels_last, seed=seed,
        )
        return TrainLoader(loader, sampler)
    if crop is not None:
        tf = train_transforms(tuple(crop), scale=tuple(scale), hflip=hflip, vflip=vflip, color_jitter=color_jitter, mean=mean, std=std, ignore_index=ignore_index)
    else:
        tf = eval_transforms(mean=mean, std=std)
    workers = max(0, workers)
    loader = DataLoader(
        SeededView(dataset, tf, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=workers > 0,  # the epoch travels with each index, so workers can live on
        pin_memory=torch.device(device).type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # keeps the loader off the global RNG (dropout stays resumable)
        worker_init_fn=ignore_sigint if workers > 0 else None,
    )
    return TrainLoader(loader, sampler)
