"""Bring your own checkpoint (workbench.app.own): a user's checkpoint, uploaded or from the Hub (offline, from a
cache laid out by hand), joins Compare and Evaluate for that session only; every bad file is refused with a
reason, nothing of it is kept after the session forgets it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gradio as gr
import pytest

import workbench
from workbench.app import evaluate as ev
from workbench.app import own
from workbench.app.common import zoo
from workbench.app.compare import CompareTab, compare
from workbench.classes import CAMVID_CLASSES
from workbench.io.hub import MANIFEST_NAME, WEIGHTS_NAME

from conftest import make_tiny_model
from test_hub import hf_cache, no_network, populate_cache  # noqa: F401  (fixtures)



def save(tmp_path: Path, name: str = "mine", arch: str = "fcn32s", num_classes: int = 11) -> tuple[Path, Path]:
    """A tiny trained-looking checkpoint: (manifest, weights)."""
    model = make_tiny_model(arch, num_classes=num_classes)
    manifest = {"dataset": {"name": "camvid"}, "metrics": {"test": {"miou": 0.4242, "split": "test"}}}
    if num_classes == 11:
        manifest["classes"] = CAMVID_CLASSES
    path = workbench.save_checkpoint(tmp_path / "src" / name, model, manifest)
    return path, path.with_suffix(".safetensors")


@pytest.fixture(autouse=True)
def clean():
    yield
    own.forget([{"key": k} for k in own.active()])


def test_an_uploaded_checkpoint_joins_compare_and_is_gone_after_the_session(tmp_path, monkeypatch):
    manifest, weights = save(tmp_path)
    state, added = own.add_checkpoint([str(manifest), str(weights)], None, [])
    key = added.key
    assert own.is_own(key) and state == [{"key": key, "label": added.label}] and key in own.active()
    entry = zoo().entries[key]
    assert entry.added and entry.trained and entry.engine == "torch" and "fcn32s" in entry.title
    staged = Path(added.folder)
    assert (staged / WEIGHTS_NAME).is_file() and (staged / "workbench.json").is_file()  # a private copy, not Gradio's upload
    # its card shows the checkpoint's own prediction
    image = own_example()
    result = compare(image, ["fcn8s", key], 0.5, names=["fcn8s", key])
    card = result.cards[key]
    assert card["visible"] and card["mask"] is not None and "your checkpoint" in card["header"] and "42.4" in card["header"]
    expected = workbench.Predictor(str(manifest), device="cpu", precision=zoo().predictor(key).precision).predict(image).labels
    assert (result.state["results"][key]["labels"] == expected).all()
    # the session ends: Gradio calls the state's delete_callback
    own.forget(state)
    assert key not in zoo().entries and key not in own.active() and not staged.exists()


def test_compare_tab_shows_own_checkpoints_in_their_own_cards(tmp_path):
    manifest, weights = save(tmp_path)
    state, added = own.add_checkpoint([str(manifest), str(weights)], None, [])
    with gr.Blocks():
        tab = CompareTab(["fcn8s", "unet"], ["fcn8s"], [own_example()])
    steps = list(tab.run(own_example(), ["fcn8s", added.key], 0.5, None, "off", state))
    assert sent_visibility(steps, tab.cards["own0"]) is True and steps[-1][tab.fields["own0"]["mask"]] is not None
    assert "your checkpoint" in steps[-1][tab.fields["own0"]["header"]]
    assert sent_visibility(steps, tab.cards["own1"]) in (None, False) and sent_visibility(steps, tab.cards["unet"]) in (None, False)
    # once removed, it is no longer run (a warning, not a crash) and its card is hidden
    own.forget(state)
    again = list(tab.run(own_example(), ["fcn8s", added.key], 0.5, steps[-1][tab.state], "off", state))
    assert sent_visibility(again, tab.cards["own0"]) is False
    assert added.key not in again[-1][tab.state]["results"]


def sent_visibility(steps: list[dict], comp) -> bool | None:
    """The last visibility a run sent for ``comp`` (None: never sent)."""
    seen = None
    for step in steps:
        value = step.get(comp)
        if isinstance(value, dict) and "visible" in value:
            seen = value["visible"]
    return seen


def own_example() -> str:
    from workbench.app.common import example_images

    return example_images(1)[0]


def test_own_checkpoint_joins_evaluate(tmp_path):
    manifest, weights = save(tmp_path)
    state, added = own.add_checkpoint([str(manifest), str(weights)], None, [])

    class NoProgress:
        def __call__(self, *a, **k):
            pass

    steps = list(ev.run_evaluation(["fcn8s", added.key], ev.SHIPPED, None, 2, progress=NoProgress()))
    results = steps[-1][-1]["results"]
    assert set(results) == {"fcn8s", added.key} and 0.0 <= results[added.key]["metrics"]["miou"] <= 1.0
    own.forget(state)
    with pytest.raises(gr.Error, match="no longer kept"):
        list(ev.run_evaluation([added.key], ev.SHIPPED, None, 2, progress=NoProgress()))


@pytest.mark.parametrize(
    "case, message",
    [
        ("pickle", "never loaded"),
        ("one_file", "exactly two files"),
        ("pickled_weights", "does not load"),
        ("tampered", "does not load"),
        ("unknown_arch", "does not have"),
        ("not_json", "not a workbench manifest"),
        ("too_large", "limited to"),
    ],
)
def test_bad_uploads_are_refused_with_a_reason_and_leave_nothing(tmp_path, monkeypatch, case, message):
    manifest, weights = save(tmp_path)
    files = [str(manifest), str(weights)]
    if case == "pickle":
        pt = tmp_path / "model.pt"
        pt.write_bytes(pickle.dumps({"w": 1}))
        files = [str(manifest), str(pt)]
    elif case == "one_file":
        files = [str(weights)]
    elif case == "pickled_weights":
        weights.write_bytes(pickle.dumps({"weight": [1.0] * 100}))
    elif case == "tampered":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif case == "unknown_arch":
        m = json.loads(manifest.read_text())
        m["architecture"] = "no_such_architecture"
        manifest.write_text(json.dumps(m))
    elif case == "not_json":
        manifest.write_text("{ not json")
    elif case == "too_large":
        monkeypatch.setenv("WORKBENCH_MAX_UPLOAD", "1kb")
    before, folders = set(zoo().entries), set(own._FOLDER.glob("own-*"))
    with pytest.raises(gr.Error, match=message):
        own.add_checkpoint(files, None, [])
    assert set(zoo().entries) == before and own.active() == []
    assert set(own._FOLDER.glob("own-*")) == folders  # the refused upload's copy is gone


def test_per_session_and_server_limits(tmp_path, monkeypatch):
    manifest, weights = save(tmp_path)
    files = [str(manifest), str(weights)]
    state = []
    for _ in range(own.MAX_PER_SESSION):
        state, _ = own.add_checkpoint(files, None, state)
    with pytest.raises(gr.Error, match="remove one first"):
        own.add_checkpoint(files, None, state)
    monkeypatch.setattr(own, "MAX_ACTIVE", len(own.active()))
    with pytest.raises(gr.Error, match="as many uploaded checkpoints"):
        own.add_checkpoint(files, None, [])


def test_an_idle_checkpoint_is_dropped(tmp_path, monkeypatch):
    manifest, weights = save(tmp_path)
    state, added = own.add_checkpoint([str(manifest), str(weights)], None, [])
    monkeypatch.setattr(own, "IDLE_TTL_S", -1.0)  # everything is idle now
    own._sweep(own.time.monotonic())
    assert added.key not in zoo().entries and not Path(added.folder).exists()


def test_a_hub_checkpoint_joins_from_the_cache(tmp_path, hf_cache):  # noqa: F811
    manifest, weights = save(tmp_path, num_classes=3, arch="unet")
    m = json.loads(manifest.read_text())
    m["weights"]["file"] = WEIGHTS_NAME
    populate_cache(hf_cache, "alice/mine", {MANIFEST_NAME: json.dumps(m).encode(), WEIGHTS_NAME: weights.read_bytes()})
    state, added = own.add_checkpoint(None, " alice/mine ", [])
    assert added.folder is None and "alice/mine" in added.label and zoo().entries[added.key].manifest.architecture == "unet"
    own.forget(state)
    assert added.key not in zoo().entries
    assert (hf_cache / "models--alice--mine").is_dir()  # the Hub cache is the user's: left as it is


@pytest.mark.parametrize("repo, message", [("not a repo", "not a Hub repository id"), ("alice/absent", "not in the local Hugging Face cache")])
def test_hub_errors_are_plain(hf_cache, repo, message):  # noqa: F811
    with pytest.raises(gr.Error, match=message):
        own.add_checkpoint(None, repo, [])
    assert own.active() == []


def test_nothing_chosen_is_a_plain_error():
    with pytest.raises(gr.Error, match="Choose the two files"):
        own.add_checkpoint(None, "  ", [])


def test_max_upload_bytes_reads_the_setting(monkeypatch):
    from workbench.app.common import max_upload_bytes

    for text, n in [("20mb", 20_000_000), ("512kb", 512_000), ("1.5GB", 1_500_000_000), ("2MiB", 2 * 2**20), ("1000", 1000)]:
        monkeypatch.setenv("WORKBENCH_MAX_UPLOAD", text)
        assert max_upload_bytes() == n
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD", "lots")
    with pytest.raises(ValueError, match="WORKBENCH_MAX_UPLOAD"):
        max_upload_bytes()
