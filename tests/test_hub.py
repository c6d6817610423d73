"""Hugging Face Hub checkpoints (workbench.io.hub), without the network.

The Hub is never contacted: pushes go to a mocked ``HfApi`` and pulls read a
Hugging Face cache built by hand in a temporary folder, in the real layout
(``models--owner--name/{blobs, refs/main, snapshots/<commit>/...}``), with
``HF_HUB_OFFLINE`` on. Sockets are blocked for every test in this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import workbench
from workbench import cli
from workbench.io import hub
from workbench.io.checkpoint import sha256_file

from conftest import make_image, make_tiny_model

huggingface_hub = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "alice/camvid-unet-tiny"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests/test_hub.py")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline mode on (env and huggingface_hub's constants)."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these once, at import: patch the values it uses
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def populate_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """Lay ``files`` out as huggingface_hub's cache does; returns the snapshot folder."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


class FakeHub:
    """Stands in for the Hub's write API: records repos, branches and commits."""

    def __init__(self):
        self.repos, self.branches, self.commits = [], [], []

    def install(self, monkeypatch):
        fake = self

        def create_repo(self, repo_id, **kwargs):
            fake.repos.append((repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self, repo_id, **kwargs):
            fake.branches.append((repo_id, kwargs))

        def create_commit(self, repo_id, operations, **kwargs):
            files = {}
            for op in operations:
                data = op.path_or_fileobj
                files[op.path_in_repo] = data if isinstance(data, bytes) else Path(data).read_bytes()
            fake.commits.append({"repo_id": repo_id, "files": files, **kwargs})

            class Info:
                commit_url = f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

            return Info()

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
        return self


@pytest.fixture
def fake_hub(monkeypatch):
    return FakeHub().install(monkeypatch)


METRICS = {
    "test": {
        "miou": 0.6123,
        "pixel_accuracy": 0.8812,
        "mean_class_accuracy": 0.7345,
        "per_class_iou": [0.9, 0.5, float("nan")],
        "class_names": ["sky", "road", "car"],
        "split": "test",
        "n_images": 233,
    },
    "val": {"miou": 0.65, "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "per_class_iou": [0.95, 0.6, 0.4], "split": "val", "epoch": 7},
}


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny trained-looking U-Net checkpoint (float32 weights) with metrics, cost and a training recipe."""
    model = make_tiny_model("unet", num_classes=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    manifest = {
        "classes": [{"name": "sky", "color": [128, 128, 128]}, {"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [64, 0, 128]}],
        "dataset": {"name": "camvid", "train_split": "train", "val_split": "val"},
        "training": {"command": "__main__.py train --arch unet --dataset camvid --epochs 7", "epochs_completed": 7, "precision": "bf16", "config": {"arch": "unet"}},
        "metrics": METRICS,
        "cost": {"input": [360, 480], "gflops": 1.234, "cpu_latency_ms": 12.0, "cpu_precision": "fp32"},
    }
    return workbench.save_checkpoint(tmp_path / "src" / "best", model, manifest)


@pytest.fixture
def pushed(checkpoint, fake_hub):
    url = hub.push_to_hub(checkpoint, REPO)
    return url, fake_hub.commits[-1]["files"]


def _predict(model_or_path, image):
    return workbench.Predictor(model_or_path, device="cpu", precision="fp32", optimize=False).predict(image)


# ----------------------------------------------------------------------------- push


def test_push_uploads_three_files_in_one_commit(checkpoint, fake_hub):
    url = hub.push_to_hub(checkpoint, REPO, private=True, commit_message="first")
    assert url == f"https://huggingface.co/{REPO}/commit/{COMMIT}"
    assert fake_hub.repos == [(REPO, {"repo_type": "model", "private": True, "exist_ok": True})]
    assert len(fake_hub.commits) == 1 and not fake_hub.branches
    commit = fake_hub.commits[0]
    assert commit["commit_message"] == "first" and commit["revision"] is None
    files = commit["files"]
    assert set(files) == {"model.safetensors", "workbench.json", "README.md"}
    weights = checkpoint.with_suffix(".safetensors")
    assert files["model.safetensors"] == weights.read_bytes()  # byte for byte
    uploaded = json.loads(files["workbench.json"])
    original = json.loads(checkpoint.read_text())
    assert uploaded["weights"]["file"] == "model.safetensors"
    assert uploaded["weights"]["sha256"] == original["weights"]["sha256"] == sha256_file(weights)
    assert {k: v for k, v in uploaded.items() if k != "weights"}.keys() == {k: v for k, v in original.items() if k != "weights"}.keys()
    assert uploaded["architecture"] == "unet" and uploaded["kwargs"] == original["kwargs"]
    assert "_path" not in uploaded
    assert files["README.md"].decode().startswith("---\n")


def test_push_accepts_weights_path_or_stem_and_branch(checkpoint, fake_hub):
    hub.push_to_hub(checkpoint.with_suffix(".safetensors"), REPO, revision="experiments", create_repo=False)
    hub.push_to_hub(checkpoint.with_suffix(""), REPO)
    assert len(fake_hub.commits) == 2 and len(fake_hub.repos) == 1
    assert fake_hub.branches == [(REPO, {"branch": "experiments", "repo_type": "model", "exist_ok": True})]
    assert fake_hub.commits[0]["revision"] == "experiments"
    assert fake_hub.commits[0]["files"]["model.safetensors"] == fake_hub.commits[1]["files"]["model.safetensors"]


def test_push_refuses_a_tampered_checkpoint(checkpoint, fake_hub):
    weights = checkpoint.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(workbench.CheckpointError, match="sha256"):
        hub.push_to_hub(checkpoint, REPO)
    assert fake_hub.commits == [] and fake_hub.repos == []


def test_push_turns_hub_errors_into_plain_messages(checkpoint, monkeypatch):
    def denied(self, repo_id, **kwargs):
        raise OSError("You must be logged in: token is required")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", denied)
    with pytest.raises(hub.HubError, match="could not push to alice/camvid-unet-tiny: You must be logged in"):
        hub.push_to_hub(checkpoint, REPO)


def test_pushed_files_round_trip_through_from_hub(pushed, checkpoint, hf_cache):
    _url, files = pushed
    populate_cache(hf_cache, REPO, files)
    model, manifest = workbench.from_hub(REPO)
    original, _ = workbench.load_checkpoint(checkpoint)
    assert manifest["architecture"] == "unet" and manifest["metrics"]["test"]["n_images"] == 233
    for k, v in original.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    image = make_image(48, 40, kind="gradient")
    a, b = _predict(original, image), _predict(model, image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probs, b.probs)
    assert b.classes == a.classes


# ----------------------------------------------------------------------------- pull (offline, from the cache)


def test_from_hub_offline_loads_from_cache(pushed, checkpoint, hf_cache):
    snapshot = populate_cache(hf_cache, REPO, pushed[1])
    path = hub.download_from_hub(REPO)
    assert path == snapshot / "workbench.json"
    # the Predictor takes the downloaded manifest path too
    image = make_image(40, 32)
    np.testing.assert_array_equal(_predict(path, image).labels, _predict(checkpoint, image).labels)
    # explicit cache_dir and a pinned commit give the same files
    assert hub.download_from_hub(REPO, revision=COMMIT, cache_dir=hf_cache, local_files_only=True) == path


def test_tampered_weights_in_cache_are_refused(pushed, hf_cache):
    snapshot = populate_cache(hf_cache, REPO, pushed[1])
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x55  # inside the tensor data: the header still parses
    blob.write_bytes(bytes(data))
    with pytest.raises(workbench.CheckpointError, match=r"sha256 .* does not match the manifest"):
        workbench.from_hub(REPO)


def test_pickled_weights_in_cache_are_refused(pushed, hf_cache, tmp_path):
    files = dict(pushed[1])
    pickle_path = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, pickle_path)
    files["model.safetensors"] = pickle_path.read_bytes()
    populate_cache(hf_cache, REPO, files)
    with pytest.raises(workbench.CheckpointError, match="refusing to unpickle"):
        workbench.from_hub(REPO)


def test_offline_and_not_cached_is_a_clear_error(hf_cache):
    with pytest.raises(hub.HubError) as info:
        workbench.from_hub("nobody/not-cached")
    msg = str(info.value)
    assert "nobody/not-cached" in msg and "not in the local Hugging Face cache" in msg and "offline" in msg
    assert isinstance(info.value, workbench.CheckpointError) and isinstance(info.value, ValueError)


def test_cached_repo_that_is_not_a_workbench_checkpoint(hf_cache):
    populate_cache(hf_cache, "bob/some-bert", {"config.json": b"{}", "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "})
    with pytest.raises(hub.HubError, match="workbench.json of bob/some-bert is not in the local Hugging Face cache"):
        workbench.from_hub("bob/some-bert")


def test_manifest_naming_a_file_outside_the_snapshot_is_refused(pushed, hf_cache):
    files = dict(pushed[1])
    manifest = json.loads(files["workbench.json"])
    manifest["weights"]["file"] = "../../blobs/whatever.safetensors"
    files["workbench.json"] = json.dumps(manifest).encode()
    populate_cache(hf_cache, REPO, files)
    with pytest.raises(hub.HubError, match="expected a .safetensors file at the top of the repository"):
        workbench.from_hub(REPO)


def test_invalid_repo_id(hf_cache):
    with pytest.raises(hub.HubError, match="not a valid Hub repository id"):
        workbench.from_hub("not a valid/repo/id")


def _http_error(cls, message):
    """An instance of a huggingface_hub HTTP error class without a real HTTP response."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


@pytest.mark.parametrize(
    "error, expected",
    [
        ("RepositoryNotFoundError", "repository nobody/missing not found on the Hub"),
        ("GatedRepoError", "is gated"),
        ("RevisionNotFoundError", "has no revision 'v9'"),
        ("EntryNotFoundError", "has no workbench.json: it is not a Segmentation Workbench checkpoint"),
    ],
)
def test_online_errors_are_plain(monkeypatch, hf_cache, error, expected):
    from huggingface_hub import utils

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    seen = {}

    def fake_download(repo_id, filename, **kwargs):
        seen.update(kwargs)
        raise _http_error(getattr(utils, error), f"404 Client Error: {error}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(hub.HubError, match=expected):
        workbench.from_hub("nobody/missing", revision="v9")
    assert seen["local_files_only"] is False and seen["revision"] == "v9"


def test_repository_not_found_through_the_real_download_path(monkeypatch, hf_cache):
    """hf_hub_download itself, against a fake HTTP transport answering 'RepoNotFound'."""
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub.utils import _http

    if not hasattr(_http, "set_client_factory") or not hasattr(httpx2, "MockTransport"):
        pytest.skip("this huggingface_hub has no pluggable httpx2 client")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    requests = []

    def handler(request):
        requests.append(str(request.url))
        return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, request=request)

    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler)))
    try:
        with pytest.raises(hub.HubError, match="repository nobody/missing not found on the Hub"):
            workbench.from_hub("nobody/missing")
    finally:
        _http.set_client_factory(_http.default_client_factory)
    assert requests and all("nobody/missing" in u for u in requests)


