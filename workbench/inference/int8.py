"""The int8 model of a checkpoint on the CPU: an OpenVINO IR beside the checkpoint, sha256-verified, run as an nn.Module.

``workbench quantize`` (:mod:`workbench.inference.quantize`) writes ``checkpoints/<name>.int8.xml/.bin`` and the
manifest's ``inference.int8`` entry (files, sha256, calibration, test mIoU against fp32, accepted or not).
:func:`load_int8` checks every file's sha256 against the manifest before compiling (an IR is a graph and
weights, never pickle); :class:`OpenVINOModule` puts a compiled model behind the PyTorch model's contract so the
evaluation code runs it unchanged. :func:`to_openvino` converts a model with dynamic height and width.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
import torch.nn as nn

from ..io.checkpoint import CheckpointError, sha256_file
from ..io.manifest import Manifest
from ..io.onnx import PadCropGraph
from ..models.base import PadCropModel

__all__ = ["INT8_SUFFIX", "Int8Error", "to_openvino", "compile_openvino", "int8_paths", "save_ir", "load_int8", "verify_int8", "OpenVINOModule"]

INT8_SUFFIX = ".int8"  # checkpoints/<name>.int8.xml / .int8.bin


class Int8Error(ValueError):
    """The int8 model cannot be used: none recorded, a file missing or not matching its sha256, not accepted."""


def to_openvino(model: nn.Module, in_chans: int = 3, example_size: tuple[int, int] = (352, 480)):
    """The model as an ``openvino.Model`` taking ``(1, in_chans, H, W)`` normalised images, H and W dynamic."""
    model = model.eval().float()
    graph = PadCropGraph(model) if isinstance(model, PadCropModel) else model
    example = torch.zeros(1, in_chans, *example_size)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about shape arithmetic: PadCropGraph has no shape branches
        return ov.convert_model(graph, example_input=example, input=[ov.PartialShape([1, in_chans, -1, -1])])


def compile_openvino(ov_model_or_xml, threads: int | None = None, cache_dir: str | None = None, inference_precision: str = "f32"):
    """Compile for the CPU (latency hint, ``threads`` inference threads, optional model cache).

    ``inference_precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` for the layers that are not int8: f32 by
    default, because on a CPU with native bf16 OpenVINO would otherwise run them in bf16 (its default there)
    and the labels would drift from fp32 by more than the int8 quantization itself.
    """
    core = ov.Core()
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir:
        cfg["CACHE_DIR"] = str(cache_dir)
    model = core.read_model(str(ov_model_or_xml)) if isinstance(ov_model_or_xml, (str, Path)) else ov_model_or_xml
    return core.compile_model(model, "CPU", cfg)


def int8_paths(manifest_path: str | os.PathLike) -> tuple[Path, Path]:
    """Where a checkpoint's int8 IR lives: ``<stem>.int8.xml`` and ``<stem>.int8.bin`` beside its manifest."""
    p = Path(manifest_path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + INT8_SUFFIX + ".xml"), stem.with_name(stem.name + INT8_SUFFIX + ".bin")


def save_ir(ov_model, xml: Path) -> tuple[Path, Path]:
    """Write ``ov_model`` to ``xml`` (+ ``.bin``) atomically: both files are written in a temporary folder
    beside them and renamed, the ``.bin`` first, so a reader never sees a graph without its weights."""
    xml = Path(xml)
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".int8-", dir=xml.parent))
    try:
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        binf = xml.with_suffix(".bin")
        os.replace(tmp / "model.bin", binf)
        os.replace(tmp / "model.xml", xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml, binf


def _verify(folder: Path, entry: dict) -> None:
    sums = entry.get("sha256") or {}
    for name in entry.get("files") or []:
        f = folder / name
        if not f.is_file():
            if entry.get("shipped") is False:
                raise Int8Error(f"the int8 model {f.name} is not shipped: {entry.get('not_shipped_why', 'run `workbench quantize` to build it')}")
            raise Int8Error(f"int8 model file {f} is missing (run `workbench quantize` again)")
        want = sums.get(name)
        if not want:
            raise Int8Error(f"the manifest records no sha256 for {name}: the int8 model is not trusted")
        got = sha256_file(f)
        if got != want:
            raise Int8Error(f"{f}: sha256 {got[:12]}... does not match the manifest's {want[:12]}...: the int8 model is corrupted or stale")


def verify_int8(path: str | os.PathLike) -> Path:
    """The int8 IR (``.xml``) of the checkpoint whose manifest is ``path``, after checking that its manifest accepted
    it and that its files match their recorded sha256. Raises Int8Error otherwise (nothing unverified is compiled)."""
    try:
        manifest = Manifest.read(path)
    except CheckpointError as exc:
        raise Int8Error(str(exc)) from None
    entry = ((manifest.get("inference") or {}).get("int8")) or None
    if not entry or not entry.get("files"):
        raise Int8Error(f"{manifest.path.name} records no int8 model (inference.int8): an int8 file beside it is not trusted")
    if not entry.get("accepted"):
        raise Int8Error(f"{manifest.path.name}: the int8 model was not accepted ({entry.get('reason', 'no test mIoU recorded')})")
    _verify(manifest.path.parent, entry)
    return manifest.path.parent / entry["files"][0]


class OpenVINOModule(nn.Module):
    """A compiled OpenVINO model behind the PyTorch model's contract: ``(1, C, H, W)`` float tensor in, logits out.

    Lets the evaluation code (test-time augmentation, sliding windows, metrics) run an OpenVINO model
    unchanged. Batches larger than one run image by image.
    """

    def __init__(self, compiled, workbench_config: dict | None = None, precision: str = "int8") -> None:
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.workbench_config = workbench_config or {}
        self.engine = "openvino"
        self.engine_precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for xi in x.float().contiguous().cpu().numpy():
            self.request.infer({0: np.ascontiguousarray(xi[None])})
            outs.append(torch.from_numpy(self.request.get_output_tensor(0).data.copy()))
        return torch.cat(outs)


def load_int8(path: str | os.PathLike, *, threads: int | None = None, require_accepted: bool = False) -> OpenVINOModule:
    """The checkpoint's shipped int8 model (``inference.int8`` in its manifest), sha256-verified, compiled for the CPU.

    Raises Int8Error when the manifest has no int8 entry, the files are missing or do not match their
    sha256, or (``require_accepted``) the int8 model failed the accuracy rule.
    """
    try:
        manifest = Manifest.read(path)
    except CheckpointError as exc:
        raise Int8Error(str(exc)) from None
    entry = ((manifest.get("inference") or {}).get("int8")) or None
    if not entry:
        raise Int8Error(f"{manifest.path.name} has no int8 model (inference.int8); run `workbench quantize {manifest.path}`")
    if require_accepted and not entry.get("accepted"):
        raise Int8Error(f"{manifest.path.name}: the int8 model was not accepted ({entry.get('reason', 'no test mIoU recorded')})")
    folder = manifest.path.parent
    _verify(folder, entry)
    xml = folder / entry["files"][0]
    config = {"architecture": manifest.get("architecture"), "kwargs": manifest.kwargs}
    return OpenVINOModule(compile_openvino(xml, threads=threads), config, precision="int8")
