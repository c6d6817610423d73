"""``workbench distill``'s config and flags: :class:`DistillConfig` (a :class:`TrainConfig` plus the teachers) and :func:`build_parser`.

Torch-free, like :mod:`~workbench.training.config`, so that building the CLI's flags loads no torch; the
run itself is :mod:`workbench.training.distill`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from .config import TrainConfig
from .config import build_parser as build_train_parser

__all__ = ["DistillConfig", "build_parser"]


@dataclass
class DistillConfig(TrainConfig):
    """A :class:`TrainConfig` (the student's run) plus the teachers and how they teach."""

    teachers: list[str] = field(default_factory=list)  # checkpoint manifests, or names of checkpoints in checkpoints/
    teacher_flip: bool = False  # each teacher averages with the mirrored image
    teacher_scales: list[float] | None = None  # each teacher averages over the image resized by these factors, e.g. [0.75, 1.0, 1.25]
    teacher_precision: str = "fp32"  # the teachers' forward pass (fp32: the cache is the same on every machine)
    temperature: float = 2.0  # T: both distributions softened by logits / T
    alpha: float = 0.5  # the share of the soft (teacher) term; 0 is plain training on the labels
    teacher_cache: str | None = None  # None: $WORKBENCH_CACHE_DIR/teachers (default ~/.cache/workbench/teachers)
    data_on_device: str = "off"  # the device loader does not carry teacher maps: always the DataLoader

    def __post_init__(self) -> None:
        if self.data_on_device == "auto":  # a train config's default: auto would pick the device loader on CUDA
            self.data_on_device = "off"

    def validate(self) -> None:
        super().validate()
        if not self.teachers:
            raise ValueError("distillation needs at least one teacher: --teachers CHECKPOINT [CHECKPOINT ...] (manifests or names in checkpoints/)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (the share of the teacher's term), got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive (1: the plain softmax; 2-4 is usual), got {self.temperature}")
        if self.teacher_precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"teacher_precision must be fp32, bf16 or fp16, got {self.teacher_precision!r}")
        if self.data_on_device == "on":
            raise ValueError("distillation feeds the student through the DataLoader (the device loader does not carry teacher maps): use --data-on-device off")
        if self.teacher_scales is not None and (not self.teacher_scales or any(not 0 < float(f) <= 4 for f in self.teacher_scales)):
            raise ValueError(f"teacher_scales must be factors in (0, 4], e.g. 0.75 1.0 1.25, got {self.teacher_scales}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``workbench distill``'s flags: every ``workbench train`` flag plus the teachers'."""
    p = parser or argparse.ArgumentParser(prog="workbench distill", description="Distil a teacher ensemble into a registered architecture.")
    build_train_parser(p)
    g = p.add_argument_group("distillation")
    g.add_argument("--teachers", nargs="+", default=None, metavar="CHECKPOINT", help="teacher checkpoints: .json manifests or names in checkpoints/ (their softmax probabilities are averaged)")
    g.add_argument("--teacher-flip", action=argparse.BooleanOptionalAction, default=None, help="each teacher also sees the mirrored image (default: False)")
    g.add_argument("--teacher-scales", type=float, nargs="+", default=None, metavar="F", help="each teacher averages over the image resized by these factors, e.g. 0.75 1 1.25 (default: one scale)")
    g.add_argument("--teacher-precision", choices=["fp32", "bf16", "fp16"], default=None, help="precision of the teachers' pass (default: fp32)")
    g.add_argument("--temperature", type=float, default=None, help="T of the soft labels, softmax(logits / T) (default: 2.0)")
    g.add_argument("--alpha", type=float, default=None, help="weight of the teacher term; the labels' loss gets 1 - alpha (default: 0.5)")
    g.add_argument("--teacher-cache", default=None, metavar="DIR", help="where the teacher maps are cached (default: $WORKBENCH_CACHE_DIR/teachers, else ~/.cache/workbench/teachers)")
    return p