# ----------------------------------------------------------------------------- model card


def _front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, sep, body = card[4:].partition("\n---\n")
    assert sep
    return yaml.safe_load(head), body


def test_model_card_metadata_and_metrics(checkpoint):
    manifest = workbench.load_checkpoint(checkpoint)[1]
    card = hub.model_card(manifest, REPO)
    meta, body = _front_matter(card)
    assert meta["library_name"] == "segmentation-workbench"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert meta["tags"] == ["semantic-segmentation", "image-segmentation", "workbench", "unet"]
    assert meta["datasets"] == ["camvid"]
    assert meta["license"] == "other"
    (entry,) = meta["model-index"]
    assert entry["name"] == "camvid-unet-tiny"
    test, val = entry["results"]  # test first
    assert test["task"]["type"] == "image-segmentation"
    assert test["dataset"] == {"type": "camvid", "name": "CamVid", "split": "test"}
    assert {m["type"]: m["value"] for m in test["metrics"]} == {"mean_iou": 61.23, "accuracy": 88.12, "mean_accuracy": 73.45}
    assert val["dataset"]["split"] == "val" and val["metrics"][0]["value"] == 65.0
    # body: architecture, encoder, metrics table, per-class IoU (nan shown as '-'), cost, recipe, how to use
    assert "U-Net" in body and "`test_resnet`" in body
    assert "| split | images | mIoU | global accuracy | mean class accuracy |" in body
    assert "| test | 233 | 61.23 | 88.12 | 73.45 |" in body
    assert "| val | - | 65.00 | 90.00 | 80.00 |" in body
    assert "| class | test | val |" in body
    assert "| sky | 90.00 | 95.00 |" in body and "| car | - | 40.00 |" in body
    assert "1.2 GFLOPs at 360x480" in body
    assert f"{manifest['num_parameters']:,}" in body
    assert "python -m workbench train --arch unet --dataset camvid --epochs 7" in body
    assert f'workbench.from_hub("{REPO}")' in body and "workbench.Predictor(model)" in body
    assert manifest["weights"]["sha256"] in body


