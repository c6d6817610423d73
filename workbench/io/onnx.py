"""Export a checkpoint to ONNX (any height and width) and check it with ONNX Runtime.

The exported graph is self-contained: it takes an image batch ``(B, C, H, W)`` of float pixel values in
0..255 (RGB, or one channel for grayscale checkpoints), normalizes it with the checkpoint's mean/std, pads to
the architecture's size divisor (reflect), runs the network and crops, so it returns logits
``(B, num_classes, H, W)`` for any ``H, W >= 32``, exactly like the PyTorch model. Class names, colours and
the normalization travel in the model's metadata (``workbench_manifest``).

    workbench export checkpoints/camvid_unet.json exported/camvid_unet --onnx
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..classes import default_normalization
from ..models.base import MIN_INPUT_SIZE, PadCropModel
from .checkpoint import load_checkpoint

OPSET = 18
CHECK_SIZES = ((360, 480), (97, 131))  # a CamVid frame and an odd size: the dynamic axes really are dynamic
MIN_LABEL_AGREEMENT = 0.999


class OnnxExportError(ValueError):
    """The model could not be exported, or the exported graph disagrees with PyTorch."""


class PadCropGraph(nn.Module):
    """``PadCropModel.forward`` without shape-dependent Python branches, for tracing (ONNX, OpenVINO).

    The eager model skips padding at multiples of ``size_divisor`` and picks reflect or replicate by size: a
    trace would bake the example's branch in. Here the pad is always applied (possibly by zero) and always
    reflect, which is the eager result for every input of at least ``MIN_INPUT_SIZE`` (then ``pad < divisor
    <= MIN_INPUT_SIZE <= H, W``). Input: normalised (B, C, H, W) float32, any H, W >= 32; output: logits.
    """

    def __init__(self, model: PadCropModel) -> None:
        super().__init__()
        if not isinstance(model, PadCropModel):
            raise OnnxExportError(f"only workbench models (PadCropModel) can be traced, got {type(model).__name__}")
        if model.size_divisor > MIN_INPUT_SIZE:
            raise OnnxExportError(f"size divisor {model.size_divisor} exceeds the minimum input size {MIN_INPUT_SIZE}")
        self.model = model
        self.divisor = int(model.size_divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph = (self.divisor - h % self.divisor) % self.divisor
        pw = (self.divisor - w % self.divisor) % self.divisor
        # reflect is valid because ph, pw < divisor <= MIN_INPUT_SIZE <= h, w
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")  # (B, C, H', W'), multiples of divisor
        return self.model.forward_padded(x)[:, :, :h, :w]


class _ExportGraph(PadCropGraph):
    """Normalize, then pad (always, possibly by zero, so the graph has no shape-dependent branches), run, crop."""

    def __init__(self, model: PadCropModel, mean: list[float], std: list[float]) -> None:
        super().__init__(model)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)))
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return super().forward(image * self.scale - self.shift)


def export_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, check: bool = True, opset: int = OPSET) -> dict[str, Any]:
    """Export the checkpoint ``src`` (a manifest ``.json``) to ``dst`` (``.onnx`` added when missing).

    With ``check`` (default), ONNX Runtime runs the file at :data:`CHECK_SIZES` and its label maps are compared
    with PyTorch's; a disagreement above ``1 - MIN_LABEL_AGREEMENT`` raises :class:`OnnxExportError` and the
    file is not left behind.

    Returns:
        ``{"path", "bytes", "opset", "checks": [{"size", "label_agreement", "max_abs_logit_diff"}]}``.
    """
    model, manifest = load_checkpoint(src)
    if not isinstance(model, PadCropModel):
        raise OnnxExportError(f"{manifest.architecture}: only workbench models (PadCropModel) can be exported")
    model = model.float().eval()
    in_chans = manifest.in_chans
    norm = manifest.normalization or default_normalization(in_chans)
    graph = _ExportGraph(model, norm["mean"], norm["std"]).eval()

    dst = Path(dst)
    if dst.suffix != ".onnx":
        dst = dst.with_name(dst.name + ".onnx")
    dst.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(1, in_chans, 64, 96) * 255
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            export_graph(graph, example, tmp, opset)
        except Exception as exc:  # the exporter's own errors are long traces; say which model failed and why
            raise OnnxExportError(f"torch.onnx could not export {manifest.get('architecture')}: {type(exc).__name__}: {str(exc)[:500]}") from exc
        _add_metadata(tmp, manifest)
        checks = check_onnx(tmp, graph, in_chans) if check else []
        os.replace(tmp, dst)  # only a checked file takes the final name
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(dst), "bytes": dst.stat().st_size, "opset": opset, "checks": checks}


@contextlib.contextmanager
def quiet_tracer():
    """Silence what ``torch.jit.trace`` says on every export (its deprecation notice; tracer warnings about shape
    arithmetic, which :class:`PadCropGraph` has no branches on): a user converting a model sees no noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_graph(graph: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = OPSET) -> None:
    """Export ``graph`` (one input ``image``, one output ``logits``; batch, height and width dynamic) to ``path``."""
    with torch.no_grad(), quiet_tracer():
        torch.onnx.export(
            graph, (example,), str(path), input_names=["image"], output_names=["logits"], opset_version=opset,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
            dynamo=False,
        )


def _add_metadata(path: Path, manifest: Mapping[str, Any]) -> None:
    import onnx  # optional (a test extra): only an export needs it

    proto = onnx.load(str(path))
    keep = {k: manifest[k] for k in ("architecture", "kwargs", "classes", "normalization", "dataset", "metrics") if k in manifest}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "workbench_manifest", json.dumps(keep)
    proto.doc_string = f"Segmentation Workbench {manifest.get('architecture', '')}: image (B, C, H, W) in 0..255 -> logits (B, K, H, W)"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_onnx(path: str | os.PathLike, reference: nn.Module, in_chans: int, sizes=CHECK_SIZES, seed: int = 0) -> list[dict]:
    """Run the ONNX file with ONNX Runtime and compare with ``reference`` (the PyTorch export graph)."""
    try:
        import onnxruntime as ort  # optional (a test extra): only the check needs it
    except ImportError as exc:
        raise OnnxExportError("onnxruntime is not installed (pip install onnxruntime), so the export cannot be checked; pass check=False / --no-check to skip") from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for h, w in sizes:
        # a smooth random image (not white noise): label maps then have regions, like a photo's
        x = F.interpolate(torch.rand(1, in_chans, max(2, h // 16), max(2, w // 16), generator=gen) * 255, size=(h, w), mode="bilinear", align_corners=False)
        with torch.no_grad():
            ref = reference(x).numpy()
        out = session.run(["logits"], {"image": x.numpy()})[0]
        if out.shape != ref.shape:
            raise OnnxExportError(f"ONNX output {out.shape} != PyTorch {ref.shape} at {h}x{w}")
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        rows.append({"size": [h, w], "label_agreement": agree, "max_abs_logit_diff": float(np.abs(out - ref).max())})
        if agree < MIN_LABEL_AGREEMENT:
            raise OnnxExportError(f"ONNX Runtime and PyTorch label maps agree on only {100 * agree:.2f}% of pixels at {h}x{w}")
    return rows
