"""Inference engines (torch, OpenVINO, ONNX Runtime) against fp32 eager, and ``engine="auto"``'s cached choice.

Generated from the registry: every architecture runs through every engine at a multiple of 32 and at an odd
size (the traced graphs have dynamic height and width; the eager model pads differently at the two). An engine
that cannot run an architecture must say so with EngineError, never fall back silently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workbench
from workbench.inference.engines import ENGINES, EngineError, engine_class
from workbench.inference.engines import cache as engine_cache
from workbench.inference.engines import choose
from workbench.io.checkpoint import save_checkpoint
from workbench.system.machine import cpu_supports_bf16

from conftest import make_image, make_tiny_model, requires_native_bf16

SIZES = ((64, 96), (97, 131))  # a multiple of 32 (no padding in eager) and an odd size (reflect padding)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Engine decisions and converted models in a fresh folder; no dataset images (a synthetic one is used)."""
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "no_data"))
    monkeypatch.delenv("WORKBENCH_ENGINE", raising=False)
    monkeypatch.setattr(choose, "examples_dir", lambda: tmp_path / "no_examples")  # nor the shipped examples
    monkeypatch.setattr(choose, "SYNTHETIC_SIZE", (64, 96))  # small measurements: the tiny models are the point
    monkeypatch.setattr(choose, "ROUNDS", 2)


@pytest.mark.parametrize("arch", workbench.list_architectures())
@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_engine_matches_eager_on_every_architecture(arch, engine):
    model = make_tiny_model(arch, num_classes=3).eval()
    try:
        runner = engine_class(engine)(model, in_chans=3, precision="fp32")
    except EngineError as exc:  # allowed, but it must be the clear error, naming the model
        assert type(model).__name__ in str(exc) or engine in str(exc)
        pytest.skip(f"{engine} cannot run {arch}: {exc}")
    for h, w in SIZES:  # one converted graph, two sizes: dynamic shapes, no recompile error
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            ref = model(x)
            out = runner(x).float()
        assert out.shape == ref.shape == (1, 3, h, w)
        tol = 1e-3 * (1 + float(ref.abs().max()))
        assert float((out - ref).abs().max()) <= tol, f"{engine} on {arch} at {h}x{w}: logits differ by {float((out - ref).abs().max()):.2e}"
        assert float((out.argmax(1) == ref.argmax(1)).float().mean()) >= 0.995


def test_engines_refuse_what_they_cannot_run():
    model = make_tiny_model("fcn8s").eval()
    with pytest.raises(EngineError, match="precisions"):
        engine_class("onnxruntime")(model, precision="bf16")
    with pytest.raises(ValueError, match="engine must be"):
        engine_class("tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        workbench.Predictor(model, "cuda", engine="openvino")


def _checkpoint(tmp_path, arch="naive", seed=0):
    torch.manual_seed(seed)
    return save_checkpoint(tmp_path / f"{arch}_{seed}", make_tiny_model(arch, num_classes=3))


def _decision_files():
    return sorted((engine_cache.engines_dir() / "decisions").glob("*.json"))


def test_auto_measures_once_then_reads_the_cache(tmp_path):
    path = _checkpoint(tmp_path)
    before = choose.measurement_count()
    first = workbench.Predictor(path, "cpu")
    assert choose.measurement_count() == before + 1
    assert first.engine in ENGINES and first.engine_reason.startswith(f"{first.engine} {first.engine_precision}:")
    assert "synthetic" in first.engine_reason  # no data root here: says what it measured on
    record = json.loads(_decision_files()[0].read_text())
    names = {(c["engine"], c["precision"]) for c in record["candidates"]}
    assert {("torch eager", "fp32"), ("torch", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp32")} <= names
    second = workbench.Predictor(path, "cpu")
    assert choose.measurement_count() == before + 1  # nothing re-measured
    assert (second.engine, second.engine_precision) == (first.engine, first.engine_precision)
    assert second.engine_reason.endswith("cached)")
    im = make_image(70, 45, "noise")
    a, b = first.predict(im), second.predict(im)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.engine, a.engine_precision) == (first.engine, first.engine_precision)
    # the converted models are cached too: a restart converts nothing
    if second.engine == "openvino":
        assert second._engine.info["ir_cached"]


@pytest.mark.parametrize("damage", ["garbage", "wrong_key", "bad_choice"])
def test_a_damaged_decision_is_ignored_and_rebuilt(tmp_path, damage):
    path = _checkpoint(tmp_path)
    workbench.Predictor(path, "cpu")
    (file,) = _decision_files()
    data = json.loads(file.read_text())
    if damage == "garbage":
        file.write_bytes(b"\x00{not json")
    elif damage == "wrong_key":
        data["key"]["weights_sha256"] = "0" * 64  # a decision for other weights, stored under this name
        file.write_text(json.dumps(data))
    else:
        data["choice"] = {"engine": "os.system", "precision": "fp32"}
        file.write_text(json.dumps(data))
    before = choose.measurement_count()
    pred = workbench.Predictor(path, "cpu")
    assert choose.measurement_count() == before + 1  # measured again, not trusted
    assert pred.engine in ENGINES
    rebuilt = json.loads(file.read_text())
    assert rebuilt["key"]["weights_sha256"] != "0" * 64 and rebuilt["choice"]["engine"] in ENGINES


def test_a_different_checkpoint_or_thread_count_is_measured_anew(tmp_path, monkeypatch):
    a, b = _checkpoint(tmp_path, seed=0), _checkpoint(tmp_path, seed=1)
    before = choose.measurement_count()
    workbench.Predictor(a, "cpu")
    workbench.Predictor(b, "cpu")
    assert choose.measurement_count() == before + 2
    key = engine_cache.decision_key("x" * 64)
    assert key != engine_cache.decision_key("x" * 64, threads=key["threads"] + 1)


def test_auto_never_picks_emulated_bf16(tmp_path):
    pred = workbench.Predictor(_checkpoint(tmp_path), "cpu")
    if cpu_supports_bf16():
        pytest.skip("this CPU has native bf16: auto may pick it where it is fastest")
    assert pred.engine_precision != "bf16"
    assert all(c["precision"] != "bf16" for c in pred.engine_record["candidates"])  # not even measured


def test_auto_keeps_torch_where_it_does_not_measure(tmp_path):
    model = make_tiny_model("fcn8s")
    before = choose.measurement_count()
    assert workbench.Predictor(model, "cpu").engine == "torch"  # an nn.Module: no weights hash to key a cache on
    assert workbench.Predictor(_checkpoint(tmp_path), "cpu", precision="fp32").engine == "torch"  # an explicit precision
    assert choose.measurement_count() == before


def test_explicit_engines_on_a_checkpoint_agree(tmp_path):
    path = _checkpoint(tmp_path, arch="unet")
    im = make_image(131, 97, "noise")
    ref = workbench.Predictor(path, "cpu", engine="torch", precision="fp32").predict(im)
    for engine in ("openvino", "onnxruntime"):
        pred = workbench.Predictor(path, "cpu", engine=engine)
        assert (pred.engine, pred.engine_precision) == (engine, "fp32")
        out = pred.predict(im)
        assert out.engine == engine and out.labels.shape == ref.labels.shape
        assert float((out.labels == ref.labels).mean()) >= 0.995


def test_the_zoo_measures_at_prepare_and_torch_stands_in_meanwhile(tmp_path, monkeypatch):
    import threading

    from workbench.inference import predictor as predictor_module
    from workbench.inference.zoo import Zoo

    folder = tmp_path / "ckpts"
    folder.mkdir()
    _checkpoint(folder)
    release, measuring = threading.Event(), threading.Event()
    real = predictor_module.choose_engine

    def slow_choose(*args, **kwargs):  # the real measurement, held until the test has asked for the model
        measuring.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "choose_engine", slow_choose)
    zoo = Zoo(folder, engine="auto", timeout=None)
    trained = [n for n, e in zoo.entries.items() if e.trained]
    assert trained == ["naive"]
    thread = zoo.prepare()
    assert measuring.wait(60)
    stand_in = zoo.predictor("naive")  # answers now, without waiting for the measurement
    assert stand_in.engine == "torch" and "standing in" in stand_in.engine_reason
    im = make_image(70, 45, "noise")
    during = zoo.predict("naive", im)
    release.set()
    thread.join(120)
    assert not thread.is_alive()
    chosen = zoo.predictor("naive")
    assert chosen is not stand_in and "standing in" not in chosen.engine_reason
    assert chosen.engine_reason.startswith(f"{chosen.engine} {chosen.engine_precision}:")
    assert len(_decision_files()) == 1  # measured once, stored
    after = zoo.predict("naive", im)
    assert float((after.labels == during.labels).mean()) >= 0.995  # the stand-in and the choice agree
    assert zoo.prepare(background=False) is None  # nothing left to build: returns at once


@requires_native_bf16
@pytest.mark.parametrize("arch", ["unet", "fcn8s"])
def test_openvino_bf16_runs_bf16_and_stays_close_to_eager(arch):
    model = make_tiny_model(arch, num_classes=3).eval()
    runner = engine_class("openvino")(model, in_chans=3, precision="bf16")
    runtime = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runner.compiled.get_runtime_model().get_ops()}
    assert "bf16" in runtime  # the hint took: some layers really run bf16
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, out = model(x), runner(x).float()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) <= 5e-2 * (1 + float(ref.abs().max()))


def test_openvino_bf16_is_refused_without_native_bf16(monkeypatch):
    from workbench.inference.engines import openvino as ov_engine

    monkeypatch.setattr(ov_engine, "cpu_supports_bf16", lambda: False)
    with pytest.raises(EngineError, match="native bf16"):
        ov_engine.OpenVINOEngine(make_tiny_model("fcn8s").eval(), precision="bf16")


def test_int8_is_a_candidate_only_where_its_stored_test_agreement_passes_parity():
    from workbench.io.manifest import Manifest

    def manifest(**int8):
        return Manifest.from_dict({"architecture": "unet", "inference": {"int8": int8}})

    assert choose.int8_refusal(manifest()) is None  # nothing stored: judged by the measurement alone
    good = {"accepted": True, "test_label_agreement": {"mean": 0.997, "worst": 0.99, "images": 59}}
    assert choose.int8_refusal(manifest(**good)) is None
    low_mean = {"accepted": True, "test_label_agreement": {"mean": 0.9858, "worst": 0.99, "images": 59}}
    assert "98.58%" in choose.int8_refusal(manifest(**low_mean))
    low_worst = {"accepted": True, "test_label_agreement": {"mean": 0.996, "worst": 0.9617, "images": 59}}
    assert "96.17%" in choose.int8_refusal(manifest(**low_worst))
    assert "refused by workbench quantize" in choose.int8_refusal(manifest(accepted=False, reason="drop 0.8 points"))


def test_measurement_images_come_from_the_data_root_else_the_shipped_examples(tmp_path, monkeypatch):
    from workbench.io.manifest import Manifest
    from workbench.paths import examples_dir

    monkeypatch.setattr(choose, "examples_dir", examples_dir)  # undo the fixture: the package's own examples
    camvid = Manifest.from_dict({"architecture": "unet", "dataset": {"name": "camvid"}})
    images, described = choose.measurement_images(camvid, "RGB", data_root=tmp_path / "no_data")
    assert len(images) == choose.NUM_IMAGES and "shipped with the package" in described  # what a Space measures on
    isbi = Manifest.from_dict({"architecture": "unet", "dataset": {"name": "isbi"}})
    images, described = choose.measurement_images(isbi, "L", data_root=tmp_path / "no_data")
    assert images[0].mode == "L" and "isbi" in described


def test_an_int8_file_beside_a_checkpoint_runs_only_if_its_manifest_accepted_and_hashed_it(tmp_path):
    from workbench.inference.int8 import int8_paths, save_ir, to_openvino
    from workbench.io.checkpoint import sha256_file
    from workbench.io.manifest import Manifest

    path = _checkpoint(tmp_path)
    model, _ = workbench.load_checkpoint(path)
    xml, binary = int8_paths(path)
    save_ir(to_openvino(model.eval(), 3, (64, 96)), xml)  # an IR under the int8 name (fp32 inside: verification is the point)

    def build():
        return engine_class("openvino")(model.eval(), in_chans=3, precision="int8", manifest_path=path)

    with pytest.raises(EngineError, match="records no int8 model"):  # a file the manifest does not name is not trusted
        build()
    data = json.loads(path.read_text())
    entry = {"files": [xml.name, binary.name], "sha256": {xml.name: sha256_file(xml), binary.name: sha256_file(binary)}, "accepted": False, "reason": "drop 4.1 points"}
    data["inference"] = {"int8": entry}
    path.write_text(json.dumps(data))
    with pytest.raises(EngineError, match="not accepted"):
        build()
    entry["accepted"] = True
    path.write_text(json.dumps(data))
    runner = build()
    assert runner.precision == "int8"  # accepted and hashed: it runs
    del runner  # OpenVINO maps the .bin: never rewrite a file a live model reads (a new inode below, as save_ir does)
    damaged = binary.with_name("damaged.bin")
    damaged.write_bytes(binary.read_bytes()[:-8] + b"\0" * 8)
    damaged.replace(binary)  # damaged after the fact
    with pytest.raises(EngineError, match="does not match"):
        build()
    assert Manifest.read(path).sha256  # the checkpoint itself is untouched
