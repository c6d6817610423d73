"""The optimizer and the learning-rate schedule of a run, made from its :class:`~workbench.training.config.TrainConfig`.

The schedule is per optimizer step: a linear warm-up over ``warmup_steps`` (at most half the run),
then ``poly`` (``(1 - t)^0.9``), ``cosine`` or ``constant``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .config import TrainConfig

__all__ = ["lr_lambda", "build_optimizer", "build_scheduler"]


def lr_lambda(cfg: TrainConfig, total_steps: int):
    """The lr factor of each step (for :class:`~torch.optim.lr_scheduler.LambdaLR`)."""
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


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum, over ``params`` with the config's lr and weight decay."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of :func:`lr_lambda` over ``total_steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
