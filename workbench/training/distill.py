"""``workbench distill``: knowledge distillation from a teacher ensemble into any registered architecture.

The student trains exactly as in ``workbench train`` (the same :class:`~workbench.training.trainer.Trainer`:
config and flags, augmentation, validation, checkpoints, ``--resume``, signals) with one more loss term::

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * ground-truth loss

(:class:`~workbench.training.losses.DistillationLoss`; void pixels, the dataset's and the crop's
padding, are ignored in both terms). The teacher is the mean of the softmax probabilities of any set
of checkpoints (``--teachers``), each optionally with test-time augmentation (``--teacher-flip``,
``--teacher-scales``, as ``workbench eval`` computes it: :func:`workbench.evaluation.tta.predict_probs`);
its "logits" are the log of that mean, so the temperature applies to the ensemble as to one network.

The teacher runs once per training image, before the first step, at the image's own resolution, and
its log-probabilities are cached on disk (:mod:`~workbench.training.teacher_cache`: quantised to uint8
in steps of 1/16 nat, zlib, one ``.npz`` per image, keyed by the teachers' sha256, the augmentation, the image and its resolution);
later epochs, resumed runs and other students of the same teachers read the cache. Each training
sample carries its teacher map through the same random scale, crop and flips as its label mask
(:class:`~workbench.data.transforms.TeacherMap`), so the soft labels stay aligned with the pixels the
student sees. Distillation always uses the DataLoader pipeline (the device loader does not carry
teacher maps).

The checkpoints' manifests record the teacher chain in ``training.distillation``: each teacher's name,
architecture, weights sha256 and metrics, the augmentation, T, alpha and the cache key; ``--resume``
refuses a run whose teachers, augmentation, T or alpha changed. The config and flags
(:class:`~workbench.training.distill_config.DistillConfig`) live in :mod:`~workbench.training.distill_config`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.transforms import TeacherMap
from ..evaluation.ensemble import Ensemble, load_ensemble
from ..evaluation.ensemble import resolve_member as resolve_teacher
from ..evaluation.tta import check_scales
from ..inference.engines.cache import cache_root
from ..io.checkpoint import atomic_write_bytes
from ..io.state import load_state
from .config import config_from_args
from .distill_config import DistillConfig
from .losses import DistillationLoss
from .teacher_cache import TeacherCache, dequantize_logp, image_digest
from .trainer import Trainer, run_command, run_trainer

__all__ = ["DistillTrainer", "TeacherView", "resolve_teacher", "distill", "main"]

_PROB_FLOOR = 1e-30  # the ensemble's probabilities are clamped here before the log (the cache then floors them at 1.2e-7)


# ----------------------------------------------------------------------------- teachers


class TeacherView(Dataset):
    """The training split with each sample's cached teacher map added as ``"teacher"`` (uint8 (C, H, W) levels, :func:`dequantize_logp`).

    Entries are verified on every read (:meth:`TeacherCache.load`); one that went bad after the run
    checked the cache stops the run with a message (``--resume`` rebuilds it) rather than training on it.
    """

    def __init__(self, dataset: Dataset, cache: TeacherCache, num_classes: int) -> None:
        self.dataset, self.cache, self.num_classes = dataset, cache, num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.dataset[index])
        image = np.asarray(sample["image"])
        q = self.cache.load(sample["name"], image_digest(image), (self.num_classes, *image.shape[-2:]))
        if q is None:
            detail = self.cache.problems[-1] if self.cache.problems else "missing"
            raise RuntimeError(f"teacher cache entry of {sample['name']} went bad during the run ({detail}); the same command with --resume rebuilds it")
        sample["teacher"] = TeacherMap(torch.from_numpy(q))
        return sample


# ----------------------------------------------------------------------------- the run


class DistillTrainer(Trainer):
    """A :class:`Trainer` whose loss adds the teacher ensemble's soft labels; see the module docstring."""

    cfg: DistillConfig

    def __init__(self, cfg: DistillConfig, command: str | None = None) -> None:
        cfg.validate()
        self.teachers = [resolve_teacher(t) for t in cfg.teachers]
        scales = check_scales(cfg.teacher_scales) if cfg.teacher_scales is not None else None
        self.tta = {"flip": bool(cfg.teacher_flip), "scales": list(scales) if scales else None}
        self.teacher_images_computed = 0  # teacher forward passes (one per image, all teachers and augmentations) in this process
        root = Path(cfg.teacher_cache).expanduser() if cfg.teacher_cache else cache_root() / "teachers"
        key = {
            "teachers": [{"checkpoint": t["checkpoint"], "weights_sha256": t["weights_sha256"]} for t in self.teachers],
            "ensemble": "mean of softmax probabilities",
            "tta": self.tta,
            "precision": cfg.teacher_precision,
            "classes": self.teachers[0]["classes"],
        }
        self.cache = TeacherCache(root, key)
        self.chain = {
            "teachers": [{k: t[k] for k in ("checkpoint", "architecture", "weights_sha256", "val_miou", "test_miou")} for t in self.teachers],
            "ensemble": "mean of the teachers' softmax probabilities; teacher logits = log of the mean",
            "tta": self.tta,
            "teacher_precision": cfg.teacher_precision,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "cache_key": self.cache.digest,
        }
        self._check_resume_chain(Path(cfg.out) / "resume.safetensors", cfg.resume)
        super().__init__(cfg, command)

    def _check_resume_chain(self, state_path: Path, resume: bool) -> None:
        if not (resume and state_path.is_file()):
            return
        before = load_state(state_path).get("distillation")
        if before is None:
            raise ValueError(f"{state_path.parent} holds a `workbench train` run, not a distillation; resume it with workbench train")
        now = {k: self.chain[k] for k in ("cache_key", "temperature", "alpha")}
        was = {k: before.get(k) for k in now}
        if was != now:
            diff = ", ".join(f"{k}: {was[k]!r} -> {now[k]!r}" for k in now if was[k] != now[k])
            raise ValueError(f"{state_path.parent} was distilled with other teachers or settings ({diff}); resume with the same --teachers, "
                             "--teacher-flip/--teacher-scales/--teacher-precision, --temperature and --alpha, or start a new --out")

    # -- the teacher's maps

    def _training_samples(self) -> Dataset:
        for t in self.teachers:
            if t["classes"] != [c["name"] for c in self.train_set.classes]:
                raise ValueError(f"teacher {t['checkpoint']} predicts {t['classes']}, the {self.cfg.dataset} training split has "
                                 f"{[c['name'] for c in self.train_set.classes]}: a teacher must know the student's classes")
        if self.rt.is_main:
            with torch.random.fork_rng(devices=[]):  # the teacher pass leaves the run's random state alone (hit or miss)
                self._fill_cache()
        if self.rt.world > 1:
            dist.barrier()  # the other ranks read what rank 0 wrote
        return TeacherView(self.train_set, self.cache, self.train_set.num_classes)

    def _fill_cache(self) -> None:
        """Verify every training image's entry; compute (all teachers at once) and store those missing, corrupt or stale."""
        self.cache.prepare()
        ds, teacher = self.train_set, None
        todo: list[tuple[int, str, str]] = []
        for i in range(len(ds)):
            sample = ds[i]
            image = np.asarray(sample["image"])
            digest = image_digest(image)
            if self.cache.load(sample["name"], digest, (ds.num_classes, *image.shape[-2:])) is None:
                todo.append((i, sample["name"], digest))
        for problem in self.cache.problems:
            print(f"teacher cache: rebuilding {problem}", file=sys.stderr, flush=True)
        if todo:
            print(f"teacher cache: computing {len(todo)} of {len(ds)} training images with {len(self.teachers)} teacher(s) into {self.cache.dir}", flush=True)
            teacher = load_ensemble([t["path"] for t in self.teachers], device=self.rt.device)[0]
        for i, name, digest in tqdm(todo, desc="teacher", disable=not todo, dynamic_ncols=True, mininterval=2.0):
            image = torch.as_tensor(np.asarray(ds[i]["image"]))
            self.cache.store(name, digest, self._teacher_logp(teacher, image))
        self.cache_bytes = self.cache.size_bytes()
        n = len(ds)
        print(f"teacher cache: {n - len(todo)} of {n} images reused, {len(todo)} computed; {self.cache_bytes / 1e6:.1f} MB "
              f"({self.cache_bytes / max(n, 1) / 1e3:.0f} kB per image) in {self.cache.dir}", flush=True)

    def _teacher_logp(self, teacher: Ensemble, image: torch.Tensor) -> np.ndarray:
        """The ensemble's float32 (C, H, W) log-probabilities of one uint8 (C_in, H, W) image."""
        probs = teacher.predict_probs(image.float() / 255.0, flip=self.tta["flip"], scales=self.tta["scales"], precision=self.cfg.teacher_precision).cpu()
        self.teacher_images_computed += 1
        return probs.clamp_min(_PROB_FLOOR).log().numpy()

    # -- the loss, the state, the manifests

    def _build_model(self) -> None:
        super()._build_model()
        self.distill_loss = DistillationLoss(self.criterion, alpha=self.cfg.alpha, temperature=self.cfg.temperature)

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, batch: dict) -> torch.Tensor:
        teacher = dequantize_logp(batch["teacher"].to(logits.device, non_blocking=True))  # padding (level 0) is void in the mask
        return self.distill_loss(logits, target, teacher, weight)

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "distillation": self.chain}

    def _training_manifest_extra(self) -> dict:
        return {"distillation": self.chain}

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        summary = super().fit(stop_after_epoch)
        summary["distillation"] = {
            **self.chain,
            "cache_dir": str(self.cache.dir),
            "cache_bytes": getattr(self, "cache_bytes", None),
            "teacher_images_computed": self.teacher_images_computed,
            "cache_entries_rejected": list(self.cache.problems),
        }
        if self.rt.is_main:
            atomic_write_bytes(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary


def distill(cfg: DistillConfig, command: str | None = None) -> dict:
    """Run a distillation for ``cfg``; returns the summary (:func:`workbench.training.trainer.train`'s, plus ``distillation``)."""
    return run_trainer(DistillTrainer, cfg, command)


# ----------------------------------------------------------------------------- command line


def main(args: argparse.Namespace) -> int:
    """``workbench distill``: exit status 0, or 128 + the signal number when a signal stopped the run."""
    return run_command(distill, config_from_args(args, DistillConfig))
