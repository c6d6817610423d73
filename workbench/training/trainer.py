"""``workbench train``: turn any registered architecture into a trained, evaluated checkpoint.

One loop for CPU, GPU and multi-process runs:

* config from CLI flags or a YAML/TOML file (flags win); the resolved config is
  written to ``<out>/config.yaml``;
* bf16 autocast + channels_last where the hardware has native bf16 (measured
  about 2x on a 2-core EPYC), fp16 AMP with a grad scaler on older GPUs;
* every augmentation is a pure function of (seed, epoch, sample index) and the
  batch order of (seed, epoch), so a resumed run repeats exactly what the
  uninterrupted one would have done;
* ``data_on_device`` (default on for CUDA without DDP) keeps the whole training
  split on the device and augments batches there (:mod:`workbench.device_data`,
  the same augmentations, drawn per (seed, epoch, batch)) instead of a
  DataLoader of CPU workers; validation is the same either way;
* ``<out>/resume.safetensors`` (model, optimizer, scheduler, RNG, counters, in
  one atomically written file) every epoch and every ``save_every_steps``
  steps: a run killed with SIGKILL at any moment loses at most the work since;
* SIGINT (Ctrl-C) and SIGTERM stop a single-process run at the end of the step in progress, after
  saving its resume state (exit status 130 or 143; a second signal stops at once), so ``--resume``
  loses nothing;
* ``<out>/best.{safetensors,json}`` (by validation mIoU) and ``last.*``
  checkpoints, ``metrics.jsonl`` and ``curves.png``;
* under ``torchrun`` it runs DistributedDataParallel with a DistributedSampler
  (gloo on CPU, NCCL on GPU, optional SyncBatchNorm on GPU); only rank 0 writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..io.checkpoint import atomic_write_bytes, save_checkpoint
from ..classes import IGNORE_INDEX, default_normalization
from ..inference.predictor import autocast_context, cpu_supports_bf16
from ..models.registry import create_model
from ..io.state import load_state, save_state

__all__ = ["TrainConfig", "TrainingInterrupted", "train", "main", "build_parser", "config_from_args"]


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field comments say why the default is what it is."""

    # model
    arch: str = "unet"
    encoder: str | None = None  # None: the architecture's default (resnet10t for the classic designs)
    upsample: str | None = None  # None: the architecture's default
    model_kwargs: dict = field(default_factory=dict)  # architecture options, e.g. {"variant": "fc_densenet67"}
    init_from: str | None = None  # a checkpoint manifest (.json) whose weights start the run (fine-tuning); same architecture and kwargs
    # data
    dataset: str = "camvid"
    data_root: str | None = None  # None: $WORKBENCH_DATA_ROOT, then ../shared/data
    dataset_options: dict = field(default_factory=dict)  # e.g. {"path": "my_data"} for dataset "folder"
    train_split: str = "train"
    val_split: str = "val"
    crop: list[int] | None = field(default_factory=lambda: [224, 224])  # random crop (H, W); None trains on whole images
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random rescale range before cropping
    hflip: bool = True
    vflip: bool = False  # off for street scenes (the sky is up); useful for microscopy
    color_jitter: float = 0.2  # brightness/contrast/saturation strength, image only
    cache: bool = True  # keep decoded images in memory (CamVid train is ~190 MB)
    data_on_device: str = "auto"  # auto | on | off: whole train split on the training device, augmented there (auto: on CUDA without DDP)
    # optimisation
    epochs: int = 100
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    batch_size: int = 8  # per process
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    scheduler: str = "poly"  # poly | cosine | constant (per step, after linear warm-up)
    warmup_steps: int = 100
    grad_clip: float | None = None
    ema_decay: float | None = None  # keep an exponential moving average of the weights (timm ModelEmaV3); validation and checkpoints use it
    ema_warmup: bool = False  # timm's warm-up: decay min(ema_decay, 1 - (1 + step)^(-2/3)), so a from-scratch start fades fast
    loss: str = "ce"  # e.g. "ce", "ce+0.5*dice", "ce+lovasz"
    class_weights: str = "none"  # none | median | inverse | segnet (CamVid reference weights)
    border_weights: bool = False  # U-Net border weighting (w0=10, sigma=5); needs a dataset of touching objects
    border_w0: float = 10.0
    border_sigma: float = 5.0
    # runtime
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward/backward (validation stays eager: full-size images)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    workers: int = 2
    seed: int = 0
    val_every: int = 5  # validate every N epochs (and after the last)
    val_limit: int | None = None  # validate on the first N images only
    save_every_steps: int | None = None  # extra resume points inside an epoch
    save_dtype: str = "float16"  # dtype of the best/last checkpoint weights (resume state stays fp32)
    out: str = "runs/run"
    resume: bool = False

    def validate(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.scheduler not in ("poly", "cosine", "constant"):
            raise ValueError(f"scheduler must be 'poly', 'cosine' or 'constant', got {self.scheduler!r}")
        if self.class_weights not in ("none", "median", "inverse", "segnet"):
            raise ValueError(f"class_weights must be none, median, inverse or segnet, got {self.class_weights!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.data_on_device not in ("auto", "on", "off"):
            raise ValueError(f"data_on_device must be auto, on or off, got {self.data_on_device!r}")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"save_dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 32):
            raise ValueError(f"crop must be two sizes >= 32 (H W), got {self.crop}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1 (e.g. 0.99: an average over about 100 steps), got {self.ema_decay}")
        if self.ema_warmup and self.ema_decay is None:
            raise ValueError("ema_warmup warms up the weight average: it needs ema_decay (e.g. --ema-decay 0.99 --ema-warmup)")


class TrainingInterrupted(Exception):
    """A signal stopped the run at a step boundary; its resume state holds every finished step."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process, which stops the run cleanly (a terminal sends it to all)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- data plumbing


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


def _collate(batch: list[dict]) -> dict:
    out = {"image": torch.stack([torch.as_tensor(b["image"]) for b in batch]), "mask": torch.stack([torch.as_tensor(b["mask"]) for b in batch]).long()}
    if "weight" in batch[0]:
        out["weight"] = torch.stack([torch.as_tensor(b["weight"]) for b in batch]).float()
    out["name"] = [b.get("name", "") for b in batch]
    return out


# ----------------------------------------------------------------------------- runtime helpers


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    precision = cfg.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_supports_bf16() else "fp32"
    return Runtime(rank, world, local_rank, device, precision)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(cfg: TrainConfig, total_steps: int):
    warm = max(0, min(cfg.warmup_steps, total_steps // 2))

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.scheduler == "poly":
            return (1 - t) ** 0.9
        if cfg.scheduler == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return f


# kwargs that change how a network trains but not the function it computes at inference: where the start
# weights came from, and dropout (identity in eval mode, no parameters). A fine-tune may change them.
TRAINING_ONLY_KWARGS = frozenset({"encoder_weights", "dropout"})


def _comparable_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in TRAINING_ONLY_KWARGS}


def _init_weights(model: nn.Module, path: str) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (fine-tuning) and return its provenance for the new manifest.

    The checkpoint goes through :func:`load_checkpoint` (safetensors, hash check,
    shapes). Its architecture and kwargs must equal the run's (apart from
    :data:`TRAINING_ONLY_KWARGS`), so the new checkpoint is the same network
    trained further; anything else is refused with the differences named.
    """
    from ..io.checkpoint import CheckpointError, load_checkpoint

    try:
        source, manifest = load_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"--init-from {path}: {exc}") from None
    want, have = model.workbench_config, source.workbench_config
    if want["architecture"] != have["architecture"]:
        raise ValueError(f"--init-from {path}: the checkpoint is a {have['architecture']!r}, this run trains {want['architecture']!r}")
    a, b = _comparable_kwargs(want["kwargs"]), _comparable_kwargs(have["kwargs"])
    if a != b:
        diff = ", ".join(f"{k}: run {a.get(k)!r} vs checkpoint {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        raise ValueError(f"--init-from {path}: the checkpoint's {have['architecture']} differs from this run's ({diff}); pass the same --encoder/--upsample/--model-kwargs")
    model.load_state_dict(source.state_dict(), strict=True)
    val = ((manifest.get("metrics") or {}).get("val") or {}).get("miou")
    return {
        "checkpoint": Path(manifest["_path"]).name,
        "weights_sha256": manifest["weights"]["sha256"],
        "val_miou": val,
        "training": manifest.get("training"),  # the run that made the start weights: command, config, epochs, hardware
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- the run


class Trainer:
    """One training run. ``Trainer(cfg).fit()``; see the module docstring."""

    def __init__(self, cfg: TrainConfig, command: str | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.rt = setup_runtime(cfg)
        from ..data.device import resolve_data_on_device

        self.data_pipeline = "device" if resolve_data_on_device(cfg.data_on_device, self.rt.device, self.rt.world) else "dataloader"
        self.out = Path(cfg.out)
        self._prepare_out_dir()
        self.resuming = cfg.resume and (self.out / "resume.safetensors").exists()
        seed_everything(cfg.seed)
        self._build_data()
        self._build_model()
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_miou, self.best_epoch = -1.0, -1
        self.wall_time = 0.0
        self.epoch_stats = {"loss_sum": 0.0, "steps": 0, "images": 0, "seconds": 0.0}  # of the current epoch, kept across resumes
        self.stop_signal: int | None = None  # set by a SIGINT/SIGTERM handler: stop after the step in progress
        if self.resuming:
            self._load_resume()

    # -- setup

    def _prepare_out_dir(self) -> None:
        cfg = self.cfg
        state = self.out / "resume.safetensors"
        if state.exists() and not cfg.resume:
            raise FileExistsError(f"{self.out} already holds a training run; pass --resume to continue it or choose another --out")
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            import yaml

            text = yaml.safe_dump({"command": self.command, "data_pipeline": self.data_pipeline, **dataclasses.asdict(cfg)}, sort_keys=False)
            atomic_write_bytes(self.out / "config.yaml", text.encode())

    def _build_data(self) -> None:
        from ..data.datasets import build_dataset
        from ..data.transforms import eval_transforms, train_transforms

        cfg = self.cfg
        opts = dict(cfg.dataset_options)
        if cfg.cache:
            opts.setdefault("cache", True)
        border = {"border_weights": True, "border_options": {"w0": cfg.border_w0, "sigma": cfg.border_sigma}} if cfg.border_weights else {}
        self.train_set = build_dataset(cfg.dataset, cfg.train_split, data_root=cfg.data_root, **border, **opts)
        self.val_set = build_dataset(cfg.dataset, cfg.val_split, data_root=cfg.data_root, **opts)
        for ds in (self.train_set, self.val_set):
            ds.validate()  # every file checked before any training (with cache=True this also fills the cache)
        if cfg.border_weights:
            self.train_set.preload()  # weight maps computed once here, shared by the forked workers
        self.normalization = default_normalization(self.train_set.in_chans)
        mean, std = self.normalization["mean"], self.normalization["std"]
        if cfg.crop is not None:
            tf = train_transforms(tuple(cfg.crop), scale=tuple(cfg.scale), hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter, mean=mean, std=std, ignore_index=IGNORE_INDEX)
        else:
            tf = eval_transforms(mean=mean, std=std)
        self.val_set.transform = eval_transforms(mean=mean, std=std)
        self.train_view = SeededView(self.train_set, tf, cfg.seed)
        base = DistributedSampler(self.train_view, num_replicas=self.rt.world, rank=self.rt.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        self.sampler = EpochSampler(base)
        self.steps_per_epoch = len(base) // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.train_set)} training images are fewer than one batch of {cfg.batch_size} per process")
        if self.data_pipeline == "device":
            from ..data.device import DeviceLoader

            # same sampler (order, shard, resume skip), same augmentations, run on the device in batches
            self.loader = DeviceLoader(
                self.train_set, sampler=self.sampler, batch_size=cfg.batch_size, device=self.rt.device, crop=cfg.crop, scale=cfg.scale, hflip=cfg.hflip,
                vflip=cfg.vflip, color_jitter=cfg.color_jitter, mean=mean, std=std, ignore_index=IGNORE_INDEX, channels_last=cfg.channels_last, seed=cfg.seed,
            )
            if self.rt.is_main:
                print(f"data pipeline: device ({len(self.train_set)} training images on {self.rt.device}, augmented there; --data-on-device off for the DataLoader)", flush=True)
            return
        workers = max(0, cfg.workers)
        self.loader = DataLoader(
            self.train_view,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=_collate,
            drop_last=True,
            persistent_workers=workers > 0,  # the epoch travels with each index, so workers can live on
            pin_memory=self.rt.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the loader off the global RNG (dropout stays resumable)
            worker_init_fn=_ignore_sigint if workers > 0 else None,
        )

    def _class_weights(self) -> torch.Tensor | None:
        cfg = self.cfg
        if cfg.class_weights == "none":
            return None
        from ..data import weighting

        if cfg.class_weights == "segnet":
            if self.train_set.num_classes != len(weighting.SEGNET_CAMVID_WEIGHTS):
                raise ValueError("class_weights='segnet' is CamVid's 11-class reference; use median or inverse for other data")
            return torch.tensor(weighting.SEGNET_CAMVID_WEIGHTS, dtype=torch.float32)
        pixels, image_pixels = weighting.class_pixel_stats(self.train_set.masks(), self.train_set.num_classes, IGNORE_INDEX)
        fn = weighting.median_frequency_weights if cfg.class_weights == "median" else weighting.inverse_frequency_weights
        return torch.as_tensor(fn(pixels, image_pixels), dtype=torch.float32)

    def _build_model(self) -> None:
        from .losses import build_loss

        cfg, rt = self.cfg, self.rt
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.arch, num_classes=self.train_set.num_classes, in_chans=self.train_set.in_chans, encoder=cfg.encoder, upsample=cfg.upsample, **cfg.model_kwargs)
        self.model_config = model.workbench_config
        # A resumed run takes its weights and its start's provenance from resume.safetensors: the --init-from
        # file may have been replaced since (e.g. by an export of this very run) or removed.
        self.init_from = _init_weights(model, cfg.init_from) if cfg.init_from and not self.resuming else None
        if cfg.sync_bn and rt.world > 1:
            if rt.device.type != "cuda":
                warnings.warn("SyncBatchNorm needs CUDA; training with per-process BatchNorm statistics")
            else:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(rt.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        # the average of the plain module (parameters and BatchNorm statistics), made before any DDP wrapper;
        # every rank steps the same weights, so every rank's average is the same
        self.ema = None
        if cfg.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) if rt.world > 1 else model
        # only the training step runs compiled: checkpoints keep the plain module's parameter names, and
        # validation's full-size images would each be one more graph to compile
        self.train_forward = torch.compile(self.model) if cfg.compile else self.model
        self.class_weight_values = self._class_weights()
        self.criterion = build_loss(cfg.loss, class_weights=self.class_weight_values).to(rt.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" and rt.device.type == "cuda" else None

    # -- state

    def _state(self) -> dict[str, Any]:
        return {
            "model": _unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_miou": self.best_miou,
            "best_epoch": self.best_epoch,
            "wall_time": self.wall_time,
            "epoch_stats": self.epoch_stats,
            "config": dataclasses.asdict(self.cfg),
            "data_pipeline": self.data_pipeline,
            "init_from": self.init_from,
        }

    def save_resume(self) -> None:
        if self.rt.is_main:
            save_state(self.out / "resume.safetensors", self._state())

    def _load_resume(self) -> None:
        state = load_state(self.out / "resume.safetensors")
        if "init_from" in state:
            self.init_from = state["init_from"]
        elif self.cfg.init_from:  # a state written before the provenance was kept in it
            self.init_from = _init_weights(_unwrap(self.model), self.cfg.init_from)
        _unwrap(self.model).load_state_dict(state["model"])
        if self.ema is not None:  # a run that had no average yet starts one from the resumed weights
            self.ema.module.load_state_dict(state.get("ema") or state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.best_miou, self.best_epoch = state["best_miou"], state["best_epoch"]
        self.wall_time = state["wall_time"]
        self.epoch_stats = state.get("epoch_stats", self.epoch_stats)
        before = state.get("data_pipeline", "dataloader")
        if before != self.data_pipeline and self.rt.is_main:
            warnings.warn(f"this run was trained with the {before} pipeline and resumes with the {self.data_pipeline} one: the augmentation draws differ from here on (--data-on-device {'on' if before == 'device' else 'off'} keeps them)")
        if self.rt.is_main:
            self._truncate_metrics(self.epoch)
            print(f"resumed {self.out} at epoch {self.epoch}, step {self.step_in_epoch}/{self.steps_per_epoch} (global step {self.global_step})", flush=True)

    def _truncate_metrics(self, completed: int) -> None:
        """Drop log lines of epochs the resumed run will redo (written after the last resume point).

        Lines carry 1-based epoch numbers; ``completed`` epochs are kept.
        """
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= completed:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())

    # -- training

    def _autocast(self):
        return autocast_context(self.rt.device, self.rt.precision)

    def train_step(self, batch: dict) -> float:
        cfg, rt = self.cfg, self.rt
        x = batch["image"].to(rt.device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["mask"].to(rt.device, non_blocking=True)
        w = batch["weight"].to(rt.device, non_blocking=True) if "weight" in batch else None
        with self._autocast():
            logits = self.train_forward(x)
        loss = self.criterion(logits.float(), y, w)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}; lower --lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:  # the first update copies the weights (timm: decay 0 at step 1)
            self.ema.update(_unwrap(self.model), step=self.global_step + 1)
        return float(loss.detach())

    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the moving average when ``ema_decay`` is set."""
        return self.ema.module if self.ema is not None else _unwrap(self.model)

    @torch.inference_mode()
    def validate(self, model: nn.Module | None = None) -> dict:
        """Metrics of ``model`` (default: :meth:`eval_model`) on the validation split, sharded over the ranks."""
        from ..evaluation.metrics import ConfusionMatrix

        model = model if model is not None else self.eval_model()
        model.eval()
        # counted where the logits are: no per-image argmax copy to the host, no CPU bincount (on a GPU
        # the CPU count of 101 CamVid images took longer than a training epoch)
        cm = ConfusionMatrix(self.val_set.num_classes, ignore_index=IGNORE_INDEX, device=self.rt.device)
        n = len(self.val_set) if self.cfg.val_limit is None else min(self.cfg.val_limit, len(self.val_set))
        for i in range(self.rt.rank, n, self.rt.world):  # each rank a shard, no padding duplicates
            sample = self.val_set[i]
            x = torch.as_tensor(sample["image"])[None].to(self.rt.device)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(x)
            cm.update(logits.argmax(1), torch.as_tensor(sample["mask"])[None].long())
        cm.all_reduce()
        self.model.train()
        res = cm.compute()
        res["class_names"] = [c["name"] for c in self.val_set.classes]
        return res

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until ``cfg.epochs`` (or ``cfg.max_steps``).

        ``stop_after_epoch`` ends this call early, resumably, after that epoch (what a
        kill would do, minus the lost work): ``--resume`` continues the same schedule.
        """
        from tqdm import tqdm

        cfg, rt = self.cfg, self.rt
        self.model.train()
        done = self.global_step >= self.total_steps
        while self.epoch < cfg.epochs and not done:
            epoch = self.epoch
            self.sampler.set_epoch(epoch, skip=self.step_in_epoch * cfg.batch_size)
            if self.step_in_epoch == 0:  # a resumed epoch keeps the totals of its first part
                self.epoch_stats = {"loss_sum": 0.0, "steps": 0, "images": 0, "seconds": 0.0}
            stats = self.epoch_stats
            t_epoch, images = time.perf_counter(), 0
            bar = tqdm(self.loader, total=len(self.loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not rt.is_main, dynamic_ncols=True, mininterval=2.0)
            t_last = time.perf_counter()
            for batch in bar:
                loss = self.train_step(batch)
                images += batch["image"].shape[0] * rt.world
                self.step_in_epoch += 1
                self.global_step += 1
                now = time.perf_counter()
                self.wall_time += now - t_last
                stats["loss_sum"] += loss
                stats["steps"] += 1
                stats["images"] += batch["image"].shape[0] * rt.world
                stats["seconds"] += now - t_last
                t_last = now
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{images / max(now - t_epoch, 1e-9):.1f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if self.global_step >= self.total_steps:  # the last step: a stop request lets the run finish
                    done = True
                    break
                if self.stop_signal is not None:
                    bar.close()
                    self._stop_for_signal()
                if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0:
                    self.save_resume()
            bar.close()
            finished_epoch = self.step_in_epoch >= self.steps_per_epoch
            if finished_epoch:
                self.epoch, self.step_in_epoch = epoch + 1, 0
            record = {
                "epoch": epoch + 1,
                "step": self.global_step,
                "train_loss": stats["loss_sum"] / stats["steps"] if stats["steps"] else None,
                "lr": self.scheduler.get_last_lr()[0],
                "images_per_s": stats["images"] / max(stats["seconds"], 1e-9),
                "epoch_time_s": stats["seconds"],
            }
            last_epoch = self.epoch >= cfg.epochs or done
            if (self.epoch % cfg.val_every == 0 and finished_epoch) or last_epoch:
                t_val = time.perf_counter()
                val = self.validate()
                record["val"] = {k: val[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou")}
                raw_text = ""
                if self.ema is not None:  # the trained weights too, so the log shows what the average bought
                    raw = self.validate(_unwrap(self.model))
                    record["val_raw"] = {k: raw[k] for k in ("miou", "pixel_accuracy", "mean_class_accuracy")}
                    raw_text = f" (average; trained weights {100 * raw['miou']:.2f})"
                self.wall_time += time.perf_counter() - t_val
                if val["miou"] > self.best_miou:
                    self.best_miou, self.best_epoch = val["miou"], epoch + 1
                    self._save_checkpoint("best", val)
                if rt.is_main:
                    loss_text = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
                    print(f"epoch {epoch + 1}: train loss {loss_text}, val mIoU {100 * val['miou']:.2f}{raw_text} (best {100 * self.best_miou:.2f} at epoch {self.best_epoch})", flush=True)
            self._save_checkpoint("last", None)
            self._log(record)
            self.save_resume()
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        summary = {"best_val_miou": self.best_miou, "best_epoch": self.best_epoch, "epochs": self.epoch, "steps": self.global_step, "wall_time_s": self.wall_time, "data_pipeline": self.data_pipeline, "out": str(self.out)}
        if self.ema is not None and rt.is_main and (self.out / "metrics.jsonl").exists():
            summary["ema"] = ema_comparison(read_metrics(self.out / "metrics.jsonl"))
        if rt.is_main:
            atomic_write_bytes(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def _stop_for_signal(self) -> None:
        self.save_resume()
        name = signal.Signals(self.stop_signal).name
        raise TrainingInterrupted(self.stop_signal, f"{name}: stopped after epoch {self.epoch + 1}'s step {self.step_in_epoch}/{self.steps_per_epoch} "
                                  f"(global step {self.global_step}) with the resume state in {self.out}; the same command plus --resume continues it")

    def close(self) -> None:
        """Drop the DistributedDataParallel wrapper, whose reducer holds the process group.

        Call before :func:`shutdown_distributed`: while the wrapper lives,
        ``destroy_process_group`` cannot free the gloo group, which is then torn down
        during interpreter exit, and that aborted 3 of 55 two-process runs
        ("terminate called without an active exception", exit -6, torch 2.15) after the
        run had finished and saved everything.
        """
        self.model = self.train_forward = _unwrap(self.model)

    # -- outputs

    def _save_checkpoint(self, name: str, val: dict | None) -> None:
        if not self.rt.is_main:
            return
        from ..tools.bench import machine_description

        cfg = self.cfg
        manifest = {
            "dataset": {"name": cfg.dataset, "train_split": cfg.train_split, "val_split": cfg.val_split, **({"options": cfg.dataset_options} if cfg.dataset_options else {})},
            "classes": self.train_set.classes,
            "normalization": self.normalization,
            "input": {"channels": self.train_set.in_chans, "mode": "L" if self.train_set.in_chans == 1 else "RGB"},
            "training": {
                "command": self.command,
                "config": dataclasses.asdict(cfg),
                "epochs_completed": self.epoch,
                "global_step": self.global_step,
                "wall_time_s": round(self.wall_time, 1),
                "hardware": machine_description(),
                "world_size": self.rt.world,
                "precision": self.rt.precision,
                "data_pipeline": self.data_pipeline,
                "class_weights": None if self.class_weight_values is None else [round(float(v), 4) for v in self.class_weight_values],
                **({"init_from": self.init_from} if self.init_from else {}),
                **({"weights": f"exponential moving average, decay {self.cfg.ema_decay}" + (" (timm warm-up)" if self.cfg.ema_warmup else "")} if self.ema is not None else {}),
            },
        }
        if val is not None:
            manifest["metrics"] = {"val": {"miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"], "mean_class_accuracy": val["mean_class_accuracy"], "per_class_iou": val["per_class_iou"], "epoch": self.best_epoch, "split": cfg.val_split}}
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[cfg.save_dtype]
        save_checkpoint(self.out / name, self.eval_model(), manifest, dtype=dtype)

    def _log(self, record: dict) -> None:
        if not self.rt.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        with contextlib.suppress(Exception):  # a plot must never stop a run
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a run's ``metrics.jsonl``, one per epoch, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def ema_comparison(records: Iterable[dict]) -> dict[str, Any] | None:
    """What the weight average bought in a run: validation of the average (``val``) against the trained
    weights (``val_raw``) at every evaluation of a ``--ema-decay`` run's ``metrics.jsonl`` records.

    Returns ``None`` when no record has both; else mIoU in percent: the best of each, the mean and range of
    (average - trained), and each one's spread (max - min) over the evaluations, which is how much picking
    the best epoch on val depends on when one looks.
    """
    pairs = [(100 * r["val"]["miou"], 100 * r["val_raw"]["miou"]) for r in records if "val" in r and "val_raw" in r]
    if not pairs:
        return None
    avg, raw = [a for a, _ in pairs], [b for _, b in pairs]
    diff = [a - b for a, b in pairs]
    return {
        "evaluations": len(pairs),
        "best_average": max(avg),
        "best_trained": max(raw),
        "average_minus_trained_mean": sum(diff) / len(diff),
        "average_minus_trained_range": [min(diff), max(diff)],
        "spread_average": max(avg) - min(avg),
        "spread_trained": max(raw) - min(raw),
    }


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """Training loss and validation mIoU against epochs, from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    val = [(r["epoch"], r["val"]["miou"]) for r in rows if "val" in r]
    if val:
        ax2 = ax1.twinx()
        ax2.plot(*zip(*val), color="tab:orange", marker="o", label="val mIoU")
        ax2.set_ylabel("val mIoU", color="tab:orange")
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out_png)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Run training for ``cfg``; returns the summary (best val mIoU, epochs, steps, wall time)."""
    trainer = None
    try:
        trainer = Trainer(cfg, command)
        with _stop_on_signals(trainer):
            return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        del trainer
        shutdown_distributed()


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT and SIGTERM ask ``trainer`` to stop after the step in progress (a second one stops at once).

    Single process only: under DDP every rank would have to stop at the same step, so there a signal
    keeps its default effect and ``--save-every-steps`` bounds the loss.
    """
    if trainer.rt.world > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt
        trainer.stop_signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving the resume state (send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def shutdown_distributed() -> None:
    """Destroy the process group (if any) after collecting what still refers to it; see :meth:`Trainer.close`."""
    import gc

    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- command line

_JSON_FIELDS = {"model_kwargs", "dataset_options"}
# flags whose meaning the field name and default do not carry on their own
_FIELD_HELP = {
    "ema_decay": "validate and save an exponential moving average of the weights (timm ModelEmaV3), e.g. 0.99 to "
    "average over about the last 100 steps",
    "ema_warmup": "with --ema-decay: timm's warm-up, decay min(ema_decay, 1 - (1 + t)^(-2/3)) at the t-th update after the "
    "first (about 0.79 after 10, 0.95 after 100, the full 0.99 after 1000), so the random initial weights of a from-scratch run fade from the average within "
    "tens of steps instead of weighing 0.99^step",
    "compile": "torch.compile the training step (the first steps compile it); measure the gain on a machine with "
    "workbench bench --train --compile",
    "data_on_device": "keep the whole training split on the training device and augment batches there (same augmentations as the "
    "DataLoader, drawn per seed/epoch/batch); auto: on for CUDA without DDP, off otherwise; the run's config.yaml "
    "records the pipeline used",
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Flags for every :class:`TrainConfig` field (``--batch-size`` for ``batch_size``), plus ``--config``."""
    p = parser or argparse.ArgumentParser(prog="workbench train", description="Train a registered architecture.")
    p.add_argument("--config", help="YAML or TOML file with TrainConfig fields; flags override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = f"{_FIELD_HELP[f.name]} (default: {default})" if f.name in _FIELD_HELP else f"(default: {default})"
        if f.name in _JSON_FIELDS:
            p.add_argument(flag, type=json.loads, default=None, help=f"JSON object {helptext}")
        elif f.name in ("crop", "scale"):
            p.add_argument(flag, nargs="+", default=None, help=f"two numbers, or 'none' for crop {helptext}")
        elif isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif f.name in ("max_steps", "val_limit", "save_every_steps"):
            p.add_argument(flag, type=int, default=None, help=helptext)
        elif f.name in ("grad_clip", "ema_decay"):
            p.add_argument(flag, type=float, default=None, help=helptext)
        elif f.name == "data_on_device":
            p.add_argument(flag, choices=["auto", "on", "off"], default=None, help=helptext)
        else:
            typ = type(default) if default is not None else str
            p.add_argument(flag, type=typ, default=None, help=helptext)
    return p


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith(".toml"):
        import tomllib

        data = tomllib.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of TrainConfig fields")
    data.pop("command", None)  # a config.yaml written by a previous run ...
    data.pop("data_pipeline", None)  # ... records what ran, not a setting
    return data


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = _read_config_file(args.config)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{args.config}: unknown config field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        values.update(data)
    for name in names:
        v = getattr(args, name, None)
        if v is None:
            continue
        if name == "crop":
            v = None if [s.lower() for s in v] == ["none"] else [int(s) for s in v]
        elif name == "scale":
            v = [float(s) for s in v]
        values[name] = v
    return TrainConfig(**values)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        summary = train(cfg)
    except TrainingInterrupted as exc:
        print(f"interrupted by {exc}", file=sys.stderr)
        return 128 + exc.signum  # what a shell reports for a command a signal ended
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
