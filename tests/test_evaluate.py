"""workbench.evaluation.evaluate and ``workbench eval``: metrics against direct computation, flip / sliding window, outputs, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import workbench
from workbench.classes import IGNORE_INDEX, default_normalization
from workbench.data.datasets import build_dataset
from workbench.evaluation.evaluate import EvaluationError, confusion_from_entries, evaluate_checkpoint
from workbench.evaluation.report import format_leaderboard, write_results
from workbench.evaluation.tta import check_scales, predict_probs, sliding_window_starts
from workbench.paths import resolve_data_root
from workbench.data.transforms import eval_transforms

from conftest import REPO_ROOT, make_threshold_model

SYNTH = {"size": (48, 64), "length": 3}  # small synthetic test split: 3 images of 48 x 64
SYNTH_CLASSES = ["background", "circle", "rectangle"]


def _classes(names):
    return [{"name": n, "color": [40 * i, 90, 200 - 40 * i]} for i, n in enumerate(names)]


def _naive(depth=2, width=8, num_classes=3, symmetric=False, seed=0):
    torch.manual_seed(seed)
    model = workbench.create_model("naive", num_classes=num_classes, width=width, depth=depth)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            if symmetric and isinstance(m, torch.nn.Conv2d):
                m.weight.copy_((m.weight + m.weight.flip(-1)) / 2)
    return model.eval()


def _save(tmp_path, name, model, dataset="synthetic", classes=SYNTH_CLASSES, options=None):
    ds = {"name": dataset, **({"options": options} if options else {})}
    return workbench.save_checkpoint(tmp_path / name, model, {"dataset": ds, "classes": _classes(classes)})


def _synthetic_test_set():
    norm = default_normalization(3)
    return build_dataset("synthetic", "test", transform=eval_transforms(**norm), num_classes=3, **SYNTH)


# --------------------------------------------------------------------------- metrics


def _direct_confusion(model, dataset, n):
    """Per-image (C, C) matrices by numpy from a plain forward pass: independent of ConfusionMatrix."""
    out = []
    for i in range(n):
        item = dataset[i]
        with torch.no_grad():
            pred = model(torch.as_tensor(item["image"])[None]).argmax(1)[0].numpy()
        mask = np.asarray(item["mask"])
        keep = mask != IGNORE_INDEX
        m = np.zeros((3, 3), np.int64)
        np.add.at(m, (mask[keep], pred[keep]), 1)
        out.append(m)
    return out


def _iou_from(m):
    tp = np.diag(m).astype(float)
    union = m.sum(0) + m.sum(1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def test_metrics_equal_a_direct_computation(tmp_path):
    model = _naive()
    ckpt = _save(tmp_path, "naive", model, options=SYNTH)  # the manifest's dataset options are used
    res = evaluate_checkpoint(ckpt, device="cpu", progress=False)
    assert res["dataset"] == "synthetic" and res["split"] == "test" and res["n_images"] == 3
    assert res["architecture"] == "naive" and res["num_parameters"] == sum(p.numel() for p in model.parameters())
    direct = _direct_confusion(model, _synthetic_test_set(), 3)
    total = sum(direct)
    m = res["metrics"]
    assert m["confusion"] == total.tolist()
    np.testing.assert_allclose(m["per_class_iou"], _iou_from(total), rtol=1e-12)
    assert m["miou"] == pytest.approx(np.nanmean(_iou_from(total)))
    assert m["pixel_accuracy"] == pytest.approx(np.trace(total) / total.sum())
    assert m["class_names"] == SYNTH_CLASSES
    assert "binary" not in res
    # per-image records: names, the image's own mIoU, and a confusion that rebuilds exactly
    assert [r["name"] for r in res["per_image"]] == [f"synthetic-test-{i:04d}" for i in range(3)]
    for rec, d in zip(res["per_image"], direct):
        assert confusion_from_entries(rec["confusion"], 3).numpy().tolist() == d.tolist()
        assert rec["miou"] == pytest.approx(np.nanmean(_iou_from(d)))
        assert rec["pixel_accuracy"] == pytest.approx(np.trace(d) / d.sum())
        assert rec["size"] == [48, 64] and rec["latency_ms"] > 0
    assert res["latency_ms"]["n"] == 3 and res["latency_ms"]["p50"] > 0
    # CI's use: re-evaluate the first image and compare with the stored record
    again = evaluate_checkpoint(ckpt, device="cpu", limit=1, progress=False)
    assert again["n_images"] == 1 and again["per_image"][0]["confusion"] == res["per_image"][0]["confusion"]
    assert again["metrics"]["confusion"] == direct[0].tolist()


class _Halves:
    """Dark left half (-1), bright right half (+1) in normalised space: the threshold model predicts 0 | 1.

    Image 0 (32 x 40): target row 0 ignored, and a 4 x 5 block in the dark half labelled 1 (the model misses it).
    Image 1 (36 x 48): target equals the prediction.
    """

    num_classes, in_chans, ignore_index = 2, 3, IGNORE_INDEX
    classes = _classes(["membrane", "cell"])

    def __len__(self):
        return 2

    def __getitem__(self, i):
        h, w = [(32, 40), (36, 48)][i]
        image = -torch.ones(3, h, w)
        image[:, :, w // 2 :] = 1.0
        mask = torch.zeros(h, w, dtype=torch.int64)
        mask[:, w // 2 :] = 1
        if i == 0:
            mask[10:14, 5:10] = 1
            mask[0] = IGNORE_INDEX
        return {"image": image, "mask": mask, "name": f"halves{i}"}


def test_known_predictions_give_hand_computed_metrics(tmp_path):
    ckpt = _save(tmp_path, "thr", make_threshold_model(), classes=["membrane", "cell"])
    res = evaluate_checkpoint(ckpt, dataset=_Halves(), device="cpu", progress=False)
    # image 0: 31 counted rows x 40; left half 600 right + 20 missed cells; right half 620. image 1: 864 + 864
    assert res["metrics"]["confusion"] == [[600 + 864, 0], [20, 620 + 864]]
    assert res["metrics"]["per_class_iou"] == pytest.approx([1464 / 1484, 1484 / 1504])
    assert res["metrics"]["pixel_accuracy"] == pytest.approx(2948 / 2968)
    assert res["metrics"]["mean_class_accuracy"] == pytest.approx((1.0 + 1484 / 1504) / 2)
    assert res["metrics"]["class_names"] == ["membrane", "cell"]
    # binary block: per-image means. Image 0: error 20/1240, cell IoU 620/640, and for the Rand error
    # GT cells of 620 and 20 px; the 20 are predicted membrane (singletons): precision 1,
    # recall (620^2 + 20) / (620^2 + 20^2). Image 1 is perfect.
    b = res["binary"]
    assert b["pixel_error"] == pytest.approx((20 / 1240 + 0) / 2)
    assert b["foreground_iou"] == pytest.approx((620 / 640 + 1) / 2)
    rec = (620**2 + 20) / (620**2 + 400)
    assert b["rand_error"] == pytest.approx((1 - 2 * rec / (1 + rec) + 0) / 2)
    assert "images" in b["averaged_over"] and b["foreground_name"] == "cell"
    first = res["per_image"][0]
    assert first["rand_error"] == pytest.approx(1 - 2 * rec / (1 + rec)) and res["per_image"][1]["rand_error"] == 0.0
    assert first["miou"] == pytest.approx((600 / 620 + 620 / 640) / 2)


# --------------------------------------------------------------------------- flip and sliding window


def test_flip_of_a_flip_equivariant_model_changes_nothing(tmp_path):
    x = _synthetic_test_set()[0]["image"]
    sym = _naive(symmetric=True)
    torch.testing.assert_close(predict_probs(sym, x, flip=True), predict_probs(sym, x), rtol=0, atol=1e-5)
    ckpt = _save(tmp_path, "sym", sym)
    kw = dict(dataset_options=SYNTH, device="cpu", progress=False)
    assert evaluate_checkpoint(ckpt, flip=True, **kw)["metrics"] == evaluate_checkpoint(ckpt, **kw)["metrics"]
    # a model that is not symmetric: flip averaging is the mean of the two passes
    asym = _naive(seed=1)
    with torch.no_grad():
        p1 = asym(x[None]).softmax(1)
        p2 = asym(x[None].flip(-1)).softmax(1).flip(-1)
    flipped = predict_probs(asym, x, flip=True)
    torch.testing.assert_close(flipped, ((p1 + p2) / 2)[0], rtol=0, atol=1e-6)
    assert (flipped - p1[0]).abs().max() > 1e-3


def test_sliding_window_starts():
    assert sliding_window_starts(70, 32, 16) == [0, 16, 32, 38]
    assert sliding_window_starts(90, 40, 20) == [0, 20, 40, 50]
    assert sliding_window_starts(64, 32, 32) == [0, 32]
    assert sliding_window_starts(30, 32, 16) == [0]


def test_sliding_window_matches_plain_inference_for_a_local_model():
    torch.manual_seed(3)
    x = torch.randn(3, 70, 90)
    model = _naive(depth=1)  # receptive field 3: one pixel of context on each side
    plain = predict_probs(model, x)
    # a window at least as large as the image is plain inference
    assert torch.equal(predict_probs(model, x, window=(70, 90)), plain)
    assert torch.equal(predict_probs(model, x, window=(128, 128)), plain)
    tiled = predict_probs(model, x, window=(32, 40))  # stride 16 x 20: rows [0,16,32,38], cols [0,20,40,50]
    # tile edges inside the image see zero padding instead of their neighbours; everything else is identical
    edge_rows = {r + d for r in (0, 16, 32, 38) for d in (0, 31)} - {0, 69}
    edge_cols = {c + d for c in (0, 20, 40, 50) for d in (0, 39)} - {0, 89}
    interior = torch.ones(70, 90, dtype=torch.bool)
    interior[sorted(edge_rows)] = False
    interior[:, sorted(edge_cols)] = False
    torch.testing.assert_close(tiled[:, interior], plain[:, interior], rtol=0, atol=1e-6)
    assert (tiled[:, ~interior] - plain[:, ~interior]).abs().max() > 1e-4  # the window was really used
    # a per-pixel model gives the same result everywhere, also with an explicit stride and flip
    thr = make_threshold_model()
    for kw in ({"window": (32, 32)}, {"window": (32, 48), "stride": (7, 48)}, {"window": 40, "flip": True}):
        torch.testing.assert_close(predict_probs(thr, x, **kw), predict_probs(thr, x), rtol=0, atol=1e-6)


def test_sliding_window_through_evaluate(tmp_path):
    ckpt = _save(tmp_path, "thr3", _naive(depth=1))
    kw = dict(dataset_options=SYNTH, device="cpu", progress=False)
    big = evaluate_checkpoint(ckpt, window=(64, 64), **kw)  # window covers the 48 x 64 images: plain
    assert big["metrics"] == evaluate_checkpoint(ckpt, **kw)["metrics"]
    small = evaluate_checkpoint(ckpt, window=(32, 32), **kw)
    assert small["options"]["window"] == [32, 32] and small["options"]["stride"] == [16, 16]
    assert small["metrics"]["n_pixels"] == big["metrics"]["n_pixels"]
    with pytest.raises(ValueError, match="too small"):
        evaluate_checkpoint(ckpt, window=(16, 16), **kw)
    with pytest.raises(ValueError, match="stride"):
        evaluate_checkpoint(ckpt, window=(32, 32), stride=(40, 8), **kw)


def test_check_scales():
    assert check_scales(None) is None and check_scales([1]) is None  # single scale: the plain path
    assert check_scales([0.75, 1, 1.5]) == (0.75, 1.0, 1.5)
    for bad, msg in (([], "at least one"), ([0], "out of range"), ([-1], "out of range"), ([float("nan")], "out of range"), ([8], "out of range"), ([1, 1.0], "repeat")):
        with pytest.raises(ValueError, match=msg):
            check_scales(bad)


def test_multi_scale_averages_resized_passes():
    torch.manual_seed(4)
    x = torch.randn(3, 45, 61)  # odd sizes: the resized copies have rounded sizes and come back to 45 x 61
    model = _naive(depth=2, seed=5)
    plain = predict_probs(model, x)
    assert torch.equal(predict_probs(model, x, scales=[1.0]), plain)
    multi = predict_probs(model, x, scales=[0.5, 1.0, 2.0], flip=True)
    assert multi.shape == plain.shape
    torch.testing.assert_close(multi.sum(0), torch.ones(45, 61), rtol=0, atol=1e-5)  # still a distribution per pixel
    assert (multi - predict_probs(model, x, flip=True)).abs().max() > 1e-3  # the other scales were used
    # a per-pixel model on a blocky image: away from the block edges every scale sees the same colour,
    # so multi-scale changes nothing there
    img = torch.zeros(3, 64, 96)
    img[:, :32, 48:] = 2.0
    img[0, 32:, :48] = -2.0
    thr = make_threshold_model()
    ms = predict_probs(thr, img, scales=[0.5, 1.5])
    interior = torch.ones(64, 96, dtype=torch.bool)
    interior[28:36] = False
    interior[:, 44:52] = False
    torch.testing.assert_close(ms[:, interior], predict_probs(thr, img)[:, interior], rtol=0, atol=1e-5)
    # a factor that would shrink the image below the models' minimum is clamped to it
    assert predict_probs(model, x, scales=[0.05, 1.0]).shape == plain.shape


def test_multi_scale_through_evaluate(tmp_path):
    ckpt = _save(tmp_path, "ms", _naive(seed=2))
    kw = dict(dataset_options=SYNTH, device="cpu", progress=False)
    one = evaluate_checkpoint(ckpt, **kw)
    res = evaluate_checkpoint(ckpt, scales=(0.75, 1.25), **kw)
    assert res["options"]["scales"] == [0.75, 1.25] and one["options"]["scales"] is None
    assert res["metrics"]["n_pixels"] == one["metrics"]["n_pixels"]  # scored at the label's resolution
    assert res["metrics"]["confusion"] != one["metrics"]["confusion"]
    assert "scales 0.75 1.25" in format_leaderboard([res])
    # a manifest only takes the standard protocol's metrics
    from workbench.evaluation.manifests import update_manifest

    before = ckpt.read_bytes()
    with pytest.raises(EvaluationError, match="standard protocol.*scales"):
        update_manifest(res)
    assert ckpt.read_bytes() == before
    update_manifest(one)
    assert json.loads(ckpt.read_text())["metrics"]["test"]["miou"] == one["metrics"]["miou"]
    with pytest.raises(ValueError, match="out of range"):
        evaluate_checkpoint(ckpt, scales=(0,), **kw)


# --------------------------------------------------------------------------- errors


def test_clear_errors(tmp_path):
    ckpt = _save(tmp_path, "n", _naive())
    with pytest.raises(EvaluationError, match="unknown split 'nope'"):
        evaluate_checkpoint(ckpt, split="nope", progress=False)
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_checkpoint(ckpt, dataset="camvid", data_root=tmp_path / "missing", progress=False)
    with pytest.raises(EvaluationError, match="predicts 3 classes but the dataset has 2"):
        evaluate_checkpoint(ckpt, dataset=_Halves(), progress=False)
    no_ds = workbench.save_checkpoint(tmp_path / "nods", _naive(), {"classes": _classes(SYNTH_CLASSES)})
    with pytest.raises(EvaluationError, match="names no dataset"):
        evaluate_checkpoint(no_ds, progress=False)
    gray = workbench.save_checkpoint(tmp_path / "gray", workbench.create_model("naive", num_classes=3, in_chans=1, width=4, depth=1), {"dataset": {"name": "synthetic"}})
    with pytest.raises(EvaluationError, match="1-channel input but dataset 'synthetic' has 3"):
        evaluate_checkpoint(gray, progress=False)
    with pytest.raises(workbench.CheckpointError):
        evaluate_checkpoint(tmp_path / "nothing.json", progress=False)


# --------------------------------------------------------------------------- output files


def test_write_results_files_and_sorted_leaderboard(tmp_path):
    good = _save(tmp_path / "a", "thr", make_threshold_model(), classes=["membrane", "cell"])
    inverted = make_threshold_model()
    with torch.no_grad():
        inverted.head.weight.copy_(inverted.head.weight.flip(0))  # swaps the two logits: everything wrong
    bad = _save(tmp_path / "b", "thr", inverted, classes=["membrane", "cell"])  # same stem, other folder
    results = [evaluate_checkpoint(p, dataset=_Halves(), device="cpu", progress=False) for p in (bad, good)]
    assert results[0]["metrics"]["miou"] < 0.01 and results[1]["metrics"]["miou"] > 0.9  # (bad gets the 20 planted px)
    written = write_results(results, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(["thr.test.json", "thr-2.test.json", "thr.test.confusion.png", "thr-2.test.confusion.png", "leaderboard_test.md"])
    assert written["leaderboard"] == [tmp_path / "out" / "leaderboard_test.md"]
    data = json.loads((tmp_path / "out" / "thr.test.json").read_text())  # strict JSON: NaN would fail here
    assert data["checkpoint"] == str(bad) and data["metrics"]["confusion"] == results[0]["metrics"]["confusion"]
    assert data["per_image"][0]["name"] == "halves0"
    assert (tmp_path / "out" / "thr.test.json").read_text().find("NaN") == -1
    from PIL import Image

    for png in written["confusion"]:
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) > 200
    md = (tmp_path / "out" / "leaderboard_test.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"]
    mious = [float(r.split(" | ")[3]) for r in rows]
    assert mious == sorted(mious, reverse=True) and mious[0] == pytest.approx(100 * results[1]["metrics"]["miou"], abs=0.05)
    assert "IoU membrane" in md and "IoU cell" in md and "Rand error" in md and "params (M)" in md


def test_write_results_merge_ranks_the_whole_folder(tmp_path):
    """quantize --out collects one checkpoint per run: with merge the folder's leaderboard keeps the earlier
    ones and a re-run replaces its own row; without merge it holds only the last run (what eval --out does)."""
    a = _save(tmp_path / "a", "first", make_threshold_model(), classes=["membrane", "cell"])
    b = _save(tmp_path / "b", "second", make_threshold_model(), classes=["membrane", "cell"])
    ra, rb = (evaluate_checkpoint(p, dataset=_Halves(), device="cpu", progress=False) for p in (a, b))
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.test.json").write_text('{"not": "a result"}')  # other JSON in the folder is not ranked

    def ranked() -> list[str]:
        md = (out / "leaderboard_test.md").read_text()
        return sorted(line.split(" | ")[2] for line in md.splitlines() if line.startswith("| ") and line[2].isdigit())

    write_results([ra], out, merge=True)
    write_results([rb], out, merge=True)
    assert ranked() == ["first", "second"]
    write_results([ra], out, merge=True)  # a re-run: still one row each
    assert ranked() == ["first", "second"]
    write_results([rb], out)
    assert ranked() == ["second"]


def test_nan_metrics_become_null_and_sort_last(tmp_path):
    ckpt = _save(tmp_path, "thr", make_threshold_model(), classes=["membrane", "cell"])
    res = evaluate_checkpoint(ckpt, dataset=_Halves(), device="cpu", progress=False, per_image=False)
    assert res["per_image"] is None
    empty = json.loads(json.dumps(res))
    empty["checkpoint"] = str(tmp_path / "empty.json")
    empty["metrics"]["miou"] = math.nan
    table = format_leaderboard([empty, res])
    lines = [line for line in table.splitlines() if line.startswith("| 1") or line.startswith("| 2")]
    assert " thr " in lines[0] and " empty " in lines[1] and " - " in lines[1]
    write_results([empty], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "empty.test.json").read_text())["metrics"]["miou"] is None


# --------------------------------------------------------------------------- CLI


def run_cli(*args, timeout=180):
    env = dict(os.environ)
    env.pop("WORKBENCH_PLUGIN_PATH", None)
    return subprocess.run([sys.executable, "-m", "workbench", "eval", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    ckpts = [_save(tmp_path, "n1", _naive(seed=1)), _save(tmp_path, "n2", _naive(seed=2))]
    (tmp_path / "notes.json").write_text('{"hello": 1}')  # a glob over a folder picks up other JSON too
    out = tmp_path / "res"
    res = run_cli(*map(str, ckpts), str(tmp_path / "notes.json"), "--dataset-option", "size=[48, 64]", "--limit", "2", "--flip", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "warning: skipping" in res.stderr and "notes.json" in res.stderr and "Traceback" not in res.stderr
    assert "| # | architecture | checkpoint | mIoU |" in res.stdout and f"wrote 5 files to {out}" in res.stdout
    stored = {p: json.loads((out / f"{p}.test.json").read_text()) for p in ("n1", "n2")}
    for name, ck in zip(("n1", "n2"), ckpts):
        direct = evaluate_checkpoint(ck, dataset_options={"size": [48, 64]}, limit=2, flip=True, device="cpu", progress=False)
        assert stored[name]["metrics"]["confusion"] == direct["metrics"]["confusion"]
        assert stored[name]["n_images"] == 2 and stored[name]["options"]["flip"] is True
    board = (out / "leaderboard_test.md").read_text()
    first = max(stored, key=lambda k: stored[k]["metrics"]["miou"])
    assert board.index(f"| {first} |") < board.index(f"| {({'n1', 'n2'} - {first}).pop()} |")


@pytest.mark.slow
def test_cli_errors_are_clean(tmp_path, capsys):
    camvid = _save(tmp_path, "camvid_net", workbench.create_model("naive", num_classes=11, width=4, depth=1), dataset="camvid", classes=[f"c{i}" for i in range(11)])
    broken = _save(tmp_path, "broken", _naive())
    with open(broken.with_suffix(".safetensors"), "r+b") as f:  # corrupt the weights: the hash no longer matches
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    res = run_cli(str(camvid), str(broken), "--data-root", str(tmp_path / "no_data"), "--quiet", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "camvid_net.json" in res.stderr and "no_data" in res.stderr and "does not exist" in res.stderr
    assert "broken" in res.stderr and "sha256" in res.stderr
    assert "2 of 2 checkpoint(s) could not be evaluated" in res.stderr
    assert not (tmp_path / "o").exists()
    from workbench.cli import main

    assert main(["eval", str(tmp_path / "nothing*.json"), "--quiet"]) == 2  # in-process: a glob that matches nothing
    err = capsys.readouterr().err
    assert "no file matches" in err and "no checkpoint to be evaluated" in err
    # manifests only ever hold the standard protocol: test-time augmentation is refused before any work
    before = broken.with_suffix(".json").read_bytes()
    assert main(["eval", str(broken), "--update-manifests", "--flip", "--scales", "1", "1.5", "--quiet"]) == 2
    refused = capsys.readouterr().err
    assert "--update-manifests records the standard protocol" in refused and "--flip --scales" in refused
    assert broken.with_suffix(".json").read_bytes() == before


# --------------------------------------------------------------------------- real data


def _camvid_available() -> bool:
    root = resolve_data_root()
    return (root / "camvid" / "test").is_dir() and (root / "camvid" / "testannot").is_dir()


@pytest.mark.data
@pytest.mark.skipif(not _camvid_available(), reason=f"CamVid not found under the data root {resolve_data_root()} (set WORKBENCH_DATA_ROOT)")
def test_real_camvid_test_split_limit_2(tmp_path):
    ckpt = workbench.save_checkpoint(tmp_path / "tiny", workbench.create_model("naive", num_classes=11, width=4, depth=1), {"dataset": {"name": "camvid"}})
    res = run_cli(str(ckpt), "--split", "test", "--limit", "2", "--quiet", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "out" / "tiny.test.json").read_text())
    assert data["dataset"] == "camvid" and data["n_images"] == 2 and data["dataset_size"] == 233
    assert data["metrics"]["class_names"][:4] == ["Sky", "Building", "Pole", "Road"]
    assert [r["size"] for r in data["per_image"]] == [[360, 480], [360, 480]]
    # void pixels (label 11 -> 255) are excluded: fewer counted pixels than 2 full images
    assert 0 < data["metrics"]["n_pixels"] < 2 * 360 * 480
    assert sum(sum(r[2] for r in rec["confusion"]) for rec in data["per_image"]) == data["metrics"]["n_pixels"]
    assert "| 1 | naive | tiny |" in res.stdout and "IoU Sky" in res.stdout
