"""The OpenVINO engine (CPU): the model traced once with dynamic height and width, saved as IR, compiled for
latency.

``ov.convert_model`` traces :class:`~workbench.io.onnx.PadCropGraph` (the pad is always applied, so the
trace holds at every size) with input ``[1, C, ?, ?]``: a new upload size needs no conversion and no
recompilation, only OpenVINO's shape inference on the first call at that size. The IR is written to the
checkpoint's cache folder (``openvino-<version>-fp32.xml``) and the compiled blob to OpenVINO's
``CACHE_DIR``, so a restart converts and compiles nothing.

bf16 (only on a CPU with native bf16): the same IR compiled with ``INFERENCE_PRECISION_HINT=bf16``.

int8: an IR quantized elsewhere (:mod:`workbench.inference.quantize`) is picked up, never made here, from
:func:`workbench.inference.engines.cache.int8_ir_path`: ``<checkpoint>.int8.xml`` beside the manifest (``workbench quantize``), else ``openvino_int8.xml`` in
the checkpoint's cache folder.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch
import torch.nn as nn

from ...io.onnx import PadCropGraph, quiet_tracer
from ...system.allocator import active_allocator
from ...system.machine import cpu_supports_bf16
from ..int8 import Int8Error, verify_int8
from .base import Engine, EngineError
from .cache import int8_ir_path

__all__ = ["OpenVINOEngine", "ENGINE", "convert"]

EXAMPLE_SIZE = (64, 96)  # the trace's example input; the converted graph takes any H, W >= 32


def convert(model: nn.Module, in_chans: int) -> ov.Model:
    """The model (PadCropModel contract) as an OpenVINO model with input (1, in_chans, ?, ?)."""
    graph = PadCropGraph(copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)).eval()
    example = torch.randn(1, in_chans, *EXAMPLE_SIZE)
    try:
        with torch.no_grad(), quiet_tracer():
            return ov.convert_model(graph, example_input=example, input=[ov.PartialShape([1, in_chans, -1, -1])])
    except Exception as exc:  # the converter's traces are long: say which model failed and why
        raise EngineError(f"OpenVINO could not convert {type(model).__name__}: {type(exc).__name__}: {str(exc)[:400]}") from exc


class OpenVINOEngine(Engine):
    name = "openvino"
    precisions = ("fp32", "bf16", "int8")
    max_batch = 1  # the IR's input is [1, C, ?, ?]

    def __init__(self, model: nn.Module, **kwargs) -> None:
        super().__init__(model, **kwargs)
        if self.device.type != "cpu":
            raise EngineError(f"the openvino engine runs on the CPU only, not {self.device}")
        allocator = active_allocator()
        if allocator != "system":
            # measured: OpenVINO 2026.4's CPU plugin aborts the process ("munmap_chunk(): invalid pointer") under a
            # preloaded tcmalloc_minimal or jemalloc; refuse clearly so auto measures the others instead
            raise EngineError(f"OpenVINO's CPU plugin crashes under a preloaded {allocator} (LD_PRELOAD); run with WORKBENCH_ALLOCATOR=system to use the openvino engine")
        if self.precision == "bf16" and not cpu_supports_bf16():  # OpenVINO would quietly run f32 instead
            raise EngineError("the openvino engine runs bf16 only on a CPU with native bf16 (AVX512-BF16 or AMX)")
        core = ov.Core()
        # the IR holds fp32 weights; bf16 is the plugin's inference precision (activations and matmuls in bf16)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        t0 = time.perf_counter()
        if self.precision == "int8":
            source = int8_ir_path(self.manifest_path, self.artifacts)
            if source is None:
                raise EngineError("no int8 OpenVINO model for this checkpoint (workbench.inference.quantize makes one)")
            if self.manifest_path is not None and source.parent == Path(self.manifest_path).parent:  # shipped: verify it
                try:
                    verify_int8(self.manifest_path)
                except Int8Error as exc:
                    raise EngineError(str(exc)) from None
            self.info["ir"] = str(source)
        elif self.artifacts is not None:
            source = self.artifacts / f"openvino-{ov.__version__.split('-')[0]}-fp32.xml"  # bf16 compiles the same IR
            self.info["ir_cached"] = source.is_file() and source.with_suffix(".bin").is_file()
            if not self.info["ir_cached"]:
                self._save(convert(model, self.in_chans), source)
            self.info["convert_s"] = time.perf_counter() - t0
        else:
            source = convert(model, self.in_chans)  # no checkpoint: converted in memory, nothing cached
            self.info["convert_s"] = time.perf_counter() - t0
        if self.artifacts is not None:
            config["CACHE_DIR"] = str(self.artifacts / "ov")
        t1 = time.perf_counter()
        try:
            self.compiled = core.compile_model(str(source) if isinstance(source, Path) else source, "CPU", config)
        except Exception as exc:
            raise EngineError(f"OpenVINO could not compile the model: {type(exc).__name__}: {str(exc)[:400]}") from exc
        self.info["compile_s"] = time.perf_counter() - t1
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    @staticmethod
    def _save(model: ov.Model, xml: Path) -> None:
        """IR to ``xml`` (+ ``.bin``), fp32 weights, via temporary names: a crash never leaves a half-written pair
        under the final name (the ``.xml`` is renamed last, and it is what marks the pair complete)."""
        tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{threading.get_ident()}.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        with self._lock:
            self._request.infer({0: arr})
            out = self._request.get_output_tensor(0).data.copy()  # the request's buffer is reused by the next call
        return torch.from_numpy(out)


ENGINE = OpenVINOEngine
