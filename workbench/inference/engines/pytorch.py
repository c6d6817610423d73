"""The PyTorch engine: the model as given (the Predictor folds BatchNorms first), channels_last, autocast to
bf16/fp16 where asked. The only engine on CUDA."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .base import Engine

__all__ = ["TorchEngine", "ENGINE", "autocast_context"]


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class TorchEngine(Engine):
    name = "torch"
    precisions = ("fp32", "bf16", "fp16")

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.precision):
            return self.model(x)  # on the device, no host sync


ENGINE = TorchEngine
