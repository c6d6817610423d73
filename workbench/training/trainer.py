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
  split on the device and augments batches there (:mod:`workbench.data.device`,
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

The pieces around the loop have rooms of their own: the config and its flags
(:mod:`~workbench.training.config`), optimizer and lr schedule (:mod:`~workbench.training.schedules`),
device, seeds, RNG state and signals (:mod:`~workbench.training.runtime`), ``--init-from``
(:mod:`~workbench.training.finetune`), ``metrics.jsonl`` and ``curves.png``
(:mod:`~workbench.training.curves`), the train loader of either pipeline
(:func:`workbench.data.loaders.build_train_loader`, shared with ``workbench bench-data``) and
validation (:func:`workbench.evaluation.validate.accumulate_confusion`, shared with ``workbench eval``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import yaml
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..classes import IGNORE_INDEX, default_normalization
from ..data import weighting
from ..data.datasets import SegDataset, build_dataset
from ..data.device import resolve_data_on_device
from ..data.loaders import build_train_loader
from ..data.transforms import eval_transforms
from ..evaluation.validate import accumulate_confusion
from ..inference.predictor import autocast_context
from ..io.checkpoint import atomic_write_bytes, save_checkpoint
from ..io.state import load_state, save_state
from ..models.registry import create_model
from ..system.machine import machine_description
from .config import TrainConfig, config_from_args
from .curves import append_metrics, ema_comparison, read_metrics, truncate_metrics
from .finetune import init_weights
from .losses import build_loss
from .runtime import rng_state, seed_everything, set_rng_state, setup_runtime, shutdown_distributed, stop_on_signals, unwrap
from .schedules import build_optimizer, build_scheduler

__all__ = ["Trainer", "TrainingInterrupted", "train", "main", "class_weights"]


class TrainingInterrupted(Exception):
    """A signal stopped the run at a step boundary; its resume state holds every finished step."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


def class_weights(method: str, train_set: SegDataset) -> torch.Tensor | None:
    """The loss's per-class weights for ``--class-weights``: none, SegNet's CamVid reference, or median/inverse frequency of ``train_set``."""
    if method == "none":
        return None
    if method == "segnet":
        if train_set.num_classes != len(weighting.SEGNET_CAMVID_WEIGHTS):
            raise ValueError("class_weights='segnet' is CamVid's 11-class reference; use median or inverse for other data")
        return torch.tensor(weighting.SEGNET_CAMVID_WEIGHTS, dtype=torch.float32)
    pixels, image_pixels = weighting.class_pixel_stats(train_set.masks(), train_set.num_classes, IGNORE_INDEX)
    fn = weighting.median_frequency_weights if method == "median" else weighting.inverse_frequency_weights
    return torch.as_tensor(fn(pixels, image_pixels), dtype=torch.float32)


# ----------------------------------------------------------------------------- the run


class Trainer:
    """One training run. ``Trainer(cfg).fit()``; see the module docstring."""

    def __init__(self, cfg: TrainConfig, command: str | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.command = command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.rt = setup_runtime(cfg)
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
            text = yaml.safe_dump({"command": self.command, "data_pipeline": self.data_pipeline, **dataclasses.asdict(cfg)}, sort_keys=False)
            atomic_write_bytes(self.out / "config.yaml", text.encode())

    def _build_data(self) -> None:
        cfg, rt = self.cfg, self.rt
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
        self.val_set.transform = eval_transforms(mean=mean, std=std)
        self.loader, self.sampler = build_train_loader(
            self._training_samples(), pipeline=self.data_pipeline, batch_size=cfg.batch_size, device=rt.device, crop=cfg.crop, scale=cfg.scale, hflip=cfg.hflip,
            vflip=cfg.vflip, color_jitter=cfg.color_jitter, mean=mean, std=std, ignore_index=IGNORE_INDEX, channels_last=cfg.channels_last, seed=cfg.seed,
            workers=cfg.workers, rank=rt.rank, world=rt.world,
        )
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size  # full batches per process (the sampler skips nothing yet)
        if self.data_pipeline == "device" and rt.is_main:
            print(f"data pipeline: device ({len(self.train_set)} training images on {rt.device}, augmented there; --data-on-device off for the DataLoader)", flush=True)

    def _training_samples(self):
        """What the train loader draws from: the training split (``workbench distill`` adds the teacher's maps)."""
        return self.train_set

    def _build_model(self) -> None:
        cfg, rt = self.cfg, self.rt
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.arch, num_classes=self.train_set.num_classes, in_chans=self.train_set.in_chans, encoder=cfg.encoder, upsample=cfg.upsample, **cfg.model_kwargs)
        self.model_config = model.workbench_config
        # A resumed run takes its weights and its start's provenance from resume.safetensors: the --init-from
        # file may have been replaced since (e.g. by an export of this very run) or removed.
        self.init_from = init_weights(model, cfg.init_from) if cfg.init_from and not self.resuming else None
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
            self.ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
        self.model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None) if rt.world > 1 else model
        # only the training step runs compiled: checkpoints keep the plain module's parameter names, and
        # validation's full-size images would each be one more graph to compile
        self.train_forward = torch.compile(self.model) if cfg.compile else self.model
        self.class_weight_values = class_weights(cfg.class_weights, self.train_set)
        self.criterion = build_loss(cfg.loss, class_weights=self.class_weight_values).to(rt.device)
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], cfg)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" and rt.device.type == "cuda" else None

    # -- state

    def _state(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
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
            self.init_from = init_weights(unwrap(self.model), self.cfg.init_from)
        unwrap(self.model).load_state_dict(state["model"])
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
            truncate_metrics(self.out / "metrics.jsonl", self.epoch)
            print(f"resumed {self.out} at epoch {self.epoch}, step {self.step_in_epoch}/{self.steps_per_epoch} (global step {self.global_step})", flush=True)

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
        loss = self.compute_loss(logits.float(), y, w, batch)
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
            self.ema.update(unwrap(self.model), step=self.global_step + 1)
        return float(loss.detach())

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, batch: dict) -> torch.Tensor:
        """The training loss of one batch (``workbench distill`` adds the teacher's term)."""
        return self.criterion(logits, target, weight)

    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the moving average when ``ema_decay`` is set."""
        return self.ema.module if self.ema is not None else unwrap(self.model)

    @torch.inference_mode()
    def validate(self, model: nn.Module | None = None) -> dict:
        """Metrics of ``model`` (default: :meth:`eval_model`) on the validation split, sharded over the ranks."""
        cfg, rt = self.cfg, self.rt
        model = model if model is not None else self.eval_model()
        model.eval()

        def predict(_index: int, item: dict) -> torch.Tensor:
            x = torch.as_tensor(item["image"])[None].to(rt.device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(x)  # (1, C, H, W)
            return logits[0]

        n = len(self.val_set) if cfg.val_limit is None else min(cfg.val_limit, len(self.val_set))
        # counted where the logits are: no per-image argmax copy to the host, no CPU bincount (on a GPU
        # the CPU count of 101 CamVid images took longer than a training epoch); each rank a shard, no
        # padding duplicates, summed over the ranks
        cm = accumulate_confusion(
            self.val_set, predict, indices=range(rt.rank, n, rt.world), num_classes=self.val_set.num_classes, ignore_index=IGNORE_INDEX, device=rt.device, distributed=True
        )
        self.model.train()
        res = cm.compute()
        res["class_names"] = [c["name"] for c in self.val_set.classes]
        return res

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train until ``cfg.epochs`` (or ``cfg.max_steps``).

        ``stop_after_epoch`` ends this call early, resumably, after that epoch (what a
        kill would do, minus the lost work): ``--resume`` continues the same schedule.
        """
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
                    raw = self.validate(unwrap(self.model))
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
        self.model = self.train_forward = unwrap(self.model)

    # -- outputs

    def _save_checkpoint(self, name: str, val: dict | None) -> None:
        if not self.rt.is_main:
            return
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
                **self._training_manifest_extra(),
            },
        }
        if val is not None:
            manifest["metrics"] = {"val": {"miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"], "mean_class_accuracy": val["mean_class_accuracy"], "per_class_iou": val["per_class_iou"], "epoch": self.best_epoch, "split": cfg.val_split}}
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}[cfg.save_dtype]
        save_checkpoint(self.out / name, self.eval_model(), manifest, dtype=dtype)

    def _training_manifest_extra(self) -> dict:
        """More fields for the checkpoints' ``training`` section (``workbench distill``: the teacher chain)."""
        return {}

    def _log(self, record: dict) -> None:
        if self.rt.is_main:
            append_metrics(self.out, record)


