"""What defines a training run: :class:`TrainConfig`, its config files and its command-line flags.

The config comes from CLI flags or a YAML/TOML file (flags win); every :class:`TrainConfig` field
is a flag (``--batch-size`` for ``batch_size``). The resolved config is written to
``<out>/config.yaml`` by the trainer, and such a file is a valid ``--config`` again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrainConfig", "build_parser", "config_from_args", "read_config_file"]


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


def read_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith(".toml"):
        data = tomllib.loads(text)
    else:
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of TrainConfig fields")
    data.pop("command", None)  # a config.yaml written by a previous run ...
    data.pop("data_pipeline", None)  # ... records what ran, not a setting
    return data


def config_from_args(args: argparse.Namespace, cls: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """The config of parsed :func:`build_parser` flags: the ``--config`` file's fields, overridden by the flags given.

    ``cls`` is :class:`TrainConfig` or a dataclass extending it (``workbench distill``'s config), whose extra
    fields are read from the file and from flags of the same names.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = read_config_file(args.config)
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
    return cls(**values)
