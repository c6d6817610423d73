"""Generic tests run on every registered architecture.

Parametrised over ``workbench.list_architectures()``, so a new plugin is
covered the day it is registered.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

import workbench
from workbench.io.checkpoint import checkpoint_paths, sha256_file
from workbench.models.upsampling import METHODS, Upsample

from conftest import make_tiny_model, tiny_kwargs

ARCHS = workbench.list_architectures()
UPSAMPLE_ARCHS = [a for a in ARCHS if workbench.get_architecture(a).accepts_upsample]
UPSAMPLE_CHOICES = list(METHODS) + ["transposed_k3", "transposed_k4"]
NUM_CLASSES = 3


def test_every_builtin_plugin_is_registered():
    # a guard for the parametrisation itself: an empty or shrunken list would make the suite vacuous
    assert workbench.plugin_errors() == {}
    for name in ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated", "naive", "smp_unet", "deeplabv3plus"):
        assert name in ARCHS
    assert len(UPSAMPLE_ARCHS) >= 7


def _forward(model, x):
    with torch.no_grad():
        return model(x)


# --------------------------------------------------------------------------- forward / backward


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_odd_sizes(arch):
    model = make_tiny_model(arch, NUM_CLASSES).eval()
    for (h, w), b in (((33, 47), 2), ((65, 97), 1), ((361, 479), 1)):
        y = _forward(model, torch.randn(b, 3, h, w))
        assert y.shape == (b, NUM_CLASSES, h, w), (arch, h, w)
        assert torch.isfinite(y).all(), (arch, h, w)


@pytest.mark.parametrize("arch", ARCHS)
def test_too_small_input_is_refused_clearly(arch):
    model = make_tiny_model(arch, NUM_CLASSES).eval()
    with pytest.raises(ValueError, match="too small"):
        _forward(model, torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        _forward(model, torch.randn(3, 64, 64))


@pytest.mark.parametrize("arch", ARCHS)
def test_backward_all_parameters_get_finite_gradients(arch):
    model = make_tiny_model(arch, NUM_CLASSES).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    y = model(x)
    assert y.shape == (2, NUM_CLASSES, 64, 96)
    loss = torch.nn.functional.cross_entropy(y, target)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{arch}: parameters without gradient: {no_grad[:10]}"
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p.grad).all()]
    assert not bad, f"{arch}: non-finite gradients in {bad[:10]}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_in_chans(arch, in_chans):
    model = make_tiny_model(arch, NUM_CLASSES, in_chans=in_chans).eval()
    assert model.workbench_config["kwargs"]["in_chans"] == in_chans
    y = _forward(model, torch.randn(1, in_chans, 40, 72))
    assert y.shape == (1, NUM_CLASSES, 40, 72)
    assert torch.isfinite(y).all()
    with pytest.raises(RuntimeError):  # the other channel count must not be silently accepted
        _forward(model, torch.randn(1, 4 - in_chans if in_chans == 3 else 3, 40, 72))


@pytest.mark.parametrize("arch", ARCHS)
def test_anatomy(arch):
    # what `workbench info` and the app's architecture tab show, for every architecture
    from workbench.models.anatomy import count_flops, count_parameters, stage_shapes

    model = make_tiny_model(arch, NUM_CLASSES).train()
    shapes = stage_shapes(model, (65, 97))
    assert model.training  # restored
    assert len(shapes) >= 2
    assert any("encoder" in s.name for s in shapes)
    last = shapes[-1]
    assert (last.channels, last.reduction) == (NUM_CLASSES, 1.0)
    divisor = getattr(model, "size_divisor", 1)
    assert (last.height, last.width) == (-(-65 // divisor) * divisor, -(-97 // divisor) * divisor)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0
    assert count_flops(model, (64, 64)) > 0
    assert model.training


# --------------------------------------------------------------------------- upsampling methods


def _upsample_scales(arch) -> list[int]:
    """Scales of every upsampling step of ``arch``, read off a model built with nearest upsampling."""
    ref = make_tiny_model(arch, NUM_CLASSES, upsample="nearest")
    scales = [m.scale for m in ref.modules() if isinstance(m, Upsample)]
    assert scales, f"{arch} accepts upsample= but has no Upsample module"
    return scales


@pytest.mark.parametrize("method", UPSAMPLE_CHOICES)
@pytest.mark.parametrize("arch", UPSAMPLE_ARCHS)
def test_every_upsample_method(arch, method):
    spec = workbench.models.upsampling.parse_upsample(method)
    kernel = spec.kernel_size
    max_scale = max(_upsample_scales(arch))
    if spec.method == "transposed" and kernel is not None and kernel < max_scale:
        # by design: a transposed convolution's kernel must cover its stride (FCN's 32x step with k3)
        with pytest.raises(ValueError, match=rf"kernel_size {kernel} must be >= the stride {max_scale}"):
            make_tiny_model(arch, NUM_CLASSES, upsample=method)
        return
    model = make_tiny_model(arch, NUM_CLASSES, upsample=method).eval()
    assert model.workbench_config["kwargs"]["upsample"] == workbench.models.upsampling.canonical_upsample(method)
    used = {m.method for m in model.modules() if isinstance(m, Upsample)}
    assert spec.method in used, f"{arch} built with {method} uses {used}"
    y = _forward(model, torch.randn(1, 3, 65, 97))
    assert y.shape == (1, NUM_CLASSES, 65, 97)
    assert torch.isfinite(y).all()


def test_transposed_kernel_smaller_than_stride_is_a_clear_error():
    # non-generic anchor for the parametrised test above: FCN-32s has a single 32x step
    with pytest.raises(ValueError, match="must be >= the stride 32"):
        make_tiny_model("fcn32s", NUM_CLASSES, upsample="transposed_k3")
    # while a U-Net only takes 2x steps, so k3 is fine there
    model = make_tiny_model("unet", NUM_CLASSES, upsample="transposed_k3")
    assert {m.scale for m in model.modules() if isinstance(m, Upsample)} == {2}


# --------------------------------------------------------------------------- config and checkpoints


@pytest.mark.parametrize("arch", ARCHS)
def test_workbench_config_is_json_and_rebuilds_same_structure(arch):
    model = make_tiny_model(arch, NUM_CLASSES)
    config = model.workbench_config
    assert config["architecture"] == arch
    text = json.dumps(config)  # must not raise
    restored = json.loads(text)
    assert restored == config  # nothing was stringified into a different value
    rebuilt = workbench.create_model(restored["architecture"], **restored["kwargs"])
    a, b = model.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {k: (v.shape, v.dtype) for k, v in b.items()}
    assert rebuilt.workbench_config == config


def _trained_like(model):
    """Perturb BN statistics so a round trip that forgot buffers would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_fp32(arch, tmp_path):
    model = _trained_like(make_tiny_model(arch, NUM_CLASSES))
    x = torch.randn(1, 3, 48, 80)
    expected = _forward(model, x)
    manifest_path = workbench.save_checkpoint(tmp_path / "ckpt", model, {"metrics": {"miou": 0.5}})
    assert manifest_path == tmp_path / "ckpt.json"
    assert (tmp_path / "ckpt.safetensors").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    for ref in ("ckpt.json", "ckpt.safetensors", "ckpt"):
        loaded, manifest = workbench.load_checkpoint(tmp_path / ref)
        assert not loaded.training
        assert manifest["architecture"] == arch
        assert manifest["metrics"] == {"miou": 0.5}
        assert len(manifest["classes"]) == NUM_CLASSES
        assert torch.equal(_forward(loaded, x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_fp16(arch, tmp_path):
    model = _trained_like(make_tiny_model(arch, NUM_CLASSES))
    x = torch.randn(1, 3, 48, 80)
    expected = _forward(model, x)
    workbench.save_checkpoint(tmp_path / "half", model, dtype=torch.float16)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "half.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    loaded, manifest = workbench.load_checkpoint(tmp_path / "half.json")
    assert manifest["weights"]["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    got = _forward(loaded, x)
    scale = expected.abs().max().item() + 1e-6
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-3 * scale)


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def saved(tmp_path):
    """Factory: save a tiny ``arch`` checkpoint into tmp_path; returns (weights, manifest) paths."""

    def _save(arch):
        model = make_tiny_model(arch, NUM_CLASSES)
        workbench.save_checkpoint(tmp_path / "ckpt", model)
        return checkpoint_paths(tmp_path / "ckpt")

    return _save


def _edit_manifest(manifest_path: Path, **changes):
    m = json.loads(manifest_path.read_text())
    for key, value in changes.items():
        if key == "sha256":
            m["weights"]["sha256"] = value
        elif key.startswith("kwargs_"):
            m["kwargs"][key[len("kwargs_"):]] = value
        else:
            m[key] = value
    manifest_path.write_text(json.dumps(m))


@pytest.mark.parametrize("arch", ARCHS)
def test_tampered_weights_are_refused(arch, saved):
    weights, manifest = saved(arch)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(workbench.CheckpointError, match="sha256"):
        workbench.load_checkpoint(manifest)


class _WritesMarker:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.mark.parametrize("flavour", ["torch.save", "pickle-protocol-2", "pickle-protocol-0"])
def test_pickle_renamed_to_safetensors_is_refused_without_unpickling(flavour, saved, tmp_path):
    weights, manifest = saved("naive")
    control = tmp_path / "control_marker"
    marker = tmp_path / "marker"
    # control: this payload really does run code when unpickled (so the check below can fail)
    pickle.loads(pickle.dumps(_WritesMarker(control)))
    assert control.exists()

    payload = {"state_dict": _WritesMarker(marker)}
    if flavour == "torch.save":
        torch.save(payload, weights)
        assert weights.read_bytes()[:2] == b"PK"
    else:
        weights.write_bytes(pickle.dumps(payload, protocol=int(flavour[-1])))
    # a matching hash: only the format check stands between the file and the unpickler
    _edit_manifest(manifest, sha256=sha256_file(weights))
    with pytest.raises(workbench.CheckpointError) as err:
        workbench.load_checkpoint(manifest)
    if flavour != "pickle-protocol-0":
        assert "pickle" in str(err.value)
    assert not marker.exists(), "the pickle was unpickled"


@pytest.mark.parametrize("keep_header", [False, True])
def test_truncated_safetensors_is_refused(saved, keep_header):
    weights, manifest = saved("unet")
    data = weights.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cut = 8 + header_len + 100 if keep_header else len(data) // 3
    weights.write_bytes(data[:cut])
    with pytest.raises(workbench.CheckpointError, match="sha256"):
        workbench.load_checkpoint(manifest)
    _edit_manifest(manifest, sha256=sha256_file(weights))  # even with a matching hash
    with pytest.raises(workbench.CheckpointError):
        workbench.load_checkpoint(manifest)
    weights.write_bytes(b"")
    _edit_manifest(manifest, sha256=sha256_file(weights))
    with pytest.raises(workbench.CheckpointError, match="truncated or empty"):
        workbench.load_checkpoint(manifest)


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_with_unknown_architecture_is_refused(arch, saved):
    _, manifest = saved(arch)
    _edit_manifest(manifest, architecture="no_such_architecture")
    with pytest.raises(workbench.CheckpointError, match="no_such_architecture") as err:
        workbench.load_checkpoint(manifest)
    assert arch in str(err.value)  # lists the valid choices


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_with_mismatched_class_count_is_refused(arch, saved):
    weights, manifest = saved(arch)
    classes = json.loads(manifest.read_text())["classes"]
    _edit_manifest(manifest, classes=classes[:-1])
    with pytest.raises(workbench.CheckpointError, match="classes"):
        workbench.load_checkpoint(manifest)
    # consistent manifest, but the weights have NUM_CLASSES outputs
    _edit_manifest(manifest, classes=classes + [{"name": "extra", "color": [1, 2, 3]}], kwargs_num_classes=NUM_CLASSES + 1)
    with pytest.raises(workbench.CheckpointError, match="does not fit"):
        workbench.load_checkpoint(manifest)


def test_manifest_refusals_are_clear(saved, tmp_path):
    weights, manifest = saved("naive")
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(workbench.CheckpointError, match="not a valid JSON"):
        workbench.load_checkpoint(manifest)
    manifest.write_text(good)
    _edit_manifest(manifest, kwargs_no_such_option=1)
    with pytest.raises(workbench.CheckpointError, match="no_such_option"):
        workbench.load_checkpoint(manifest)
    manifest.write_text(good)
    m = json.loads(good)
    m["weights"]["file"] = "../elsewhere.safetensors"
    manifest.write_text(json.dumps(m))
    with pytest.raises(workbench.CheckpointError, match="beside the manifest"):
        workbench.load_checkpoint(manifest)
    with pytest.raises(workbench.CheckpointError, match="no manifest"):
        workbench.load_checkpoint(tmp_path / "missing.safetensors")
    manifest.write_text(good)
    weights.unlink()
    with pytest.raises(workbench.CheckpointError, match="does not exist"):
        workbench.load_checkpoint(manifest)


def test_save_checkpoint_refuses_inconsistent_class_list(tmp_path):
    model = make_tiny_model("naive", NUM_CLASSES)
    with pytest.raises(workbench.CheckpointError, match="classes"):
        workbench.save_checkpoint(tmp_path / "x", model, {"classes": [{"name": "a", "color": [0, 0, 0]}]})
    with pytest.raises(workbench.CheckpointError, match="architecture"):
        workbench.save_checkpoint(tmp_path / "y", torch.nn.Conv2d(3, 3, 1))


def test_residual_unet_adds_encoder_blocks_only_to_plain_encoders():
    from workbench.models.encoders import TimmEncoder

    residual = make_tiny_model("residual_unet", NUM_CLASSES)
    assert isinstance(residual.encoder, TimmEncoder)  # test_resnet already has short skips
    plain = workbench.create_model("residual_unet", num_classes=NUM_CLASSES, encoder="lcnet_035")
    assert not isinstance(plain.encoder, TimmEncoder)  # lcnet has none: wrapped in residual blocks
    assert hasattr(plain.encoder, "blocks")
    forced = make_tiny_model("residual_unet", NUM_CLASSES, encoder_residual=True)
    assert not isinstance(forced.encoder, TimmEncoder)
    y = _forward(plain.eval(), torch.randn(1, 3, 64, 64))
    assert y.shape == (1, NUM_CLASSES, 64, 64)


def test_tiny_kwargs_cover_encoder_rules():
    # the helper the generic tests rely on: tiny encoder where there is one, native Tiramisu, no encoder for naive
    assert tiny_kwargs("unet")["encoder"] == "test_resnet"
    assert "encoder" not in tiny_kwargs("tiramisu") and tiny_kwargs("tiramisu")["variant"] == "fc_densenet56"
    assert tiny_kwargs("naive") == {}
    assert make_tiny_model("unet").encoder.name == "test_resnet"