def train(cfg: TrainConfig, command: str | None = None) -> dict:
    """Run training for ``cfg``; returns the summary (best val mIoU, epochs, steps, wall time)."""
    return run_trainer(Trainer, cfg, command)


def run_trainer(trainer_class: type[Trainer], cfg: TrainConfig, command: str | None = None) -> dict:
    """Build ``trainer_class(cfg, command)``, fit it with signals stopping it cleanly, and always release it
    (and the process group); returns the summary."""
    trainer = None
    try:
        trainer = trainer_class(cfg, command)
        with stop_on_signals(trainer):
            return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        del trainer
        shutdown_distributed()


def main(args: argparse.Namespace) -> int:
    """``workbench train``: exit status 0, or 128 + the signal number when a signal stopped the run."""
    return run_command(train, config_from_args(args))


def run_command(run: Callable[..., dict], cfg: TrainConfig) -> int:
    """A training command's body: ``run(cfg)``, its summary printed as JSON by rank 0; the exit status is 0,
    or 128 + the signal number when a signal stopped the run (what a shell reports)."""
    try:
        summary = run(cfg)
    except TrainingInterrupted as exc:
        print(f"interrupted by {exc}", file=sys.stderr)
        return 128 + exc.signum  # what a shell reports for a command a signal ended
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
