"""What every inference engine provides (see the package docstring)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["Engine", "EngineError"]


class EngineError(RuntimeError):
    """An engine cannot run this model (conversion failed, unsupported precision); the message says why."""


class Engine:
    """One model on one runtime.

    Args:
        model: the network (``PadCropModel`` contract), in eval mode; the engine never modifies it.
        in_chans: input channels (the traced graphs' input is (1, in_chans, H, W), H and W dynamic).
        precision: one of the class's ``precisions``.
        device: torch device (only the torch engine runs anywhere but the CPU).
        artifacts: folder for converted models (a checkpoint's cache folder), or None to convert in memory.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        manifest_path: the checkpoint's manifest, if any (OpenVINO finds an int8 model beside it).

    Calling the engine with a normalised float32 (1, C, H, W) tensor returns (1, K, H, W) logits (float32 on
    the CPU for the CPU runtimes; on the device, possibly in bf16, for torch: the Predictor converts).
    ``info`` records how the engine was built (conversion and compile seconds, whether the cache served it).
    """

    name: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    max_batch: int | None = None  # images one call may hold (None: any batch size)

    def __init__(self, model: nn.Module, *, in_chans: int = 3, precision: str = "fp32", device: torch.device | str = "cpu", artifacts: Path | None = None, threads: int | None = None, manifest_path: str | os.PathLike | None = None) -> None:
        if precision not in self.precisions:
            raise EngineError(f"the {self.name} engine runs precisions {', '.join(self.precisions)}, not {precision!r}")
        self.in_chans = int(in_chans)
        self.precision = precision
        self.device = torch.device(device)
        self.artifacts = Path(artifacts) if artifacts is not None else None
        self.threads = int(threads or torch.get_num_threads())
        self.manifest_path = manifest_path  # where an engine looks for precomputed models (int8)
        self.info: dict = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.precision})"
