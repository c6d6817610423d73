"""Shared fixtures for the workbench test suite.

Keep tests fast: models are built on timm's tiny ``test_resnet`` encoder (0.37 M
parameters) and run on small inputs; the machine has two CPU cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

# every Predictor on torch unless a test asks for an engine: no engine measurements in other tests (test_engines.py)
os.environ.setdefault("WORKBENCH_ENGINE", "torch")

import workbench  # noqa: E402
from workbench.system.machine import cpu_supports_bf16  # noqa: E402

# bf16 on the CPU: native (AVX512-BF16 / AMX) kernels or a slow emulation. Without them a bf16 forward of a
# trained network at 360x480 takes seconds (a test of the shipped checkpoints took about 7 minutes on a 2-core
# AVX2 EPYC), and the workbench itself never picks bf16 there (precision="auto" resolves to fp32).
NATIVE_CPU_BF16 = cpu_supports_bf16()
requires_native_bf16 = pytest.mark.skipif(
    not NATIVE_CPU_BF16,
    reason=f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16: bf16 would be emulated (minutes) "
    "and precision='auto' runs fp32 here; the test runs on AVX512-BF16 / AMX CPUs",
)


TINY_ENCODER = "test_resnet"
TIRAMISU_TEST_VARIANT = "fc_densenet56"


def tiny_kwargs(arch: str, **overrides) -> dict:
    """Constructor kwargs that keep ``arch`` small and fast (besides ``num_classes``)."""
    info = workbench.get_architecture(arch)
    kwargs: dict = {}
    if info.default_encoder is not None:
        kwargs["encoder"] = TINY_ENCODER
    if arch == "tiramisu" and "variant" in info.options:
        kwargs["variant"] = TIRAMISU_TEST_VARIANT
    kwargs.update(overrides)
    return kwargs


def make_tiny_model(arch: str, num_classes: int = 3, **overrides) -> torch.nn.Module:
    """``workbench.create_model`` with the tiny encoder (where the architecture has one)."""
    return workbench.create_model(arch, num_classes=num_classes, **tiny_kwargs(arch, **overrides))


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model(arch, num_classes=3, **overrides)``."""
    return make_tiny_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_image(width: int, height: int, kind: str = "halves", mode: str = "RGB", seed: int = 0):
    """A small PIL test image.

    kinds:
        ``"halves"``: left half dark (20), right half bright (235) in every channel;
        ``"noise"``: uniform random pixels (incompressible, for truncation tests);
        ``"gradient"``: a horizontal ramp.
    """
    from PIL import Image

    if kind == "halves":
        arr = np.full((height, width, 3), 20, np.uint8)
        arr[:, width // 2 :] = 235
    elif kind == "noise":
        arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif kind == "gradient":
        ramp = np.linspace(0, 255, width).round().astype(np.uint8)
        arr = np.repeat(np.repeat(ramp[None, :, None], height, 0), 3, 2)
    else:
        raise ValueError(kind)
    im = Image.fromarray(arr, "RGB")
    return im if mode == "RGB" else im.convert(mode)


@pytest.fixture
def image_factory():
    return make_image


def make_threshold_model(in_chans: int = 3) -> torch.nn.Module:
    """A real ``naive`` model whose weights are set by hand to a brightness threshold.

    With the default normalisation the summed normalised input ``s`` is negative for
    dark pixels and positive for bright ones; the model outputs logits
    ``(relu(-s), relu(s))``: class 0 = dark, class 1 = bright. Every operation is
    per pixel (only the centre tap of the 3x3 convolution is non-zero), so the
    expected label map is known exactly for any image.
    """
    model = workbench.create_model("naive", num_classes=2, in_chans=in_chans, width=2, depth=1)
    conv, bn, _relu = model.encoder.layers[0]
    head = model.head
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 1, 1] = 1.0  # channel 0: s
        conv.weight[1, :, 1, 1] = -1.0  # channel 1: -s
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        head.weight.zero_()
        head.weight[0, 1, 0, 0] = 1.0  # logit 0 (dark) = relu(-s)
        head.weight[1, 0, 0, 0] = 1.0  # logit 1 (bright) = relu(s)
        head.bias.zero_()
    return model.eval()


@pytest.fixture
def threshold_model():
    """Factory: ``threshold_model(in_chans=3)``; see :func:`make_threshold_model`."""
    return make_threshold_model


@pytest.fixture
def isolated_registry(monkeypatch):
    """Lets a test reload plugins (with a changed environment or sys.path) and restores the registry after.

    The registry's dicts and the imported plugin modules are put back exactly as
    they were, so later tests see the same architecture objects.
    """
    from workbench.models import registry

    registry.load_plugins()
    saved_registry = dict(registry._REGISTRY)
    saved_errors = dict(registry._ERRORS)
    saved_loaded = registry._LOADED
    saved_modules = {k: v for k, v in sys.modules.items() if k.startswith("workbench_plugins.")}
    monkeypatch.delenv("WORKBENCH_PLUGIN_PATH", raising=False)
    try:
        yield registry
    finally:
        with registry._LOCK:
            registry._REGISTRY.clear()
            registry._REGISTRY.update(saved_registry)
            registry._ERRORS.clear()
            registry._ERRORS.update(saved_errors)
            registry._LOADED = saved_loaded
        for k in [k for k in sys.modules if k.startswith("workbench_plugins.")]:
            del sys.modules[k]
        sys.modules.update(saved_modules)


def pytest_collection_modifyitems(session, config, items):
    """Run tests/test_engines.py last. Known, unresolved (issue 24's note): after test_data, test_device_data and
    test_encoders, test_engines' OpenVINO/ONNX Runtime work left the process in a state where it died of SIGSEGV a
    few tests later while waiting on a subprocess (test_evaluate's CLI tests; faulthandler printed nothing). Each
    group alone is fine, and nothing after test_engines starts a subprocess when it runs last."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_engines.py"))