def test_model_card_is_built_with_huggingface_hub(checkpoint):
    """The front matter is a ModelCardData with EvalResults (the Hub's own parser reads them back)."""
    from workbench.io.modelcard import build_model_card

    manifest = workbench.load_checkpoint(checkpoint)[1]
    card = build_model_card(manifest, REPO)
    assert isinstance(card, huggingface_hub.ModelCard) and str(card) == hub.model_card(manifest, REPO)
    parsed = huggingface_hub.ModelCard(str(card))
    assert parsed.data.model_name == "camvid-unet-tiny" and parsed.data.library_name == "segmentation-workbench"
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in parsed.data.eval_results}
    assert results[("test", "mean_iou")] == 61.23 and results[("val", "mean_iou")] == 65.0
    assert all(r.task_type == "image-segmentation" and r.dataset_type == "camvid" for r in parsed.data.eval_results)


def test_model_card_without_metrics():
    manifest = {"architecture": "fcn8s", "kwargs": {"num_classes": 2, "in_chans": 1}, "classes": [{"name": "a"}, {"name": "b|c"}], "weights": {"file": "x.safetensors", "sha256": "ab" * 32}}
    card = hub.model_card(manifest, "carol/fcn", license="mit")
    meta, body = _front_matter(card)
    assert "model-index" not in meta and "datasets" not in meta
    assert meta["license"] == "mit" and "fcn8s" in meta["tags"]
    assert "No metrics in the manifest" in body
    assert "b\\|c" in body  # a pipe in a class name does not break the table
    assert 'workbench.from_hub("carol/fcn")' in body


