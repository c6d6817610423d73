"""The app's handlers, called directly, and the served app, called through gradio_client."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import workbench
import workbench.app as app
from workbench.app import architectures as architectures_tab
from workbench.app import common, leaderboard, own, segment, task
from workbench.app import weights as weights_tab
from workbench.app import compare as cmp

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in cmp.CARD_FIELDS]  # a card's fields, in the /compare API's order


@pytest.fixture(scope="module")
def street(tmp_path_factory) -> str:
    """A small synthetic street-like RGB image (no dataset needed)."""
    rng = np.random.default_rng(0)
    img = np.zeros((96, 128, 3), np.uint8)
    img[:40] = [135, 170, 220]  # sky
    img[40:70] = [120, 90, 80]  # buildings
    img[70:] = [90, 90, 95]  # road
    img = np.clip(img + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "street.png"
    Image.fromarray(img).save(path)
    return str(path)


@pytest.fixture(scope="module")
def demo():
    return app.build_app()


def test_every_registered_architecture_has_a_card(demo):
    names = workbench.list_architectures() + [f"own{i}" for i in range(own.MAX_PER_SESSION)]  # + the spare cards of a session's own checkpoints
    cards = [b for b in demo.blocks.values() if isinstance(b, gr.Column) and "wb-card" in (b.elem_classes or [])]
    assert sorted(c.elem_id for c in cards) == sorted(f"wb-card-{n}" for n in names)
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    assert len(dep["outputs"]) == (1 + len(FIELDS)) * len(names) + 6  # per card: column + fields; disagreement, text, ground truth, OOD notice, zip, state
    (restyle,) = [d for d in demo.config["dependencies"] if d["targets"] and d["targets"][0][1] == "release"]
    assert len(restyle["outputs"]) == (1 + len(FIELDS)) * len(names)


def test_compare_renders_selected_cards_and_disagreement(street):
    archs = ["fcn8s", "unet", "naive"]
    out = cmp.compare(street, archs, 0.5)
    assert set(out.cards) == set(workbench.list_architectures())
    for name, card in out.cards.items():
        assert set(card) == {"visible", *FIELDS}
        if name in archs:
            assert card["visible"] is True
            assert "latency" in card["header"] and "parameters" in card["header"]
            assert "untrained" in card["header"] or "trained" in card["header"]
            assert f'class="wb-engine"' in card["header"] and ("torch fp32" in card["header"] or "torch bf16" in card["header"])  # the suite runs torch (conftest); fp32 on this CPU or bf16
            mask = card["mask"]
            assert mask.mode == "P" and np.asarray(mask.convert("RGB")).shape == (96, 128, 3)  # palette PNG: one byte a pixel
            assert card["overlay"].shape == (96, 128, 3)
            assert "wb-legend" in card["legend"]
            assert card["errors"]["visible"] is False  # no ground truth for a user's own image
        else:
            assert card["visible"] is False
    assert out.ground_truth["visible"] is False
    assert out.disagreement.shape == (96, 128, 3)
    assert "3 models agree on" in out.agreement
    assert set(out.state["results"]) == set(archs)


def test_the_tab_maps_every_card_field_to_its_component(demo, street):
    """The handler's keyed result becomes {component: value}: each value lands in its own architecture's card.
    It streams: first the selected cards running, then one more card done per step, then the complete result.
    Every step sets every output's value (the page loses values sent once, see CompareTab.run), a visibility only
    where it changes, and a picture is written once per run (later steps send the same file)."""
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    fn = demo.fns[dep["id"]].fn
    tab = fn.__self__
    skip = gr.skip()
    steps = list(fn(street, ["fcn8s", "naive"], 0.5))
    assert len(steps) == 3  # running, the first model's card, everything
    for step in steps:
        assert {c._id for c in step} == set(dep["outputs"])
    first, middle, last = steps
    for name in ("fcn8s", "naive"):
        assert first[tab.cards[name]]["visible"] is True  # nothing known about the page: every visibility is set
        assert "running" in first[tab.fields[name]["header"]] and first[tab.fields[name]["mask"]] is None
    assert first[tab.cards["unet"]]["visible"] is False and first[tab.fields["unet"]["mask"]] == skip  # a hidden card's fields are left alone
    assert all(middle[tab.cards[n]] == skip and last[tab.cards[n]] == skip for n in tab.names)  # shown once, kept
    (done,) = [n for n in ("fcn8s", "naive") if middle[tab.fields[n]["mask"]] is not None]
    (running,) = {"fcn8s", "naive"} - {done}
    assert "running" in middle[tab.fields[running]["header"]] and middle[tab.fields[running]["mask"]] is None
    mask_file = middle[tab.fields[done]["mask"]]
    assert Image.open(mask_file).mode == "P" and "1 of 2 models done" in middle[tab.agreement]
    assert last[tab.fields[done]["mask"]] == mask_file and last[tab.fields[done]["overlay"]] == middle[tab.fields[done]["overlay"]]  # written once
    for name in ("fcn8s", "naive"):
        assert f"<code>{name}</code>" in last[tab.fields[name]["header"]] and "latency" in last[tab.fields[name]["header"]]
        assert Image.open(last[tab.fields[name]["mask"]]).mode == "P"
    assert "2 models agree on" in last[tab.agreement]
    assert set(last[tab.state]["results"]) == {"fcn8s", "naive"}
    # the next run knows from the session's state which cards the page shows: only changed visibilities are sent
    again = next(iter(fn(street, ["fcn8s", "unet"], 0.5, last[tab.state])))
    assert again[tab.cards["fcn8s"]] == skip and again[tab.cards["naive"]]["visible"] is False and again[tab.cards["unet"]]["visible"] is True
    assert "running" in again[tab.fields["fcn8s"]["header"]] and again[tab.fields["fcn8s"]["mask"]] is None
    restyled = tab.restyle(last[tab.state], 1.0)
    assert set(restyled) == set(tab.card_outputs)
    assert all(restyled[tab.cards[n]] == skip for n in tab.names)  # a restyle shows and hides nothing
    assert restyled[tab.fields["fcn8s"]["overlay"]].shape == (96, 128, 3)


def _compare_dep(demo):
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    return demo.fns[dep["id"]].fn.__self__


def test_compare_tab_names_training_data_and_takes_webcam_and_clipboard_images(demo):
    tab = _compare_dep(demo)
    assert "What these models know" in tab.note.value and "CamVid" in tab.note.value
    assert all(c["name"] in tab.note.value for c in workbench.classes.CAMVID_CLASSES)
    assert tab.image.sources == ["upload", "webcam", "clipboard"]


def test_pasted_or_webcam_data_url_is_decoded(demo, street):
    """Webcam and clipboard images arrive as a data URL (no path): raw_upload still hands the handler a file."""
    import base64

    from gradio.data_classes import ImageData

    tab = _compare_dep(demo)
    url = "data:image/png;base64," + base64.b64encode(Path(street).read_bytes()).decode()
    path = tab.image.preprocess(ImageData(path=None, url=url))
    assert Image.open(path).size == (128, 96)
    with pytest.raises(gr.Error, match="pasted data"):
        tab.image.preprocess(ImageData(path=None, url="data:image/png;base64," + base64.b64encode(b"not a picture").decode()))


def _calibrated_or_skip():
    from workbench.inference.ood import load_calibrations

    if "camvid_fcn8s" not in {c.checkpoint for c in load_calibrations()}:
        pytest.skip("camvid_fcn8s has no OOD calibration")


def test_compare_flags_a_noise_image_but_not_a_camvid_example(tmp_path):
    _calibrated_or_skip()
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(noise)
    steps = list(cmp.compare_stream(str(noise), ["naive", "fcn8s"], 0.5))
    assert steps[0].ood == ""  # fcn8s (the calibrated one) has not answered yet
    assert "looks unlike them" in steps[-1].ood and "camvid_fcn8s" in steps[-1].ood
    street = sorted((ROOT / "workbench" / "examples" / "camvid" / "test").glob("*.png"))[0]
    assert cmp.compare(str(street), ["naive", "fcn8s"], 0.5).ood == ""
    assert cmp.compare(str(noise), ["naive"], 0.5).ood == ""  # no calibrated model ran: no verdict


def test_compare_confidence_view_per_card(demo, street):
    out = cmp.compare(street, ["fcn8s", "naive"], 0.5, confidence="entropy")
    for name in ("fcn8s", "naive"):
        conf = out.cards[name]["confidence"]
        assert conf["visible"] is True and conf["value"].shape == (96, 128, 3) and conf["value"].dtype == np.uint8
        assert "Entropy" in out.cards[name]["legend"]
    ref = segment.zoo().predict("fcn8s", Image.open(street).convert("RGB"))
    assert np.array_equal(out.cards["fcn8s"]["confidence"]["value"], workbench.app.knowledge.confidence_view(ref, "entropy")[0])
    off = cmp.compare(street, ["fcn8s"], 0.5)
    assert off.cards["fcn8s"]["confidence"]["visible"] is False and off.cards["fcn8s"]["confidence"]["value"] is None
    tab = _compare_dep(demo)
    first, *_, last = list(tab.run(street, ["fcn8s"], 0.5, None, "max"))
    comp = tab.fields["fcn8s"]["confidence"]
    assert first[comp]["visible"] is True and first[comp]["value"] is None  # the empty frame, shown while running
    assert Image.open(last[comp]).size == (128, 96)  # filled in place (no visibility change)
    restyled = tab.restyle(last[tab.state], 1.0)[comp]
    assert isinstance(restyled, np.ndarray) and restyled.shape == (96, 128, 3)  # a restyle keeps it and sends no visibility
    with pytest.raises(gr.Error, match="confidence"):
        next(iter(tab.run(street, ["fcn8s"], 0.5, None, "bogus")))


def test_compare_label_png_download_reads_back_to_the_labels(street):
    out = cmp.compare(street, ["fcn8s", "naive"], 0.5)
    for name in ("fcn8s", "naive"):
        path = out.cards[name]["download"]
        assert path.endswith(f"{name}_labels.png")
        img = Image.open(path)
        assert img.mode == "P" and img.size == (128, 96)
        assert np.array_equal(np.asarray(img), out.state["results"][name]["labels"])
        classes = segment.zoo().predictor(name).classes
        palette = np.asarray(img.getpalette()[: 3 * len(classes)]).reshape(-1, 3)
        assert [tuple(p) for p in palette] == [tuple(c["color"]) for c in classes]


def test_compare_zip_holds_every_result_of_the_request(demo, street):
    out = cmp.compare(street, ["fcn8s", "naive"], 0.5, confidence="max")
    path = cmp.results_zip(out.state)
    assert path.endswith("workbench_results.zip") and cmp.results_zip(out.state) == path  # packed once
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        doc = json.loads(zf.read("results.json"))
        assert [m["name"] for m in doc["models"]] == ["fcn8s", "naive"] and doc["models_run"] == ["fcn8s", "naive"]
        for m in doc["models"]:
            assert set(m["files"]) == {"labels", "overlay", "confidence"} and set(m["files"].values()) <= names
            labels = np.asarray(Image.open(zf.open(m["files"]["labels"])))
            assert np.array_equal(labels, out.state["results"][m["name"]]["labels"])
            assert m["engine"] == "torch" and m["latency_ms"] > 0
        assert "input.png" in names and Image.open(zf.open("input.png")).size == (128, 96)
        assert "ood" in doc
    assert cmp.results_zip(None) is None
    with pytest.raises(gr.Error, match="press Segment again"):
        cmp.results_zip({"zip_key": "dropped"})
    # the page: Segment clears the previous zip while it runs, then a chained event packs this run's zip
    tab = _compare_dep(demo)
    steps = list(tab.run(street, ["naive"], 0.5, out.state))
    assert all(step[tab.zip] is None for step in steps)
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    chained = [d for d in demo.config["dependencies"] if d["trigger_after"] == dep["id"] and d["outputs"] == [tab.zip._id]]
    assert len(chained) == 1 and chained[0]["inputs"] == [tab.state._id] and chained[0]["trigger_only_on_success"]
    assert zipfile.is_zipfile(demo.fns[chained[0]["id"]].fn(steps[-1][tab.state]))


def test_untrained_models_are_labelled_untrained(street):
    out = cmp.compare(street, ["naive"], 0.5)
    header = out.cards["naive"]["header"]
    entry = common.zoo().entries["naive"]
    assert ("untrained" in header) == (not entry.trained)


def test_opacity_restyle_reuses_cached_labels(street):
    out = cmp.compare(street, ["fcn8s"], 0.0)
    state = out.state
    over0 = out.cards["fcn8s"]["overlay"]
    img = np.asarray(Image.open(street).convert("RGB"))
    assert np.array_equal(over0, img)  # opacity 0: the image itself
    restyled = cmp.restyle(state, 1.0)["fcn8s"]
    assert np.array_equal(restyled["overlay"], np.asarray(restyled["mask"].convert("RGB")))  # opacity 1: the mask itself


def test_a_failing_model_shows_its_error_and_the_others_render(street, monkeypatch):
    zoo = common.zoo()
    original = zoo.predict

    def flaky(name, image, **kw):
        if name == "unet":
            raise RuntimeError("boom in forward")
        return original(name, image, **kw)

    monkeypatch.setattr(zoo, "predict", flaky)
    cards = cmp.compare(street, ["unet", "fcn8s"], 0.5).cards
    assert "boom in forward" in cards["unet"]["header"] and cards["unet"]["mask"] is None
    assert cards["fcn8s"]["mask"] is not None and "latency" in cards["fcn8s"]["header"]


@pytest.mark.parametrize("bad", [None, "empty", "text"])
def test_bad_images_raise_a_clear_gradio_error(bad, tmp_path):
    path = None
    if bad == "empty":
        path = tmp_path / "empty.png"
        path.write_bytes(b"")
    elif bad == "text":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image")
    with pytest.raises(gr.Error) as err:
        cmp.compare(str(path) if path else None, ["fcn8s"], 0.5)
    assert str(err.value.message)


def test_no_architecture_selected_is_an_error(street):
    with pytest.raises(gr.Error, match="Select at least one"):
        cmp.compare(street, [], 0.5)


def test_task_representation_shows_one_map_per_class(street):
    gallery, pairs, mask, over, legend, note = task.task_representation(street, "fcn8s", 0.5)
    assert len(gallery) == 11
    assert all(img.shape[2] == 3 for img, _ in gallery)
    assert mask.shape == (96, 128, 3) and over.shape == (96, 128, 3)
    assert "argmax" in note and "no ground truth is known" in note
    assert len(pairs) == 11
    h, w = gallery[0][0].shape[:2]
    assert all(tile.shape == (h, 2 * w + 4, 3) for tile, _ in pairs)
    # no ground truth: the targets are the model's argmax, so every pixel is white in exactly one left half
    lefts = np.stack([tile[:, :w, 0] for tile, _ in pairs])
    assert set(np.unique(lefts)) <= {0, 255} and ((lefts == 255).sum(0) == 1).all()


def test_task_representation_one_hot_targets_are_the_ground_truth_of_a_shipped_example():
    from workbench.paths import examples_dir

    path = sorted((examples_dir() / "camvid" / "test").glob("*.png"))[0]
    gt = np.asarray(Image.open(examples_dir() / "camvid" / "testannot" / path.name))
    gallery, pairs, *_, note = task.task_representation(str(path), "fcn8s", 0.5)
    assert "the **ground truth**" in note
    h, w = gallery[0][0].shape[:2]
    gt_work = np.asarray(Image.fromarray(gt.astype(np.int32)).resize((w, h), Image.NEAREST))
    for k, (tile, caption) in enumerate(pairs):
        left = tile[:, :w, 0]
        assert (left[gt_work == k] == 255).all() and (left[(gt_work != k) & (gt_work < 11)] == 0).all()
        assert (left[gt_work >= 11] == 128).all(), "void is in no channel"
        assert caption.startswith(workbench.classes.CAMVID_CLASSES[k]["name"])


@pytest.mark.parametrize("arch", ["unet", "tiramisu", "dilated", "naive"])
def test_architecture_anatomy(arch):
    text, rows = architectures_tab.describe_architecture(arch, 64, 96)
    assert "parameters" in text and "GFLOPs" in text
    assert rows and all(len(r) == 4 for r in rows)
    assert rows[-1][2] == "64 x 96"  # the last stage is at the (padded-to-divisor, here exact) input size


def test_example_images_come_from_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path))
    assert all("/examples/camvid/test/" in p for p in common.example_images())  # no CamVid: the shipped examples
    (tmp_path / "camvid" / "test").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (48, 36)).save(tmp_path / "camvid" / "test" / f"{i}.png")
    ex = common.example_images(3)
    assert len(ex) == 3 and all(Path(p).is_file() for p in ex)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_app_answers_gradio_client(demo, street):
    from gradio_client import Client, handle_file

    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(street), ["fcn8s", "unet"], 0.5, api_name="/compare")
        names = workbench.list_architectures() + [f"own{i}" for i in range(own.MAX_PER_SESSION)]  # the spare cards of a session's own checkpoints come last
        per_card = len(FIELDS)  # the column's visibility is not an API output
        assert per_card == 7 and len(result) == per_card * len(names) + 5  # header, mask, overlay, errors, confidence, legend, download per slot; disagreement image and text; ground truth; OOD notice; zip
        for i, name in enumerate(names):
            card = dict(zip(FIELDS, result[per_card * i : per_card * i + per_card]))
            if name in ("fcn8s", "unet"):
                assert "latency" in card["header"]
                assert Image.open(card["mask"]).size == (128, 96)
                assert Image.open(card["overlay"]).size == (128, 96)
        assert "2 models agree on" in result[-4]
        assert result[-1] is None  # the zip is packed by an event chained after /compare (test_compare_zip_...)
        text, table = client.predict("unet", 64, 64, api_name="/describe_architecture")
        assert "U-Net" in text
    finally:
        demo.close()


DATA = __import__("workbench.paths", fromlist=["resolve_data_root"]).resolve_data_root()


@pytest.mark.data
def test_camvid_example_gets_ground_truth_error_maps_and_scores(tmp_path):
    if not (DATA / "camvid" / "test").is_dir():
        pytest.skip(f"CamVid not found under {DATA}: set WORKBENCH_DATA_ROOT")
    path = common.example_images(1)[0]
    out = cmp.compare(path, ["fcn8s", "naive"], 0.5)
    cards = out.cards
    for name in ("fcn8s", "naive"):
        err, mask = cards[name]["errors"], cards[name]["mask"]
        assert err["visible"] is True and err["value"].shape == (360, 480, 3) and mask.size == (480, 360)
        assert "on this image: mIoU" in cards[name]["header"]
    gt = out.ground_truth
    assert gt["visible"] is True and gt["value"].size == (480, 360)
    gt_rgb = np.asarray(gt["value"].convert("RGB"))
    labels = np.asarray(Image.open(DATA / "camvid" / "testannot" / Path(path).name))
    colors = np.array([c["color"] for c in __import__("workbench.classes", fromlist=["CAMVID_CLASSES"]).CAMVID_CLASSES])
    assert (gt_rgb[labels == 3] == colors[3]).all()  # road pixels drawn in road colour
    assert (gt_rgb[labels == 11] == 0).all()  # void in black
    # the per-image scores in the card headers are the ConfusionMatrix's on the same labels (void ignored)
    from workbench.evaluation.metrics import ConfusionMatrix

    image, results, truth = segment.segment_all(path, ["fcn8s", "naive"])
    assert (truth == 255).any()  # the image has void pixels: they must not count
    for name in ("fcn8s", "naive"):
        cm = ConfusionMatrix(11)
        cm.update(torch.from_numpy(results[name]["labels"].astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
        ref = cm.compute()
        assert results[name]["miou"] == pytest.approx(ref["miou"], abs=1e-9)
        assert results[name]["accuracy"] == pytest.approx(ref["pixel_accuracy"], abs=1e-9)
    # what Gradio writes (fast zlib level) decodes to the same picture
    from gradio import processing_utils

    for shown in (gt["value"], cards["fcn8s"]["mask"]):
        assert shown.encoderinfo == {"compress_level": 1}
        written = processing_utils.save_pil_to_cache(shown, str(tmp_path), format="png")
        np.testing.assert_array_equal(np.asarray(Image.open(written).convert("RGB")), np.asarray(shown.convert("RGB")))


def test_leaderboard_always_shows_the_published_anchors_marked_as_such():
    table, bars, scatter, text = leaderboard.leaderboard_view()
    published = [row for row in table if "(published)" in row[0]]
    assert [row[1] for row in published] == ["66.9", "65.3", "58.9", "57.0"]
    assert all("reference row" in row[-1] for row in published)
    trained = [row for row in table if "(published)" not in row[0]]
    shipped = [e for e in common.zoo().entries.values() if e.trained and (e.manifest.get("metrics") or {}).get("test")]
    assert len(trained) == len(shipped)
    assert bars is not None and scatter is not None


def test_class_weights_tab():
    fig, rows, text = weights_tab.class_weights_view()
    assert len(rows) == 11 and rows[0][0] == "Sky"
    assert float(rows[2][1]) > 10 * float(rows[3][1])  # Pole weighs far more than Road
    assert "median" in text.lower()


@pytest.mark.data
def test_isbi_tab_shows_border_weights_for_a_held_out_slice():
    if not (DATA / "isbi2012-membrane").is_dir():
        pytest.skip(f"ISBI 2012 not found under {DATA}: set WORKBENCH_DATA_ROOT")
    out = weights_tab.isbi_view(25)
    image, gt, weights = out[:3]
    assert image.shape == (512, 512) and gt.shape == (512, 512, 3) and weights.shape == (512, 512, 3)
    assert "Slice 25" in out[-1]
    with pytest.raises(gr.Error, match="held-out"):
        weights_tab.isbi_view(3)


def test_gpu_branch_queues_all_models_and_renders_the_same(street, monkeypatch):
    """The CUDA branch of segment_all (predict_many, forwards back to back), exercised on CPU predictors."""
    import torch

    normal = segment.segment_all(street, ["fcn8s", "unet"])[1]
    monkeypatch.setattr(segment, "resolve_device", lambda device: torch.device("cuda"))
    calls = []
    real = __import__("workbench.inference.predictor", fromlist=["predict_many"]).predict_many
    monkeypatch.setattr("workbench.inference.predictor.predict_many", lambda preds, image, shared=None: calls.append(len(preds)) or real(preds, image, shared))
    queued = segment.segment_all(street, ["fcn8s", "unet"])[1]
    assert calls == [2]
    for name in ("fcn8s", "unet"):
        assert np.array_equal(normal[name]["labels"], queued[name]["labels"])


def test_default_selection_prefers_trained_classic_architectures(monkeypatch):
    from pathlib import Path as P

    monkeypatch.setattr(common, "discover_checkpoints", lambda *a, **k: ({"unet": P("u.json"), "fcn8s": P("f.json"), "smp_unet": P("s.json")}, {}))
    assert common.default_selection() == ["fcn8s", "unet"]  # classic and trained, in the classic order
    monkeypatch.setattr(common, "discover_checkpoints", lambda *a, **k: ({"unet": P("u.json")}, {}))
    assert common.default_selection() == ["fcn32s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated"]


IMPORT_PROBE = textwrap.dedent(
    """
    import ctypes, hashlib, importlib, json, pkgutil, runpy, sys, threading
    import gradio, torch  # their own import-time threads, if any, are not the app's
    from gradio import processing_utils as pu
    import workbench.inference.zoo as wz

    seen = {"discover": 0, "zoo": 0, "mallopt": 0, "sha256": 0}
    real_discover, real_zoo_init, real_cdll, real_sha = wz.discover_checkpoints, wz.Zoo.__init__, ctypes.CDLL, hashlib.sha256

    def discover(*a, **k):
        seen["discover"] += 1
        return real_discover(*a, **k)

    def zoo_init(self, *a, **k):
        seen["zoo"] += 1
        real_zoo_init(self, *a, **k)

    def cdll(name, *a, **k):
        seen["mallopt"] += "libc" in str(name)
        return real_cdll(name, *a, **k)

    def sha256(*a, **k):
        seen["sha256"] += 1
        return real_sha(*a, **k)

    wz.discover_checkpoints, wz.Zoo.__init__, ctypes.CDLL, hashlib.sha256 = discover, zoo_init, cdll, sha256
    threads = {t.ident for t in threading.enumerate()}

    import workbench.app
    modules = [m.name for m in pkgutil.iter_modules(workbench.app.__path__)]
    for name in modules:
        importlib.import_module(f"workbench.app.{name}")
    runpy.run_path("app.py", run_name="app")  # the Space's file, imported rather than run
    from workbench.models import registry

    def state():
        return {
            **seen,
            "plugins_loaded": registry._LOADED,
            "new_threads": len({t.ident for t in threading.enumerate()} - threads),
            "gradio_patched": bool(getattr(pu.save_pil_to_cache, "workbench_atomic", False)),
            "examples": len(workbench.app.segment._EXAMPLE_DIGESTS),
        }

    after_import = state()
    workbench.app.build_app()
    workbench.app.patches.limit_malloc_arenas()
    print(json.dumps({"modules": modules, "import": after_import, "build": state()}))
    """
)


def test_importing_the_app_does_no_work():
    """Importing workbench.app (every module) and the root app.py: no registry or checkpoint scan, no zoo, no
    mallopt, no Gradio patch, no thread, no example hashing. build_app() does the work (the probe sees it)."""
    res = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"common", "compare", "layout", "server", "patches", "segment"} <= set(out["modules"])
    assert out["import"] == {"discover": 0, "zoo": 0, "mallopt": 0, "sha256": 0, "plugins_loaded": False, "new_threads": 0, "gradio_patched": False, "examples": 0}
    built = out["build"]
    assert built["discover"] > 0 and built["plugins_loaded"] and built["gradio_patched"] and built["examples"] > 0 and built["sha256"] > 0
    assert built["mallopt"] == 1  # the probe's own call: the detector works


def test_the_cli_app_command_serves_workbench_app(monkeypatch):
    from workbench import cli
    from workbench.app import server

    calls = []
    monkeypatch.setattr(server, "main", lambda argv=None: calls.append(argv))
    assert cli.main(["app", "--port", "7999"]) == 0
    assert cli.main(["app", "--engine", "openvino"]) == 0
    assert calls == [["--port", "7999"], ["--engine", "openvino"]]


def test_the_engine_reaches_the_zoo_and_the_status(monkeypatch):
    """--engine (else WORKBENCH_ENGINE, else auto) is what every model of the app asks for, and the status says it."""
    from workbench.app import server

    seen = {}

    class FakeZoo:
        checkpoint_errors: dict = {}

        def __init__(self, engine="auto"):
            seen["engine"] = engine

    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: None)
    monkeypatch.setenv("WORKBENCH_WARM_EXAMPLES", "0")
    monkeypatch.setattr(common, "_ZOO", None)
    monkeypatch.setattr(common, "_ENGINE", None)
    monkeypatch.setattr(common, "_ZOOS", {})
    monkeypatch.setattr(common, "Zoo", FakeZoo)
    server.main(["--port", "7997", "--engine", "onnxruntime"])
    assert common.engine() == "onnxruntime"
    common.zoo()
    assert seen == {"engine": "onnxruntime"}
    assert "Inference engine: `onnxruntime`" in common.status_markdown()
    monkeypatch.setenv("WORKBENCH_ENGINE", "openvino")
    server.main(["--port", "7997"])  # no --engine: the environment decides
    assert common.engine() == "openvino"
    monkeypatch.delenv("WORKBENCH_ENGINE")
    assert common.engine() == common.DEFAULT_ENGINE == "auto"  # measured at launch (Zoo.prepare), torch stands in meanwhile
    with pytest.raises(ValueError, match="engine must be one of"):
        common.set_engine("tensorrt")


def test_launch_serves_with_the_app_settings(monkeypatch):
    from workbench.app import server as launch_module

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD", "3mb")
    monkeypatch.setenv("WORKBENCH_WARM_EXAMPLES", "0")
    demo = launch_module.launch("127.0.0.1", 7998)
    assert seen["server_port"] == 7998 and seen["max_file_size"] == "3mb" and seen["css"] == app.theme.CSS
    assert seen["state_session_capacity"] == launch_module.MAX_SESSIONS
    assert demo._queue.max_size == app.layout.queue_size()


def test_fast_skip_sends_the_page_what_gradio_sends(demo, street):
    """patches.install_fast_skip: every step of a Compare run reaches the page exactly as through Gradio's own output
    processing (skips included), with the skips no longer rebuilding their components."""
    import asyncio
    import copy

    from gradio import blocks
    from gradio.state_holder import SessionState

    patched = blocks.Blocks.postprocess_data
    assert getattr(patched, "workbench_fast_skip", False), "build_app installs the fast path"
    original = patched.workbench_original
    (dep,) = [d for d in demo.config["dependencies"] if d["api_name"] == "compare"]
    block_fn = demo.fns[dep["id"]]
    steps = list(block_fn.fn(street, ["fcn8s", "naive"], 0.5))
    ours, gradios = SessionState(demo), SessionState(demo)
    skips = 0
    for step in steps:
        # Gradio pops "value" out of the update dicts it is given: each call gets its own copy of the step
        a = asyncio.run(patched(demo, block_fn, {c: copy.copy(v) if isinstance(v, dict) else v for c, v in step.items()}, ours))
        b = asyncio.run(original(demo, block_fn, {c: copy.copy(v) if isinstance(v, dict) else v for c, v in step.items()}, gradios))
        assert a == b
        skips += sum(1 for v in a if isinstance(v, dict) and v.get("__type__") == "update" and "value" not in v and "visible" not in v)
    assert skips > 0  # the runs did skip outputs, so the fast path was exercised
