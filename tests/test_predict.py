"""``workbench predict``: label PNGs, overlays and JSON per image and checkpoint, streamed over a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

import workbench
from workbench.cli import main, process_engine
from workbench.io.checkpoint import save_checkpoint
from workbench.io.exports import read_label_png
from workbench.tools import predict as predict_mod
from workbench.tools.predict import count_images, find_images, output_paths, predict_folder

from conftest import REPO_ROOT, make_image, make_tiny_model

CLASSES = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "sky", "color": [70, 130, 180]},
    {"name": "tree", "color": [0, 160, 0]},
    {"name": "car", "color": [250, 170, 30]},
]
GOOD = ["a.png", "d_rgba.png", "f_wide.png", "sub/b.jpg", "sub/deeper/c_grey.png", "sub/deeper/g_16bit.png"]  # sorted walk order
BAD = "e_corrupt.png"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small random network (the naive stack: milliseconds per image, and random weights that still give every
    class somewhere on a noise image, unlike a random U-Net's one class) as a checkpoint with 4 named, coloured classes."""
    import torch

    torch.manual_seed(0)
    model = workbench.create_model("naive", num_classes=len(CLASSES), width=8, depth=2).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tinynet", model, {"classes": CLASSES})


def _make_tree(root: Path) -> Path:
    """Nested images: RGB PNG and JPEG, an RGBA, a greyscale and a 16-bit one, another size, a corrupt file, a hidden
    folder and a text file (the last two never read)."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    make_image(64, 48, "noise", seed=1).save(root / "a.png")
    make_image(64, 48, "noise", seed=2).save(root / "sub" / "b.jpg", quality=95)
    make_image(64, 48, "noise", seed=3).convert("L").save(root / "sub" / "deeper" / "c_grey.png")
    Image.fromarray((np.asarray(make_image(64, 48, "noise", seed=7).convert("L"), np.uint16) * 257)).save(root / "sub" / "deeper" / "g_16bit.png")
    rgba = np.asarray(make_image(64, 48, "noise", seed=4).convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, 64).astype(np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(root / "d_rgba.png")
    (root / BAD).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    make_image(90, 40, "noise", seed=5).save(root / "f_wide.png")
    make_image(64, 48, "noise", seed=6).save(root / ".hidden" / "x.png")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def tree(tmp_path):
    return _make_tree(tmp_path / "images")


_PREDICTORS: dict = {}


def _predictor(ckpt):
    """The reference: the Predictor the results must agree with (one per checkpoint, built once)."""
    if ckpt not in _PREDICTORS:
        _PREDICTORS[ckpt] = workbench.Predictor(ckpt, device="cpu", engine="torch", precision="fp32")
    return _PREDICTORS[ckpt]


def test_walk_is_sorted_recursive_and_lazy(tree):
    items = find_images([tree])
    assert not isinstance(items, (list, tuple))  # a generator: nothing is listed up front
    rels = [rel.as_posix() for _, rel in items]
    assert rels == sorted([*GOOD, BAD])
    assert count_images([tree]) == len(GOOD) + 1
    single = list(find_images([tree / "sub" / "b.jpg"]))
    assert single == [(tree / "sub" / "b.jpg", PurePosixPath("b.jpg"))]
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images([tree / "missing"])


def test_results_match_the_predictor(ckpt, tree, tmp_path):
    out = tmp_path / "out"
    errors = []
    summary = predict_folder(tree, [ckpt], out, engine="torch", device="cpu", precision="fp32", batch=1, with_json=True,
                             overlay_alpha=0.4, on_error=lambda p, r: errors.append((p, r)))
    assert summary.images == len(GOOD) + 1 and summary.written == len(GOOD) and summary.existing == 0
    assert not summary.ok and [Path(p).name for p, _ in summary.failed] == [BAD] and errors == summary.failed
    assert "corrupt" in summary.failed[0][1]
    assert f"{len(GOOD) + 1} image(s)" in summary.line() and "1 image(s) skipped" in summary.line()
    assert summary.checkpoints[0]["engine"] == "torch" and summary.checkpoints[0]["precision"] == "fp32"

    pred = _predictor(ckpt)
    palette = np.asarray([c["color"] for c in CLASSES], np.uint8)
    for rel in GOOD:
        paths = output_paths(out, ckpt, rel, with_json=True)
        assert paths["labels"] == out / "tinynet" / Path(rel).with_suffix(".png")
        labels, pal = read_label_png(paths["labels"])
        expected = pred.predict(tree / rel).labels
        assert len(np.unique(expected)) >= 2, "a test that cannot tell label maps apart"
        np.testing.assert_array_equal(labels, expected, err_msg=rel)
        np.testing.assert_array_equal(pal[: len(CLASSES)], palette)
        with Image.open(paths["overlay"]) as ov:
            assert ov.format == "JPEG" and ov.size == (labels.shape[1], labels.shape[0]) and ov.mode == "RGB"
        doc = json.loads(paths["json"].read_text())
        assert doc["checkpoint"] == str(ckpt) and doc["name"] == rel and Path(doc["image"]) == tree / rel
        assert (doc["width"], doc["height"]) == (labels.shape[1], labels.shape[0])
        assert doc["engine"] == "torch" and doc["precision"] == "fp32" and doc["batch"] == 1
        assert doc["latency_ms"] > 0 and set(doc["timings_ms"]) == {"load", "preprocess", "forward", "postprocess"}
        assert [c["name"] for c in doc["classes"]] == [c["name"] for c in CLASSES]
        counts = np.bincount(expected.ravel(), minlength=len(CLASSES))
        assert [c["pixels"] for c in doc["classes"]] == counts.tolist()
        assert sum(c["fraction"] for c in doc["classes"]) == pytest.approx(1.0)
    # nothing else was written: no temporary files, nothing for the hidden folder, the text file or the corrupt image
    written = sorted(p.relative_to(out / "tinynet").as_posix() for p in (out / "tinynet").rglob("*") if p.is_file())
    assert written == sorted(f"{Path(r).with_suffix('')}{s}" for r in GOOD for s in (".png", "_overlay.jpg", ".json"))


def test_batches_same_size_images_with_the_same_labels(ckpt, tree, tmp_path):
    out = tmp_path / "out"
    summary = predict_folder(tree, [ckpt], out, engine="torch", device="cpu", precision="fp32", batch=4, with_json=True, overlay_format="png", overlay_alpha=0.4)
    assert summary.written == len(GOOD)
    pred = _predictor(ckpt)
    batches = {}
    for rel in GOOD:
        paths = output_paths(out, ckpt, rel, overlay_format="png", with_json=True)
        labels, _ = read_label_png(paths["labels"])
        np.testing.assert_array_equal(labels, pred.predict(tree / rel).labels, err_msg=rel)
        assert paths["overlay"].name.endswith("_overlay.png") and Image.open(paths["overlay"]).format == "PNG"
        batches[rel] = json.loads(paths["json"].read_text())["batch"]
        # the overlay blends the class colours onto the image (as the Predictor decodes it) at the asked weight
        colours = np.asarray([c["color"] for c in CLASSES], float)[labels]
        image = np.asarray(workbench.load_image(tree / rel, "RGB"), float)
        got = np.asarray(Image.open(paths["overlay"]), float)
        assert np.abs(got - (0.6 * image + 0.4 * colours)).max() <= 1.0, rel
    # the first chunk (a, d_rgba, [corrupt skipped], f_wide, sub/b): the three 64x48 ones shared a pass, f_wide ran alone
    assert batches["a.png"] == batches["d_rgba.png"] == batches["sub/b.jpg"] == 3
    assert batches["f_wide.png"] == 1


def test_predict_batch_matches_predict(ckpt):
    pred = _predictor(ckpt)
    ims = [make_image(64, 48, "noise", seed=s) for s in range(3)] + [make_image(50, 70, "noise", seed=9)]
    res = pred.predict_batch(ims, batch_size=2)
    assert [r.batch for r in res] == [2, 2, 1, 1]
    for im, r in zip(ims, res):
        np.testing.assert_array_equal(r.labels, pred.predict(im).labels)
    assert pred.max_batch is None  # torch takes any batch
    pred._engine.max_batch = 1  # as OpenVINO's engine (input [1, C, ?, ?]): one image per pass
    try:
        one = pred.predict_batch(ims, batch_size=2)
    finally:
        pred._engine.max_batch = None
    assert [r.batch for r in one] == [1, 1, 1, 1]
    for a, b in zip(one, res):
        np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="batch_size"):
        pred.predict_batch(ims, batch_size=0)


def test_an_image_the_network_cannot_run_is_reported_and_the_rest_written(ckpt, tree, tmp_path, monkeypatch):
    real = workbench.Predictor.predict_batch

    def fails_on_wide(self, images, batch_size=None):
        if any(im.size == (90, 40) for im in images):
            raise RuntimeError("out of memory (simulated)")
        return real(self, images, batch_size)

    monkeypatch.setattr(workbench.Predictor, "predict_batch", fails_on_wide)
    summary = predict_folder(tree, [ckpt], tmp_path / "out", engine="torch", device="cpu", precision="fp32", batch=8)
    assert summary.written == len(GOOD) - 1  # the batch failed, then each image ran alone: only f_wide failed
    assert sorted(Path(p).name for p, _ in summary.failed) == [BAD, "f_wide.png"]
    assert "RuntimeError: out of memory (simulated)" in dict((Path(p).name, r) for p, r in summary.failed)["f_wide.png"]


def test_skip_existing_resumes(ckpt, tree, tmp_path):
    out = tmp_path / "out"
    kw = dict(engine="torch", device="cpu", precision="fp32", batch=2, with_json=True)
    predict_folder(tree, [ckpt], out, **kw)
    label = out / "tinynet" / "sub" / "b.png"
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = predict_folder(tree, [ckpt], out, skip_existing=True, **kw)
    assert again.written == 0 and again.existing == len(GOOD) and len(again.failed) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamp
    (out / "tinynet" / "sub" / "b.json").unlink()  # an incomplete result is done again
    third = predict_folder(tree, [ckpt], out, skip_existing=True, **kw)
    assert third.written == 1 and third.existing == len(GOOD) - 1
    assert (out / "tinynet" / "sub" / "b.json").is_file() and label.stat().st_mtime_ns >= stamp[label]


def test_interrupted_run_leaves_no_half_files_and_resumes(ckpt, tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = predict_mod.label_png_bytes
    calls = []

    def interrupted(labels, classes):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third result is written
        return real(labels, classes)

    monkeypatch.setattr(predict_mod, "label_png_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(tree, [ckpt], out, engine="torch", device="cpu", precision="fp32", batch=1)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".") or p.suffix == ".tmp"]
    assert len([p for p in files if not p.name.endswith("_overlay.jpg")]) == 2  # two whole label maps
    for p in files:  # every file there is whole
        Image.open(p).load()
    monkeypatch.setattr(predict_mod, "label_png_bytes", real)
    resumed = predict_folder(tree, [ckpt], out, engine="torch", device="cpu", precision="fp32", skip_existing=True)
    assert resumed.existing == 2 and resumed.written == len(GOOD) - 2


def test_streams_a_generator_one_chunk_at_a_time(ckpt, tree, tmp_path):
    out = tmp_path / "out"
    batch = 2
    rels = [r for r in GOOD if not r.startswith("sub/")]  # a.png, d_rgba.png, f_wide.png
    pulled = []

    def items():
        for i in range(9):
            rel = rels[i % len(rels)]
            name = f"copy{i}/{rel}"
            # before an image is handed over, every chunk before its own has been written already: the function
            # never pulls more than one chunk ahead of its writes, whatever the length of the stream
            written = len(list(out.rglob("*.png"))) - len(list(out.rglob("*_overlay.png")))
            assert written >= (i // batch) * batch, (i, written)
            pulled.append(i)
            yield tree / rel, name

    summary = predict_folder(items(), [ckpt], out, engine="torch", device="cpu", precision="fp32", batch=batch)
    assert pulled == list(range(9)) and summary.images == 9 and summary.written == 9


def test_multiple_checkpoints_and_huge_images(ckpt, tree, tmp_path):
    import torch

    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "ck2" / "fcn", make_tiny_model("fcn8s", num_classes=3), {"classes": CLASSES[:3]})
    out = tmp_path / "out"
    summary = predict_folder([tree / "a.png", tree / "f_wide.png"], [ckpt, other], out, engine="torch", device="cpu", precision="fp32", max_pixels=64 * 48)
    assert summary.images == 2 and summary.written == 2  # a.png with both checkpoints
    assert len(summary.failed) == 1 and "pixels" in summary.failed[0][1] and summary.failed[0][0].endswith("f_wide.png")
    lab2, pal2 = read_label_png(out / "fcn" / "a.png")
    np.testing.assert_array_equal(lab2, _predictor(other).predict(tree / "a.png").labels)
    np.testing.assert_array_equal(pal2[:3], [c["color"] for c in CLASSES[:3]])
    assert (out / "tinynet" / "a.png").is_file() and not (out / "tinynet" / "f_wide.png").exists()


def test_refuses_outputs_that_would_be_read_back_or_overwrite_inputs(ckpt, tree, tmp_path):
    kw = dict(engine="torch", device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="inside the input folder"):
        predict_folder(tree, [ckpt], tree / "results", **kw)
    with pytest.raises(ValueError, match="inside the input folder"):
        predict_folder(tree, [ckpt], tree, **kw)
    # a hidden folder inside the tree is never walked, so it is allowed; so is a folder beside a file input
    ok = predict_folder(tree / "sub", [ckpt], tree / "sub" / ".predictions", **kw)
    assert ok.written == 3 and (tree / "sub" / ".predictions" / "tinynet" / "deeper" / "c_grey.png").is_file()
    ok = predict_folder([tree / "a.png"], [ckpt], tree / "results", **kw)
    assert ok.written == 1
    # an input that is one of its own results is never overwritten
    own = tmp_path / "o" / "tinynet" / "a.png"
    own.parent.mkdir(parents=True)
    make_image(64, 48, "noise").save(own)
    before = own.read_bytes()
    res = predict_folder([own], [ckpt], tmp_path / "o", **kw)
    assert res.written == 0 and "overwrite the input" in res.failed[0][1] and own.read_bytes() == before
    # two images whose results would share a name: the second is reported, the first kept
    (tree / "a.jpg").write_bytes((tree / "sub" / "b.jpg").read_bytes())
    res = predict_folder([tree / "a.png", tree / "a.jpg"], [ckpt], tmp_path / "clash", **kw)
    assert res.written == 1 and "would replace" in res.failed[0][1]
    with pytest.raises(ValueError, match="outside the output folder"):
        predict_folder(iter([(tree / "a.png", "../escape.png")]), [ckpt], tmp_path / "x", **kw)
    with pytest.raises(ValueError, match="--batch"):
        predict_folder(tree, [ckpt], tmp_path / "x", batch=0, **kw)
    with pytest.raises(ValueError, match="overlay-alpha"):
        predict_folder(tree, [ckpt], tmp_path / "x", overlay_alpha=1.5, **kw)
    with pytest.raises(FileNotFoundError, match="not found"):
        predict_folder(tree, [tmp_path / "nope.json"], tmp_path / "x", **kw)


def test_predict_runs_on_auto_by_default(monkeypatch):
    monkeypatch.delenv("WORKBENCH_ENGINE", raising=False)
    assert process_engine("predict", []) == "auto"  # may measure OpenVINO: the system allocator stays
    assert process_engine("predict", ["--engine", "torch"]) == "torch"


def test_cli_subprocess_on_onnxruntime(ckpt, tree, tmp_path):
    """The real command line (allocator re-exec included) through another engine than torch, batched (ONNX Runtime's
    graph takes any batch); in a process of its own, so the runtime never loads into the test process."""
    out = tmp_path / "out"
    env = {**os.environ, "WORKBENCH_ENGINE": "torch", "PYTHONPATH": str(REPO_ROOT), "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "workbench", "predict", str(tree), "--checkpoints", str(ckpt), "--out", str(out),
           "--json", "--engine", "onnxruntime", "--precision", "fp32", "--batch", "3"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1, run.stderr  # one image was skipped
    assert f"error: {tree / BAD}:" in run.stderr and "corrupt" in run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{len(GOOD) + 1} image(s), 1 checkpoint(s): wrote {len(GOOD)} result(s)") and "1 image(s) skipped" in last
    assert "tinynet: onnxruntime fp32" in run.stdout
    for rel in GOOD:
        paths = output_paths(out, ckpt, rel, with_json=True)
        assert all(p.is_file() for p in paths.values()), rel
        doc = json.loads(paths["json"].read_text())
        # chunks of 3 decoded images: (a, d_rgba, f_wide) then (sub/b, c_grey, g_16bit); same-size ones share a pass
        assert doc["engine"] == "onnxruntime" and doc["batch"] == {"a.png": 2, "d_rgba.png": 2, "f_wide.png": 1}.get(rel, 3), rel
        labels, _ = read_label_png(paths["labels"])
        agree = (labels == _predictor(ckpt).predict(tree / rel).labels).mean()
        assert agree >= 0.999, (rel, agree)  # another runtime: the same labels up to float rounding at near-ties



def test_cli_errors_exit_2(ckpt, tree, capsys):
    assert main(["predict", str(tree), "--checkpoints", str(ckpt), "--out", str(tree / "res"), "--engine", "torch"]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not (tree / "res").exists()
    assert main(["predict", str(tree / "missing.png"), "--checkpoints", str(ckpt), "--out", str(tree.parent / "o")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["predict", str(tree), "--checkpoints", "no_such_checkpoint", "--out", str(tree.parent / "o")]) == 2
    assert "not found" in capsys.readouterr().err
