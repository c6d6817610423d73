"""The app's handlers, called directly, and the served app, called through gradio_client."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

app = pytest.importorskip("app")
gr = pytest.importorskip("gradio")

CARD_FIELDS = app.CARD_FIELDS  # per architecture: column visibility, header, mask, overlay, error map, legend


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


def _cards(outputs):
    n = len(app.ARCHITECTURES)
    cards = outputs[: n * CARD_FIELDS]
    return {name: cards[i * CARD_FIELDS : (i + 1) * CARD_FIELDS] for i, name in enumerate(app.ARCHITECTURES)}


def test_every_registered_architecture_has_a_card_slot():
    assert app.ARCHITECTURES == __import__("workbench").list_architectures()
    assert len(app.card_outputs) == CARD_FIELDS * len(app.ARCHITECTURES)


def test_compare_renders_selected_cards_and_disagreement(street):
    archs = ["fcn8s", "unet", "naive"]
    out = app.compare(street, archs, 0.5)
    cards = _cards(out)
    for name, (vis, header, mask, over, err, legend) in cards.items():
        if name in archs:
            assert vis["visible"] is True
            assert "latency" in header and "parameters" in header
            assert "untrained" in header or "trained" in header
            assert mask.mode == "P" and np.asarray(mask.convert("RGB")).shape == (96, 128, 3)  # palette PNG: one byte a pixel
            assert over.shape == (96, 128, 3)
            assert "wb-legend" in legend
            assert err["visible"] is False  # no ground truth for a user's own image
        else:
            assert vis["visible"] is False
    dis_img, dis_text, gt, state = out[-4], out[-3], out[-2], out[-1]
    assert gt["visible"] is False
    assert dis_img.shape == (96, 128, 3)
    assert "3 models agree on" in dis_text
    assert set(state["results"]) == set(archs)


def test_untrained_models_are_labelled_untrained(street):
    out = app.compare(street, ["naive"], 0.5)
    header = _cards(out)["naive"][1]
    entry = app.zoo().entries["naive"]
    assert ("untrained" in header) == (not entry.trained)


def test_opacity_restyle_reuses_cached_labels(street):
    out = app.compare(street, ["fcn8s"], 0.0)
    state = out[-1]
    over0 = _cards(out)["fcn8s"][3]
    img = np.asarray(Image.open(street).convert("RGB"))
    assert np.array_equal(over0, img)  # opacity 0: the image itself
    restyled = app.restyle(state, 1.0)
    _, _, mask, over1, _, _ = _cards(restyled)["fcn8s"]
    assert np.array_equal(over1, np.asarray(mask.convert("RGB")))  # opacity 1: the mask itself


def test_a_failing_model_shows_its_error_and_the_others_render(street, monkeypatch):
    zoo = app.zoo()
    original = zoo.predict

    def flaky(name, image, **kw):
        if name == "unet":
            raise RuntimeError("boom in forward")
        return original(name, image, **kw)

    monkeypatch.setattr(zoo, "predict", flaky)
    cards = _cards(app.compare(street, ["unet", "fcn8s"], 0.5))
    assert "boom in forward" in cards["unet"][1] and cards["unet"][2] is None
    assert cards["fcn8s"][2] is not None and "latency" in cards["fcn8s"][1]


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
        app.compare(str(path) if path else None, ["fcn8s"], 0.5)
    assert str(err.value.message)


def test_no_architecture_selected_is_an_error(street):
    with pytest.raises(gr.Error, match="Select at least one"):
        app.compare(street, [], 0.5)


def test_task_representation_shows_one_map_per_class(street):
    gallery, mask, over, legend, note = app.task_representation(street, "fcn8s", 0.5)
    assert len(gallery) == 11
    assert all(img.shape[2] == 3 for img, _ in gallery)
    assert mask.shape == (96, 128, 3) and over.shape == (96, 128, 3)
    assert "argmax" in note


@pytest.mark.parametrize("arch", ["unet", "tiramisu", "dilated", "naive"])
def test_architecture_anatomy(arch):
    text, rows = app.describe_architecture(arch, 64, 96)
    assert "parameters" in text and "GFLOPs" in text
    assert rows and all(len(r) == 4 for r in rows)
    assert rows[-1][2] == "64 x 96"  # the last stage is at the (padded-to-divisor, here exact) input size


def test_example_images_come_from_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path))
    assert app.example_images() == [app.synthetic_example()]  # no CamVid: the built-in synthetic example
    (tmp_path / "camvid" / "test").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (48, 36)).save(tmp_path / "camvid" / "test" / f"{i}.png")
    ex = app.example_images(3)
    assert len(ex) == 3 and all(Path(p).is_file() for p in ex)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_served_app_answers_gradio_client(street):
    from gradio_client import Client, handle_file

    port = _free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(street), ["fcn8s", "unet"], 0.5, api_name="/compare")
        n = len(app.ARCHITECTURES)
        per_card = CARD_FIELDS - 1  # the column's visibility is not an API output
        assert len(result) == per_card * n + 3  # header, mask, overlay, errors, legend per slot; disagreement image and text; ground truth
        names = app.ARCHITECTURES
        for i, name in enumerate(names):
            header, mask, over, _, _ = result[per_card * i : per_card * i + per_card]
            if name in ("fcn8s", "unet"):
                assert "latency" in header
                assert Image.open(mask).size == (128, 96)
                assert Image.open(over).size == (128, 96)
        assert "2 models agree on" in result[-2]
        text, table = client.predict("unet", 64, 64, api_name="/describe_architecture")
        assert "U-Net" in text
    finally:
        app.demo.close()


DATA = __import__("workbench.paths", fromlist=["resolve_data_root"]).resolve_data_root()


@pytest.mark.data
def test_camvid_example_gets_ground_truth_error_maps_and_scores(tmp_path):
    if not (DATA / "camvid" / "test").is_dir():
        pytest.skip(f"CamVid not found under {DATA}: set WORKBENCH_DATA_ROOT")
    path = app.example_images(1)[0]
    out = app.compare(path, ["fcn8s", "naive"], 0.5)
    cards = _cards(out)
    for name in ("fcn8s", "naive"):
        vis, header, mask, over, err, legend = cards[name]
        assert err["visible"] is True and err["value"].shape == (360, 480, 3) and mask.size == (480, 360)
        assert "on this image: mIoU" in header
    gt = out[-2]
    assert gt["visible"] is True and gt["value"].size == (480, 360)
    gt_rgb = np.asarray(gt["value"].convert("RGB"))
    labels = np.asarray(Image.open(DATA / "camvid" / "testannot" / Path(path).name))
    colors = np.array([c["color"] for c in __import__("workbench.classes", fromlist=["CAMVID_CLASSES"]).CAMVID_CLASSES])
    assert (gt_rgb[labels == 3] == colors[3]).all()  # road pixels drawn in road colour
    assert (gt_rgb[labels == 11] == 0).all()  # void in black
    # the per-image scores in the card headers are the ConfusionMatrix's on the same labels (void ignored)
    from workbench.evaluation.metrics import ConfusionMatrix

    image, results, truth = app.segment_all(path, ["fcn8s", "naive"])
    assert (truth == 255).any()  # the image has void pixels: they must not count
    for name in ("fcn8s", "naive"):
        cm = ConfusionMatrix(11)
        cm.update(torch.from_numpy(results[name]["labels"].astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
        ref = cm.compute()
        assert results[name]["miou"] == pytest.approx(ref["miou"], abs=1e-9)
        assert results[name]["accuracy"] == pytest.approx(ref["pixel_accuracy"], abs=1e-9)
    # what Gradio writes (fast zlib level) decodes to the same picture
    from gradio import processing_utils

    for shown in (gt["value"], cards["fcn8s"][2]):
        assert shown.encoderinfo == {"compress_level": 1}
        written = processing_utils.save_pil_to_cache(shown, str(tmp_path), format="png")
        np.testing.assert_array_equal(np.asarray(Image.open(written).convert("RGB")), np.asarray(shown.convert("RGB")))


def test_leaderboard_always_shows_the_published_anchors_marked_as_such():
    table, bars, scatter, text = app.leaderboard_view()
    published = [row for row in table if "(published)" in row[0]]
    assert [row[1] for row in published] == ["66.9", "65.3", "58.9", "57.0"]
    assert all("reference row" in row[-1] for row in published)
    trained = [row for row in table if "(published)" not in row[0]]
    shipped = [e for e in app.zoo().entries.values() if e.trained and (e.manifest.get("metrics") or {}).get("test")]
    assert len(trained) == len(shipped)
    assert bars is not None and scatter is not None


def test_class_weights_tab():
    fig, rows, text = app.class_weights_view()
    assert len(rows) == 11 and rows[0][0] == "Sky"
    assert float(rows[2][1]) > 10 * float(rows[3][1])  # Pole weighs far more than Road
    assert "median" in text.lower()


@pytest.mark.data
def test_isbi_tab_shows_border_weights_for_a_held_out_slice():
    if not (DATA / "isbi2012-membrane").is_dir():
        pytest.skip(f"ISBI 2012 not found under {DATA}: set WORKBENCH_DATA_ROOT")
    out = app.isbi_view(25)
    image, gt, weights = out[:3]
    assert image.shape == (512, 512) and gt.shape == (512, 512, 3) and weights.shape == (512, 512, 3)
    assert "Slice 25" in out[-1]
    with pytest.raises(gr.Error, match="held-out"):
        app.isbi_view(3)


def test_gpu_branch_queues_all_models_and_renders_the_same(street, monkeypatch):
    """The CUDA branch of segment_all (predict_many, forwards back to back), exercised on CPU predictors."""
    import torch

    normal = app.segment_all(street, ["fcn8s", "unet"])[1]
    monkeypatch.setattr(app, "resolve_device", lambda device: torch.device("cuda"))
    calls = []
    real = __import__("workbench.inference.predictor", fromlist=["predict_many"]).predict_many
    monkeypatch.setattr("workbench.inference.predictor.predict_many", lambda preds, image, shared=None: calls.append(len(preds)) or real(preds, image, shared))
    queued = app.segment_all(street, ["fcn8s", "unet"])[1]
    assert calls == [2]
    for name in ("fcn8s", "unet"):
        assert np.array_equal(normal[name]["labels"], queued[name]["labels"])


def test_default_selection_prefers_trained_classic_architectures(monkeypatch):
    from pathlib import Path as P

    import workbench.inference.zoo as wz

    monkeypatch.setattr(wz, "discover_checkpoints", lambda *a, **k: ({"unet": P("u.json"), "fcn8s": P("f.json"), "smp_unet": P("s.json")}, {}))
    assert app.default_selection() == ["fcn8s", "unet"]  # classic and trained, in the classic order
    monkeypatch.setattr(wz, "discover_checkpoints", lambda *a, **k: ({"unet": P("u.json")}, {}))
    assert app.default_selection() == ["fcn32s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated"]
