"""The app's Evaluate tab: its handler on the shipped examples and on an uploaded zip (scores equal to the
evaluation package's own), and every kind of hostile zip refused with a clear message and nothing written."""

from __future__ import annotations

import math
import stat
import tempfile
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from workbench.app import evaluate as ev
from workbench.app.common import zoo
from workbench.data.datasets import build_dataset
from workbench.data.transforms import eval_transforms
from workbench.evaluation.evaluate import EngineModule, evaluate_model

MODELS = ["fcn8s", "unet"]


class NoProgress:
    def __call__(self, *args, **kwargs):
        pass


def run(archs, set_name, upload=None, limit=None):
    return list(ev.run_evaluation(archs, set_name, upload, limit, progress=NoProgress()))


def street(seed: int, size=(64, 80)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 3] = [135, 170, 220]
    img[h // 3 : 2 * h // 3] = [120, 90, 80]
    img[2 * h // 3 :] = [90, 90, 95]
    img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    mask = np.full((h, w), 3, np.uint8)  # road
    mask[: h // 3] = 0  # sky
    mask[h // 3 : 2 * h // 3] = 1  # building
    mask[0, :5] = 255  # void
    return img, mask


def png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return str(path)


def valid_members(n: int = 2, prefix: str = "") -> dict[str, bytes]:
    out = {}
    for i in range(n):
        img, mask = street(i)
        out[f"{prefix}images/street{i}.png"] = png_bytes(img)
        out[f"{prefix}masks/street{i}.png"] = png_bytes(mask)
    return out


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """A private temp root and working directory: after a run both must be empty again."""
    tmp_root, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp_root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # Gradio's upload cache: where "Open in Compare" puts an uploaded image
    monkeypatch.chdir(cwd)
    yield tmp_path
    assert list(tmp_root.iterdir()) == [], "the temporary folder was not removed"
    assert list(cwd.iterdir()) == [], "something was written into the working directory"


def test_shipped_examples_two_models():
    outs = run(MODELS, ev.SHIPPED, limit=2)
    assert len(outs) == 2  # one update per image, streamed
    status, iou_fig, gallery, latency_fig, table, chooser, state = outs[-1]
    assert "2 of 5" in status or "first 2 of 5" in status
    assert list(table.columns) == ["image", "fcn8s mIoU %", "unet mIoU %", "disagreement %"]
    assert len(table) == 2
    assert list(table["disagreement %"]) == sorted(table["disagreement %"], reverse=True)
    assert all(0 <= v <= 100 for v in table["disagreement %"])
    assert iou_fig is not None and latency_fig is not None
    assert [caption for _img, caption in gallery] == MODELS
    for a in MODELS:
        r = state["results"][a]
        assert 0.3 < r["metrics"]["miou"] <= 1.0  # trained CamVid models on CamVid test images
        assert r["latency_ms"] > 0
        assert len(r["metrics"]["per_class_iou"]) == 11
    first = chooser["value"]
    assert first == table["image"].iloc[0]
    path = ev.open_in_compare(first, state)
    assert Path(path).is_file() and Path(path).stem == first


def test_uploaded_zip_scores_equal_the_evaluation_package(sandbox):
    upload = make_zip(sandbox / "set.zip", valid_members(2, prefix="myset/"))  # one enclosing folder is fine
    outs = run(MODELS, ev.UPLOAD, upload)
    status, _iou, _gallery, _lat, table, chooser, state = outs[-1]
    assert len(table) == 2 and set(table["image"]) == {"street0", "street1"}
    # the same images through the evaluation package directly
    folder = sandbox / "direct"
    for name, data in valid_members(2).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for a in MODELS:
        p = zoo().predictor(a)
        ds = build_dataset("folder", "all", path=str(folder), classes=p.classes,
                           transform=eval_transforms(mean=p.mean.view(-1).tolist(), std=p.std.view(-1).tolist()))
        direct = evaluate_model(EngineModule(p), ds, precision="fp32", progress=False)["metrics"]
        got = state["results"][a]["metrics"]
        assert got["confusion"] == direct["confusion"]
        for x, y in zip(got["per_class_iou"], direct["per_class_iou"]):
            assert (math.isnan(x) and math.isnan(y)) or x == y
        assert got["miou"] == pytest.approx(direct["miou"])
    # the uploaded image opens in Compare from the bytes kept in the state (its temporary folder is gone)
    opened = ev.open_in_compare("street1", state)
    assert Path(opened).name == "street1.png" and Path(opened).parent.parent == sandbox / "gradio"
    assert Path(opened).read_bytes() == valid_members(2)["images/street1.png"]  # the upload's own bytes, not a re-encoding


def hostile(tmp_path: Path, kind: str, monkeypatch) -> tuple[str, str]:
    """A hostile or broken zip of kind ``kind`` and the message it must be refused with."""
    ok = valid_members(1)
    path = tmp_path / f"{kind}.zip"
    if kind == "absolute":
        target = tmp_path / "abs_evil.png"
        return make_zip(path, {**ok, str(target): b"x"}), "unsafe member path"
    if kind == "dotdot":
        return make_zip(path, {**ok, "images/../../dotdot_evil.png": b"x"}), "unsafe member path"
    if kind == "symlink":
        return make_zip(path, ok, links={"images/link.png": "/etc/passwd"}), "symbolic link"
    if kind == "non-image member":
        return make_zip(path, {**ok, "images/run.sh": b"#!/bin/sh\necho hi\n"}), "may hold only image files"
    if kind == "stray folder":
        return make_zip(path, {**ok, "other/notes.png": png_bytes(street(0)[1])}), "may hold only image files"
    if kind == "fake image":
        return make_zip(path, {**ok, "images/fake.png": b"not a png at all", "masks/fake.png": ok["masks/street0.png"]}), "not an image"
    if kind == "bomb by ratio":
        return make_zip(path, {**ok, "images/bomb.png": bytes(8 << 20)}), "zip bomb"
    if kind == "bomb by declared size":
        monkeypatch.setattr(ev, "MAX_UNPACKED_BYTES", 100_000)
        rng = np.random.default_rng(0)
        return make_zip(path, {**ok, "images/big.png": rng.bytes(60_000), "masks/big.png": rng.bytes(60_000)}), "would unpack to"
    if kind == "too many images":
        monkeypatch.setattr(ev, "MAX_IMAGES", 2)
        return make_zip(path, valid_members(3)), "at most 2 can be evaluated"
    if kind == "masks missing":
        return make_zip(path, {k: v for k, v in valid_members(2).items() if k.startswith("images/")}), "no masks/ folder"
    if kind == "one mask missing":
        return make_zip(path, {k: v for k, v in valid_members(2).items() if k != "masks/street1.png"}), "have no mask"
    if kind == "not a zip":
        path.write_bytes(b"<html>login</html>")
        return str(path), "not a valid zip"
    raise AssertionError(kind)


HOSTILE = ["absolute", "dotdot", "symlink", "non-image member", "stray folder", "fake image", "bomb by ratio",
           "bomb by declared size", "too many images", "masks missing", "one mask missing", "not a zip"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_zip_is_refused_and_nothing_is_written(sandbox, kind, monkeypatch):
    upload, message = hostile(sandbox, kind, monkeypatch)
    before = sorted(p.name for p in sandbox.iterdir())
    with pytest.raises(gr.Error, match=message) as info:
        run(MODELS, ev.UPLOAD, upload)
    assert len(str(info.value.message).splitlines()) <= 3  # a message for people, not a traceback
    assert sorted(p.name for p in sandbox.iterdir()) == before
    assert not (sandbox / "abs_evil.png").exists()
    assert not (sandbox.parent / "dotdot_evil.png").exists() and not (sandbox / "dotdot_evil.png").exists()


def test_clear_errors_without_input(sandbox):
    with pytest.raises(gr.Error, match="at least one model"):
        run([], ev.SHIPPED)
    with pytest.raises(gr.Error, match="Upload a zip"):
        run(MODELS, ev.UPLOAD, None)
    with pytest.raises(gr.Error, match="between 1 and"):
        run(MODELS, ev.SHIPPED, limit=0)
    with pytest.warns(UserWarning, match="Run an evaluation"):  # shown as a toast in the app
        assert ev.open_in_compare("x", {}) == gr.skip()  # Compare's image stays as it was
    assert ev.select_row(None) == gr.skip()


def test_tab_builds_and_offers_the_shipped_examples():
    assert ev.available_sets()[0] == ev.SHIPPED and ev.available_sets()[-1] == ev.UPLOAD
    with gr.Blocks():
        image = gr.Image(type="filepath")
        ev.build(["fcn8s", "unet", "dilated"], image)
