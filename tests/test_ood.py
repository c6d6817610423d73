"""The out-of-distribution score (workbench/inference/ood.py), its calibration (workbench/evaluation/ood.py) and the
shipped workbench/inference/ood.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.evaluation.ood import _split_halves, auroc, calibrate, ood_images, write_results
from workbench.inference.ood import (
    OOD_FILE,
    OOD_MESSAGE,
    LayoutPrior,
    OodCalibration,
    assess,
    calibration_for,
    component_scores,
    load_calibrations,
)
from workbench.io.manifest import Manifest
from workbench.paths import checkpoints_dir, resolve_data_root


def _logits(c=4, h=6, w=8, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(size=(c, h, w)).astype(np.float32) * scale


def test_component_scores_match_torch_definitions():
    z = _logits(scale=3.0)
    s = component_scores(z)
    t = torch.from_numpy(z)
    p = t.softmax(0)
    assert s["msp"] == pytest.approx(1 - p.max(0).values.mean().item(), abs=1e-5)
    ent = -(p * p.log()).sum(0).mean().item() / np.log(4)
    assert s["entropy"] == pytest.approx(ent, abs=1e-5)
    assert s["energy"] == pytest.approx(-t.logsumexp(0).mean().item(), abs=1e-4)
    assert "layout" not in s


def test_component_scores_only_computes_what_is_asked_with_the_same_values():
    z = _logits(c=5, h=12, w=16, scale=2.0, seed=3)
    prior = LayoutPrior.from_counts(np.ones((5, 2, 2)))
    full = component_scores(z, prior)
    for only in (["energy", "layout"], ["msp"], ["entropy", "energy"], []):
        part = component_scores(z, prior, only=only)
        assert set(part) == set(only)
        assert all(part[k] == full[k] for k in only)


def test_confident_logits_score_lower_than_uniform_ones():
    sure = np.zeros((3, 4, 4), np.float32)
    sure[1] = 20.0
    flat = np.zeros((3, 4, 4), np.float32)
    a, b = component_scores(sure), component_scores(flat)
    assert a["msp"] < 1e-6 and b["msp"] == pytest.approx(2 / 3, abs=1e-6)
    assert a["entropy"] < 1e-6 and b["entropy"] == pytest.approx(1.0, abs=1e-6)
    assert a["energy"] < b["energy"]


def test_component_scores_reject_bad_input():
    with pytest.raises(ValueError, match="C, h, w"):
        component_scores(np.zeros((4, 4), np.float32))
    bad = _logits()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        component_scores(bad)
    prior = LayoutPrior.from_counts(np.ones((5, 2, 2)))
    with pytest.raises(ValueError, match="5 classes"):
        component_scores(_logits(c=4), prior)


def test_layout_prior_prefers_the_training_layout():
    # 2 classes on a 2 x 1 grid: class 0 ("sky") on top, class 1 ("road") below
    counts = np.zeros((2, 2, 1))
    counts[0, 0, 0] = counts[1, 1, 0] = 1000
    prior = LayoutPrior.from_counts(counts, smoothing=0.01)
    street = np.zeros((10, 6), np.uint8)
    street[5:] = 1
    upside_down = 1 - street
    assert prior.score(street) < 0.05 < 3 < prior.score(upside_down)
    assert prior.probs.sum(0) == pytest.approx(np.ones((2, 1)))
    # any image size maps onto the same grid
    assert prior.score(np.kron(street, np.ones((3, 5), np.uint8))) == pytest.approx(prior.score(street))
    # void labels (>= C) are skipped
    with_void = street.copy()
    with_void[0, 0] = 255
    assert prior.score(with_void) == pytest.approx(prior.score(street), abs=0.01)
    with pytest.raises(ValueError, match="every grid cell"):
        LayoutPrior.from_counts(np.zeros((2, 1, 1)))
    assert LayoutPrior.from_dict(prior.to_dict()).probs == pytest.approx(prior.probs, abs=1e-6)


def test_auroc():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([0, 2], [1, 3]) == 0.75
    with pytest.raises(ValueError):
        auroc([], [1])


def _calibration(sha="ab" * 32, threshold=0.5):
    prior = LayoutPrior.from_counts(np.ones((4, 2, 2)))
    return OodCalibration("m", sha, (("entropy", 0.2, 0.1), ("layout", 1.0, 0.5)), threshold, prior, {"note": "x"})


def test_calibration_round_trip_and_file_lookup(tmp_path):
    cal = _calibration()
    path = tmp_path / "ood.json"
    path.write_text(json.dumps({"format": "workbench-ood", "format_version": 1, "calibrations": [cal.to_dict()]}))
    (loaded,) = load_calibrations(path)
    assert loaded.method == "entropy+layout" and loaded.threshold == 0.5 and loaded.info == {"note": "x"}
    z = _logits(c=4)
    expected = cal.score_logits(z)
    got = assess(z, cal.sha256, path)
    assert got.score == pytest.approx(expected.score) and got.flagged == expected.flagged
    comps = component_scores(z, cal.prior)
    assert got.score == pytest.approx(((comps["entropy"] - 0.2) / 0.1 + (comps["layout"] - 1.0) / 0.5) / 2)
    assert calibration_for("cd" * 32, path) is None and assess(z, None, path) is None
    assert load_calibrations(tmp_path / "missing.json") == ()
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a workbench OOD"):
        load_calibrations(path)


def test_threshold_decides_and_says_so_plainly():
    z = _logits(c=4)
    low, high = _calibration(threshold=-1e9).score_logits(z), _calibration(threshold=1e9).score_logits(z)
    assert low.flagged and low.message == OOD_MESSAGE and "street scenes" in low.message
    assert not high.flagged and "street scenes" in high.message and high.message != OOD_MESSAGE
    assert set(low.to_dict()) >= {"score", "threshold", "flagged", "method", "checkpoint", "message"}


def test_calibration_rejects_bad_entries():
    with pytest.raises(ValueError, match="unknown OOD component"):
        OodCalibration("m", "s", (("nope", 0.0, 1.0),), 0.0)
    with pytest.raises(ValueError, match="std"):
        OodCalibration("m", "s", (("msp", 0.0, 0.0),), 0.0)
    with pytest.raises(ValueError, match="layout prior"):
        OodCalibration("m", "s", (("layout", 0.0, 1.0),), 0.0)
    with pytest.raises(ValueError, match="malformed"):
        OodCalibration.from_dict({"checkpoint": "m"})


def test_split_halves_puts_every_source_in_both():
    items = [("a", f"{i}", None) for i in range(5)] + [("b", f"{i}", None) for i in range(2)]
    cal, held = _split_halves(items)
    assert [n for s, n, _ in cal] == ["0", "2", "4", "0"] and [n for s, n, _ in held] == ["1", "3", "1"]
    assert {s for s, _, _ in cal} == {s for s, _, _ in held} == {"a", "b"}


def test_ood_images_are_rgb_and_offline(tmp_path):
    imgs = ood_images(data_root=tmp_path)  # an empty data root: no ISBI slices, the rest still there
    sources = {s for s, _, _ in imgs}
    assert {"matplotlib", "synthetic"} <= sources and "isbi" not in sources
    assert all(im.mode == "RGB" and min(im.size) >= 32 for _, _, im in imgs)
    assert len({(s, n) for s, n, _ in imgs}) == len(imgs)


def test_shipped_calibration_matches_shipped_checkpoints():
    cals = load_calibrations()
    assert cals, "workbench/inference/ood.json is missing: run `workbench calibrate-ood`"
    doc = json.loads(OOD_FILE.read_text())
    assert doc["command"].startswith("workbench calibrate-ood")
    for cal in cals:
        manifest = Manifest.read(checkpoints_dir() / f"{cal.checkpoint}.json")
        assert manifest.sha256 == cal.sha256, f"{cal.checkpoint}: weights changed since calibration; rerun `workbench calibrate-ood`"
        held = cal.info["held_out"]
        # what the calibration promised on held-out images (benchmarks/ood_calibration.md)
        assert held["auroc"] >= 0.9 and held["in_distribution_kept"] >= 0.8 and held["ood_caught"] >= 0.8


def _camvid_available() -> bool:
    return (resolve_data_root() / "camvid" / "val").is_dir()


@pytest.mark.skipif(not _camvid_available(), reason="CamVid not under the data root")
def test_shipped_calibration_separates_real_images():
    """A CamVid test image is kept, a portrait and a membrane slice are flagged, by the shipped calibration, on the
    logits of the shipped checkpoint."""
    from PIL import Image

    from workbench.data.datasets import build_dataset
    from workbench.inference.predictor import Predictor

    cal = load_calibrations()[0]
    pred = Predictor(checkpoints_dir() / f"{cal.checkpoint}.json", device="cpu", engine="torch", precision="fp32")
    street = build_dataset("camvid", "test", data_root=None).files[0][0]
    portrait = next(im for s, n, im in ood_images() if n == "grace_hopper.jpg")
    assert not cal.score_logits(pred.predict(street).logits_work).flagged
    assert cal.score_logits(pred.predict(portrait).logits_work).flagged
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    assert cal.score_logits(pred.predict(noise).logits_work).flagged


@pytest.mark.skipif(not _camvid_available(), reason="CamVid not under the data root")
def test_calibrate_end_to_end_small(tmp_path):
    """The calibration command's routine on a few images with the smallest shipped CamVid model: it writes a
    loadable ood.json with the checkpoint's sha256 and the benchmark files."""
    ood = [t for t in ood_images(data_root=tmp_path) if t[0] == "synthetic"][:8]  # a few, to stay fast
    out = calibrate(["camvid_fcn8s"], limit=6, probes=2, ood=ood, log=lambda *a: None)
    write_results(out, tmp_path / "ood.json", tmp_path, "workbench calibrate-ood camvid_fcn8s --limit 6")
    (cal,) = load_calibrations(tmp_path / "ood.json")
    assert cal.sha256 == Manifest.read(checkpoints_dir() / "camvid_fcn8s.json").sha256
    assert cal.method in {m["method"] for m in out["results"][0]["methods"]}
    bench = json.loads((tmp_path / "ood_calibration.json").read_text())
    assert bench["machine"]["cpu"] and len(bench["results"][0]["scores"]["camvid_val"]) == 6
    assert "held-out AUROC" in (tmp_path / "ood_calibration.md").read_text()