def test_model_card_for_an_unknown_architecture_and_odd_values():
    manifest = {
        "architecture": "from_a_missing_plugin",
        "kwargs": {"num_classes": 2},
        "dataset": {"name": "folder"},
        "metrics": {"test": {"miou": float("nan"), "pixel_accuracy": None}, "val": "not a dict"},
        "weights": {"sha256": "00" * 32},
        "license": "apache-2.0",
    }
    meta, body = _front_matter(hub.model_card(manifest, "dave/x"))
    assert meta["license"] == "apache-2.0"
    assert "datasets" not in meta and "model-index" not in meta  # no finite metric to report
    assert "| test | - | - | - | - |" in body


# ----------------------------------------------------------------------------- command line


def test_cli_hub_pull_offline(pushed, checkpoint, hf_cache, tmp_path, capsys):
    populate_cache(hf_cache, REPO, pushed[1])
    assert cli.main(["hub-pull", REPO]) == 0
    out = capsys.readouterr().out
    assert "unet checkpoint, sha256 verified" in out and COMMIT in out

    out_dir = tmp_path / "checkpoints"
    assert cli.main(["hub-pull", REPO, "--out", str(out_dir)]) == 0
    assert "camvid-unet-tiny.json" in capsys.readouterr().out
    copied = out_dir / "camvid-unet-tiny.json"
    assert sorted(p.name for p in out_dir.iterdir()) == ["camvid-unet-tiny.json", "camvid-unet-tiny.safetensors"]
    assert not (out_dir / "camvid-unet-tiny.safetensors").is_symlink()
    assert json.loads(copied.read_text())["weights"]["file"] == "camvid-unet-tiny.safetensors"
    image = make_image(40, 32, kind="gradient")
    np.testing.assert_array_equal(_predict(copied, image).probs, _predict(checkpoint, image).probs)


def test_cli_hub_pull_unknown_repo(hf_cache, capsys):
    assert cli.main(["hub-pull", "nobody/unknown-repo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nobody/unknown-repo" in err and "not in the local Hugging Face cache" in err
    assert "Traceback" not in err


def test_cli_hub_push(checkpoint, fake_hub, capsys):
    assert cli.main(["hub-push", str(checkpoint), REPO, "--private", "--token", "hf_dummy", "--message", "ship it"]) == 0
    assert f"https://huggingface.co/{REPO}/commit/{COMMIT}" in capsys.readouterr().out
    assert fake_hub.repos[0][1]["private"] is True and fake_hub.commits[0]["commit_message"] == "ship it"
    assert cli.main(["hub-push", str(checkpoint.with_name("missing.json")), REPO]) == 2
    assert "error: no manifest missing.json" in capsys.readouterr().err


def test_model_card_of_a_fine_tuned_checkpoint_shows_both_commands(checkpoint):
    manifest = json.loads(checkpoint.with_suffix(".json").read_text())
    manifest["training"]["command"] = "__main__.py train --arch fcn8s --init-from start.json --epochs 30"
    manifest["training"]["init_from"] = {
        "checkpoint": "start.json",
        "weights_sha256": "ab" * 32,
        "training": {"command": "__main__.py train --arch fcn8s --epochs 100", "epochs_completed": 100, "hardware": {"cpu": "x", "cuda": "NVIDIA H200"}},
    }
    card = hub.model_card(manifest, REPO)
    assert "Fine-tuned from `start.json` (weights sha256 `abababababab...`), itself trained for 100 epochs on NVIDIA H200." in card
    first = card.index("python -m workbench train --arch fcn8s --epochs 100")
    assert first < card.index("python -m workbench train --arch fcn8s --init-from start.json --epochs 30")
