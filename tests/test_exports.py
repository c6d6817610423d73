"""Downloads (label index PNGs, the results zip), the confidence view, and the app's knowledge helpers."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench import viz
from workbench.app import knowledge
from workbench.classes import CAMVID_CLASSES
from workbench.io.exports import VOID_INDEX, label_png_bytes, read_label_png, results_zip, safe_name, write_label_png


def _labels(h=24, w=32, c=11, seed=0):
    return np.random.default_rng(seed).integers(0, c, (h, w)).astype(np.uint8)


def test_label_png_reads_back_the_same_indices_with_class_colours(tmp_path):
    lab = _labels()
    data = label_png_bytes(lab, CAMVID_CLASSES)
    back, palette = read_label_png(data)
    assert back.dtype == np.uint8 and np.array_equal(back, lab)
    for i, c in enumerate(CAMVID_CLASSES):
        assert tuple(palette[i]) == tuple(c["color"])
    # a viewer shows the coloured mask: the PNG converted to RGB is colorize()'s picture
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), viz.colorize(lab, CAMVID_CLASSES))
    path = write_label_png(lab.astype(np.int64), CAMVID_CLASSES, tmp_path / "m.png")
    assert np.array_equal(read_label_png(path)[0], lab)


def test_label_png_void_and_bad_input():
    lab = _labels().astype(np.int32)
    lab[0, 0], lab[0, 1] = 11, -1
    back, palette = read_label_png(label_png_bytes(lab, CAMVID_CLASSES))
    assert back[0, 0] == back[0, 1] == VOID_INDEX and tuple(palette[VOID_INDEX]) == (0, 0, 0)
    assert np.array_equal(back[1:], lab[1:])
    with pytest.raises(ValueError, match="integers"):
        label_png_bytes(lab.astype(np.float32), CAMVID_CLASSES)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        label_png_bytes(lab[None], CAMVID_CLASSES)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="not an index PNG"):
        read_label_png(buf.getvalue())


@pytest.mark.parametrize("text, expected", [
    ("U-Net (ResNet-18)", "U-Net_ResNet-18"), ("../../etc/passwd", "etc_passwd"), ("..", "item"),
    ("", "item"), ("café/ü", "cafe_u"), ("a\\b:c*?", "a_b_c"), (".hidden", "hidden"),
])
def test_safe_name(text, expected):
    assert safe_name(text) == expected


def test_results_zip_layout_names_and_json():
    lab = _labels()
    rgb = np.zeros((24, 32, 3), np.uint8)
    models = [
        {"name": "../evil", "labels": lab, "classes": CAMVID_CLASSES, "overlay": rgb, "confidence": rgb,
         "info": {"engine": "openvino", "latency_ms": np.float32(12.5), "miou": float("nan")}},
        {"name": "../evil", "labels": lab, "classes": CAMVID_CLASSES},  # same name: its own folder
    ]
    data = results_zip(models, image=rgb, summary={"ood": {"flagged": True}})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names[0] == "input.png" and "results.json" in names
        assert all(not n.startswith(("/", ".")) and ".." not in n and n.isascii() for n in names)
        assert {"01_evil/labels.png", "01_evil/overlay.png", "01_evil/confidence.png", "02_evil/labels.png"} <= set(names)
        assert "02_evil/overlay.png" not in names
        assert np.array_equal(read_label_png(zf.read("02_evil/labels.png"))[0], lab)
        doc = json.loads(zf.read("results.json"))
    assert doc["ood"] == {"flagged": True} and [m["folder"] for m in doc["models"]] == ["01_evil", "02_evil"]
    first = doc["models"][0]
    assert first["name"] == "../evil" and first["engine"] == "openvino" and first["latency_ms"] == 12.5 and first["miou"] is None
    assert first["classes"][3] == {"index": 3, "name": "Road", "color": list(CAMVID_CLASSES[3]["color"])}
    with pytest.raises(ValueError, match="no results"):
        results_zip([])
    with pytest.raises(ValueError, match="'labels' and 'classes'"):
        results_zip([{"name": "x"}])


def _probs(c=11, h=36, w=48, scale=3.0, seed=0):
    z = torch.from_numpy(np.random.default_rng(seed).normal(size=(c, h, w)).astype(np.float32) * scale)
    return z.softmax(0).numpy()


def test_confidence_map_kinds():
    p = _probs()
    conf_max = viz.confidence_map(p, "max")
    assert conf_max.shape == (36, 48) and np.allclose(conf_max, p.max(0))
    ent = -(p * np.log(p)).sum(0) / np.log(11)
    assert np.allclose(viz.confidence_map(p, "entropy"), 1 - ent, atol=1e-5)
    uniform = np.full((4, 3, 3), 0.25, np.float32)
    certain = np.zeros((4, 3, 3), np.float32)
    certain[2] = 1
    assert np.allclose(viz.confidence_map(uniform, "entropy"), 0, atol=1e-6)
    assert np.allclose(viz.confidence_map(certain, "entropy"), 1)
    with pytest.raises(ValueError, match="kind"):
        viz.confidence_map(p, "margin")
    with pytest.raises(ValueError, match="C, H, W"):
        viz.confidence_map(p[0], "max")


def test_confidence_image_scale_and_legend():
    p = _probs()
    rgb, scale = viz.confidence_image(p, "max")
    assert rgb.shape == (36, 48, 3) and rgb.dtype == np.uint8
    assert scale["vmin"] == pytest.approx(1 / 11) and scale["vmax"] == 1.0
    assert scale["mean"] == pytest.approx(float(p.max(0).mean()), abs=1e-6)
    values = [v for v, _ in scale["ticks"]]
    assert values[0] == pytest.approx(1 / 11, abs=1e-3) and values[-1] == 1.0 and values == sorted(values)
    # dark = unsure, bright = sure: the ends of the colour scale
    sure = np.zeros((11, 2, 2), np.float32)
    sure[0] = 1
    unsure = np.full((11, 2, 2), 1 / 11, np.float32)
    assert viz.confidence_image(sure)[0].sum() > viz.confidence_image(unsure)[0].sum()
    legend = viz.confidence_legend_html(scale)
    assert "linear-gradient" in legend and "0.09" in legend and "1.00" in legend and "mean" in legend


def test_confidence_image_is_fast_at_camvid_size():
    p = _probs(h=360, w=480)
    viz.confidence_image(p, "entropy")
    times = []
    for kind in ("max", "entropy") * 3:
        t = time.perf_counter()
        viz.confidence_image(p, kind)
        times.append(time.perf_counter() - t)
    assert min(times) < 0.25  # measured ~15-20 ms on 2 shared cores; a generous bound for loaded CI machines


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 11, 1)
        self.workbench_manifest = {"kwargs": {"num_classes": 11, "in_chans": 3}, "classes": CAMVID_CLASSES}

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def prediction():
    from workbench.inference.predictor import Predictor

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return Predictor(_Tiny(), device="cpu", engine="torch").predict(image)


def test_knowledge_helpers(prediction):
    note = knowledge.training_note(CAMVID_CLASSES)
    assert "CamVid" in note and "Bicyclist" in note and "11 classes" in note
    rgb, legend = knowledge.confidence_view(prediction, "entropy")
    assert rgb.shape == (40, 56, 3) and "entropy" in legend
    assert np.array_equal(read_label_png(knowledge.label_png(prediction))[0], prediction.labels)
    data = knowledge.request_zip([("tiny one", prediction), ("tiny two", prediction)], summary={"request": 1})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc = json.loads(zf.read("results.json"))
        assert {"01_tiny_one/labels.png", "01_tiny_one/overlay.png", "01_tiny_one/confidence.png", "02_tiny_two/labels.png"} <= set(zf.namelist())
    assert doc["request"] == 1 and doc["models"][0]["engine"] == "torch" and "forward" in doc["models"][0]["timings_ms"]
    # an untrained module has no calibration: no verdict, no notice
    assert knowledge.ood_verdict([(None, prediction)]) is None and knowledge.ood_html(None) == ""


def test_ood_verdict_uses_the_calibrated_checkpoint(prediction):
    from workbench.inference.ood import load_calibrations

    cals = load_calibrations()
    if not cals:
        pytest.skip("no workbench/inference/ood.json")
    cal = cals[0]
    result = knowledge.ood_verdict([("not-a-sha", prediction), (cal.sha256, prediction), (cal.sha256, ValueError("failed"))])
    assert result is not None and result.checkpoint == cal.checkpoint
    assert result.score == pytest.approx(cal.score_logits(prediction.logits_work).score)
    if result.flagged:
        assert "street scenes" in knowledge.ood_html(result)


def test_ood_verdict_flags_only_when_every_calibrated_checkpoint_does(prediction, monkeypatch):
    from workbench.inference.ood import LayoutPrior, OodCalibration

    prior = LayoutPrior.from_counts(np.ones((11, 2, 2)))
    alarmed = OodCalibration("alarmed", "a" * 64, (("entropy", 0.0, 0.01),), -1e6, prior)
    calm = OodCalibration("calm", "b" * 64, (("entropy", 0.0, 0.01),), 1e6, prior)
    monkeypatch.setattr(knowledge, "load_calibrations", lambda: (alarmed, calm))
    both = knowledge.ood_verdict([("a" * 64, prediction), ("b" * 64, prediction)])
    assert both.checkpoint == "calm" and not both.flagged and knowledge.ood_html(both) == ""
    alone = knowledge.ood_verdict([("a" * 64, prediction)])
    assert alone.checkpoint == "alarmed" and alone.flagged and "street scenes" in knowledge.ood_html(alone)


def test_task_tab_names_the_training_data_and_flags_a_non_street_image(tmp_path):
    from workbench.app import task
    from workbench.inference.ood import load_calibrations

    if "camvid_unet" not in {c.checkpoint for c in load_calibrations()}:
        pytest.skip("camvid_unet has no OOD calibration")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(noise)
    *_, note = task.task_representation(str(noise), "unet", 0.5)
    assert "What these models know" in note and "Bicyclist" in note
    assert "this image looks unlike them" in note


def test_old_downloads_are_pruned(tmp_path, monkeypatch):
    """Download files do not pile up: folders last written over an hour ago go, fresh ones stay."""
    import os

    from workbench.app import compare

    monkeypatch.setattr(compare, "DOWNLOAD_DIR", tmp_path / "downloads")
    old = Path(compare.write_download(b"old result", "a.png"))
    two_hours_ago = time.time() - 2 * 3600
    os.utime(old.parent, (two_hours_ago, two_hours_ago))
    fresh = Path(compare.write_download(b"fresh result", "b.png"))
    assert compare.prune_downloads() == 1
    assert not old.parent.exists() and fresh.read_bytes() == b"fresh result"
    # write_download prunes by itself every few minutes
    os.utime(fresh.parent, (two_hours_ago, two_hours_ago))
    monkeypatch.setattr(compare, "_last_prune", [0.0])
    newest = Path(compare.write_download(b"newest", "c.png"))
    assert not fresh.parent.exists() and newest.is_file()
