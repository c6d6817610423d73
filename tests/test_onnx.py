"""`workbench export --onnx`: every architecture exports with dynamic batch, height and width, and ONNX Runtime
agrees with PyTorch on the label maps (checked here independently of the exporter's own check)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from workbench.io.onnx import OnnxExportError, export_onnx

from conftest import make_tiny_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")

ROOT = Path(__file__).resolve().parents[1]
ARCHS = workbench.list_architectures()


def _save(tmp_path: Path, arch: str, in_chans: int = 3, num_classes: int = 4) -> Path:
    torch.manual_seed(0)
    model = make_tiny_model(arch, num_classes, in_chans=in_chans).eval()
    # make the logits decisive (an untrained head gives near-ties that any rounding flips)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.5)
    return workbench.save_checkpoint(tmp_path / arch, model, {"classes": [{"name": f"c{i}", "color": [i * 60, 0, 0]} for i in range(num_classes)]})


def _torch_labels(manifest_path: Path, image: np.ndarray) -> np.ndarray:
    """Labels from the PyTorch model through the project's own Predictor (its normalization, fp32)."""
    pred = workbench.Predictor(manifest_path, device="cpu", precision="fp32").predict(image)
    return pred.labels


@pytest.mark.parametrize("arch", ARCHS)
def test_export_runs_at_any_size_and_matches_pytorch(arch, tmp_path):
    manifest = _save(tmp_path, arch)
    res = export_onnx(manifest, tmp_path / "out" / arch)
    path = Path(res["path"])
    assert path.suffix == ".onnx" and path.is_file() and res["bytes"] == path.stat().st_size
    assert [c["size"] for c in res["checks"]] == [[360, 480], [97, 131]]
    assert all(c["label_agreement"] >= 0.999 for c in res["checks"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for h, w in ((33, 47), (64, 96)):  # sizes the exporter never saw
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        logits = session.run(["logits"], {"image": np.concatenate([x, x[:, :, ::-1, ::-1]])})[0]  # batch of 2
        assert logits.shape == (2, 4, h, w)
        ours = _torch_labels(manifest, image)
        assert (logits[0].argmax(0) == ours).mean() >= 0.995, arch


def test_grayscale_checkpoint_and_metadata(tmp_path):
    manifest = _save(tmp_path, "unet", in_chans=1, num_classes=2)
    res = export_onnx(manifest, tmp_path / "gray.onnx")
    proto = onnx.load(res["path"])
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", 1, "height", "width"]
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["workbench_manifest"])
    assert meta["architecture"] == "unet" and meta["kwargs"]["in_chans"] == 1
    assert [c["name"] for c in meta["classes"]] == ["c0", "c1"]
    assert "normalization" in meta


def test_a_disagreeing_export_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    from workbench.io import onnx as onnx_export

    manifest = _save(tmp_path, "fcn32s")
    real = onnx_export.check_onnx

    def broken_reference(path, reference, in_chans, **kw):  # PyTorch side answers with the logits reversed
        class Flip(torch.nn.Module):
            def forward(self, x):
                return -reference(x)

        return real(path, Flip(), in_chans, **kw)

    monkeypatch.setattr(onnx_export, "check_onnx", broken_reference)
    with pytest.raises(OnnxExportError, match="agree on only"):
        export_onnx(manifest, tmp_path / "bad")
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))


def test_cli_export_onnx(tmp_path):
    manifest = _save(tmp_path, "fcn8s")
    res = subprocess.run([sys.executable, "-m", "workbench", "export", str(manifest), str(tmp_path / "m"), "--onnx"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "m.onnx").is_file()
    assert "labels agree on" in res.stdout and "360x480" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "workbench", "export", str(tmp_path / "missing.json"), str(tmp_path / "x"), "--onnx"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr
