"""The typed checkpoint manifest (workbench.io.manifest.Manifest): every shipped manifest round-trips, the
accessors replace the dict-digging, and the mapping interface keeps old code (``manifest["classes"]``) working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import workbench
from workbench.io.manifest import CheckpointError, Manifest, read_manifest
from workbench.paths import checkpoints_dir

from conftest import make_tiny_model

SHIPPED = sorted(checkpoints_dir().glob("*.json"))


def test_checkpoints_are_shipped():
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_manifest_round_trips(path):
    raw = json.loads(path.read_text())
    man = Manifest.from_dict(raw)
    assert man.to_dict() == raw
    assert list(man.to_dict()) == list(raw)  # the file's key order survives a rewrite
    assert json.dumps(man.to_dict(), indent=2) + "\n" == json.dumps(raw, indent=2) + "\n"
    read = Manifest.read(path)
    assert read.path == path and read.to_dict() == raw
    assert dict(read) == {**raw, "_path": str(path)}  # the mapping is what read_manifest returns
    assert read == read_manifest(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_accessors_agree_with_the_json(path):
    raw = json.loads(path.read_text())
    man = Manifest.from_dict(raw)
    assert man.architecture == raw["architecture"] and man.kwargs == raw["kwargs"]
    assert man.test_miou == raw["metrics"]["test"]["miou"] == man.metric("test", "miou") == man.metric("test")
    assert man.val_miou == raw["metrics"]["val"]["miou"]
    assert man.metric("test", "pixel_accuracy") == raw["metrics"]["test"]["pixel_accuracy"]
    assert man.dataset_name == raw["dataset"]["name"] in ("camvid", "isbi")
    assert man.num_classes == raw["kwargs"]["num_classes"] == len(man.class_names())
    assert man.in_chans == raw["kwargs"]["in_chans"]
    assert man.sha256 == raw["weights"]["sha256"]
    assert man.cpu_latency_ms == raw["cost"]["cpu_latency_ms"] and man.gflops == raw["cost"]["gflops"]
    assert man.pinned_precision == (raw.get("inference") or {}).get("precision")
    assert man.in_upsampling_lab == bool(raw.get("upsampling_lab"))
    assert man.is_strawman == bool(raw.get("strawman"))
    assert [s for s, _ in man.metric_splits()] == ["test", "val"]
    assert man.training_config == raw["training"]["config"] and man.epochs == raw["training"]["epochs_completed"]
    assert man.extra == {}  # every shipped key has a field


def test_init_epochs_follow_the_init_from_chain():
    man = Manifest.read(checkpoints_dir() / "camvid_unet.json")
    assert man.epochs == 8 and man.init_epochs == [115, 4]  # 115 epochs, fine-tuned for 4, then for 8
    assert Manifest(training={"epochs_completed": 3}).init_epochs == []


def test_unknown_keys_are_kept_and_missing_ones_are_absent():
    raw = {"architecture": "unet", "kwargs": {"num_classes": 2}, "weights": {"sha256": "ab"}, "my_tool": {"x": [1, 2]}, "metrics": {"miou": 0.5}}
    man = Manifest.from_dict(raw)
    assert man.extra == {"my_tool": {"x": [1, 2]}} and man["my_tool"] == {"x": [1, 2]}
    assert man.to_dict() == raw
    assert "classes" not in man and man.get("classes") is None and man.classes is None
    with pytest.raises(KeyError):
        man["dataset"]
    # odd shapes (metrics not per split, as an old test writes them) give None, not an exception
    assert man.test_miou is None and man.metric_splits() == [] and man.dataset_name is None
    assert Manifest.from_dict({"dataset": "isbi"}).dataset_name == "isbi"
    assert Manifest.from_dict({"dataset": None}).to_dict() == {"dataset": None}  # an explicit null stays


def test_mapping_interface_edits_like_a_dict():
    man = Manifest.from_dict({"architecture": "fcn8s", "kwargs": {"num_classes": 3}})
    man["metrics"] = {"test": {"miou": 0.4}}
    man["license"] = "mit"
    man["note"] = "hello"
    assert man.test_miou == 0.4 and man.license == "mit" and man.extra == {"note": "hello"}
    assert list(man) == ["architecture", "kwargs", "metrics", "license", "note"]
    del man["note"], man["license"]
    assert list(man) == ["architecture", "kwargs", "metrics"]
    man.setdefault("metrics", {})["val"] = {"miou": 0.5}
    assert man.val_miou == 0.5
    assert man.pop("metrics") == {"test": {"miou": 0.4}, "val": {"miou": 0.5}} and "metrics" not in man
    assert {**man} == dict(man) == man.to_dict() == {"architecture": "fcn8s", "kwargs": {"num_classes": 3}}
    assert Manifest.of(man) is man and Manifest.of(None) == {}


def test_load_checkpoint_returns_a_manifest(tmp_path):
    model = make_tiny_model("unet", num_classes=3)
    path = workbench.save_checkpoint(tmp_path / "m", model, {"dataset": {"name": "camvid"}, "metrics": {"test": {"miou": 0.25}}})
    loaded, manifest = workbench.load_checkpoint(path)
    assert isinstance(manifest, Manifest) and loaded.workbench_manifest is manifest
    assert manifest.test_miou == 0.25 and manifest.dataset_name == "camvid" and manifest.num_classes == 3
    assert manifest["_path"] == str(path) and manifest.path == path
    assert manifest["classes"] == manifest.classes and len(manifest["classes"]) == 3
    assert manifest.to_dict() == json.loads(path.read_text())
    # it can be saved again as it is (a Mapping is accepted wherever a manifest dict was)
    again = workbench.save_checkpoint(tmp_path / "again", loaded, manifest)
    assert Manifest.read(again).test_miou == 0.25
    assert workbench.Manifest is Manifest and workbench.CheckpointError is CheckpointError


def test_reading_manifests_needs_no_torch():
    code = "import sys, workbench; from workbench.io.manifest import Manifest; m = Manifest.read(sys.argv[1]); assert m.test_miou; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code, str(SHIPPED[0])], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
