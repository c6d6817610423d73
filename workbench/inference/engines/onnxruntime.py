"""The ONNX Runtime engine (CPU execution provider): the model exported once by :mod:`workbench.io.onnx`
(height and width dynamic), cached as ``model-opset<N>-torch<version>.onnx`` in the checkpoint's folder."""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from ...io.onnx import OPSET, PadCropGraph, export_graph
from .base import Engine, EngineError

__all__ = ["OnnxRuntimeEngine", "ENGINE", "export"]

EXAMPLE_SIZE = (64, 96)


def export(model: nn.Module, in_chans: int, path: Path) -> None:
    """Export the model (normalised input, PadCropModel contract) to ``path`` atomically."""
    graph = PadCropGraph(copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)).eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        export_graph(graph, torch.randn(1, in_chans, *EXAMPLE_SIZE), tmp, OPSET)
        os.replace(tmp, path)
    except Exception as exc:
        raise EngineError(f"torch.onnx could not export {type(model).__name__}: {type(exc).__name__}: {str(exc)[:400]}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    precisions = ("fp32",)

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if self.device.type != "cpu":
            raise EngineError(f"the onnxruntime engine runs on the CPU only, not {self.device}")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.artifacts if self.artifacts is not None else Path(tmp)
            path = folder / f"model-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
            self.info["onnx_cached"] = path.is_file()
            if not path.is_file():
                export(model, self.in_chans, path)
            self.info["export_s"] = time.perf_counter() - t0
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            t1 = time.perf_counter()
            try:
                self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise EngineError(f"ONNX Runtime could not load the model: {type(exc).__name__}: {str(exc)[:400]}") from exc
            self.info["session_s"] = time.perf_counter() - t1
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self._input: arr})[0])


ENGINE = OnnxRuntimeEngine
