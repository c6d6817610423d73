"""Inference engines behind the :class:`~workbench.inference.predictor.Predictor`: PyTorch, OpenVINO, ONNX Runtime.

Every engine wraps an ``nn.Module`` that keeps the ``PadCropModel`` contract (any H, W >= 32) and maps a
normalised float32 (1, C, H, W) input to logits (1, K, H, W). ``torch`` is the app's fast path (folded BN,
channels_last, bf16 where the hardware has it) and the only engine on CUDA; ``openvino`` and ``onnxruntime``
run a traced graph with dynamic height and width on the CPU (no recompilation per upload size), converted
once per checkpoint and kept in the cache (:mod:`.cache`). :mod:`.choose` measures them per checkpoint and
machine and keeps the fastest whose labels pass the parity rule (``engine="auto"``).

The engine modules are imported by name when an engine is first used (:func:`engine_class`): importing
OpenVINO costs most of a second, which a Predictor on the torch engine should never pay.
"""

from __future__ import annotations

import importlib

from .base import Engine, EngineError

__all__ = ["ENGINES", "CPU_ENGINES", "Engine", "EngineError", "engine_class", "check_engine"]

# engine name -> module of this package that defines it (as ``ENGINE``)
ENGINES: dict[str, str] = {"torch": "pytorch", "openvino": "openvino", "onnxruntime": "onnxruntime"}
CPU_ENGINES = ("openvino", "onnxruntime")  # engines that run on the CPU only


def check_engine(engine: str) -> str:
    """``engine`` if it is ``"auto"`` or a known engine, else a ValueError listing the choices."""
    if engine != "auto" and engine not in ENGINES:
        raise ValueError(f"engine must be 'auto' or one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    return engine


def engine_class(name: str) -> type[Engine]:
    """The engine class called ``name`` (its module is imported now, on first use)."""
    check_engine(name)
    if name == "auto":
        raise ValueError("'auto' is a choice among engines, not an engine: see workbench.inference.engines.choose")
    return importlib.import_module(f"{__name__}.{ENGINES[name]}").ENGINE
