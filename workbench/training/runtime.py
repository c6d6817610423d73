"""Where and how a run executes: device, precision and processes; seeds and RNG state; signals.

* :func:`setup_runtime` reads ``torchrun``'s ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``, picks the device
  and starts the process group (gloo on CPU, NCCL on GPU); ``precision="auto"`` is bf16 where the
  hardware has native bf16, fp16 on older GPUs, else fp32;
* :func:`rng_state` / :func:`set_rng_state` carry every RNG through a resume;
* :func:`stop_on_signals` turns SIGINT and SIGTERM into a stop at the end of the step in progress;
* :func:`shutdown_distributed` tears the process group down in the order that does not abort.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..system.machine import cpu_supports_bf16
from .config import TrainConfig

__all__ = ["Runtime", "setup_runtime", "seed_everything", "rng_state", "set_rng_state", "unwrap", "stop_on_signals", "shutdown_distributed"]


@dataclass
class Runtime:
    """This process's place in the run and what it computes with."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """The runtime of ``cfg`` in this process (starts the process group under ``torchrun``)."""
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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def stop_on_signals(trainer):
    """SIGINT and SIGTERM ask ``trainer`` to stop after the step in progress (a second one stops at once).

    ``trainer`` is anything with ``rt.world`` and a ``stop_signal`` attribute that its loop checks
    after each step (:class:`~workbench.training.trainer.Trainer`).

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
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
