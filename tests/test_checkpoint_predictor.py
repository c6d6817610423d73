"""Predictor end to end, on real (tiny) models and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import workbench
from workbench.inference.predictor import Prediction, upsample_argmax

from conftest import make_image, make_threshold_model, make_tiny_model


def _halves_labels(h, w):
    """Labels the threshold model must give for make_image(w, h, 'halves')."""
    lab = np.zeros((h, w), np.uint8)
    lab[:, w // 2 :] = 1
    return lab


@pytest.fixture
def predictor():
    return workbench.Predictor(make_threshold_model(), device="cpu", precision="fp32")


def test_threshold_model_sanity(predictor):
    # the fixture model is what the other tests rely on: dark -> 0, bright -> 1
    pred = predictor.predict(make_image(64, 48))
    np.testing.assert_array_equal(pred.labels, _halves_labels(48, 64))


def test_accepts_pil_image(predictor):
    im = make_image(70, 45)
    pred = predictor.predict(im)
    assert isinstance(pred, Prediction)
    assert pred.labels.shape == (45, 70)
    assert pred.labels.dtype == np.uint8
    np.testing.assert_array_equal(pred.labels, _halves_labels(45, 70))
    assert pred.image.size == (70, 45) and pred.image.mode == "RGB"
    assert pred.latency_ms > 0
    assert set(pred.timings) == {"load", "preprocess", "forward", "postprocess"}
    assert len(pred.classes) == 2


def test_accepts_numpy_arrays(predictor):
    rgb = np.asarray(make_image(66, 40))
    for arr in (
        rgb,  # H x W x 3 uint8
        rgb[..., 0],  # H x W uint8
        rgb[..., 0].astype(np.float32) / 255.0,  # H x W float in [0, 1]
        rgb.astype(np.float64) / 255.0,  # H x W x 3 float
        np.ascontiguousarray(np.moveaxis(rgb, -1, 0)),  # 3 x H x W
    ):
        pred = predictor.predict(arr)
        assert pred.labels.shape == (40, 66), arr.shape
        np.testing.assert_array_equal(pred.labels, _halves_labels(40, 66), err_msg=str(arr.shape))


def test_accepts_path_and_bytes(predictor, tmp_path):
    p = tmp_path / "street.png"
    make_image(81, 50).save(p)
    for src in (p, str(p), p.read_bytes()):
        pred = predictor.predict(src)
        np.testing.assert_array_equal(pred.labels, _halves_labels(50, 81))
    with pytest.raises(workbench.ImageError):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(workbench.ImageError):
        predictor.predict(None)


def test_probs_sum_to_one_at_original_size():
    model = make_tiny_model("unet", num_classes=4)
    pred = workbench.Predictor(model, device="cpu", precision="fp32").predict(make_image(53, 37, "noise"))
    assert pred.labels.shape == (37, 53)
    assert pred.probs.shape == (4, 37, 53)
    assert pred.probs.dtype == np.float32
    np.testing.assert_allclose(pred.probs.sum(0), 1.0, atol=1e-5)
    assert (pred.probs >= 0).all()
    np.testing.assert_array_equal(pred.labels, pred.probs.argmax(0))
    assert pred.labels.max() < 4


def test_exif_rotated_jpeg_gives_labels_in_displayed_orientation(predictor, tmp_path):
    stored = make_image(96, 64)  # stored pixels: 96 wide, 64 high, left dark, right bright
    p = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(p, exif=exif, quality=95)
    with Image.open(p) as check:
        assert check.getexif()[0x0112] == 6 and check.size == (96, 64)
    pred = predictor.predict(p)
    # displayed: 64 wide, 96 high; the stored left half is now on top
    assert pred.labels.shape == (96, 64)
    assert pred.image.size == (64, 96)
    assert (pred.labels[:40] == 0).all()
    assert (pred.labels[56:] == 1).all()


def test_one_channel_model_gets_grayscale_from_rgb():
    predictor = workbench.Predictor(make_threshold_model(in_chans=1), device="cpu", precision="fp32")
    assert predictor.mode == "L"
    # green is bright and blue is dark in luminance, though their RGB means are equal
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    pred = predictor.predict(Image.fromarray(arr))
    assert pred.image.mode == "L"
    assert pred.labels.shape == (40, 60)
    assert (pred.labels[:, :30] == 1).all()
    assert (pred.labels[:, 30:] == 0).all()
    # the same through a generic 1-channel model: it runs, with the right shapes
    model = make_tiny_model("unet", num_classes=3, in_chans=1)
    pred = workbench.Predictor(model, device="cpu", precision="fp32").predict(make_image(50, 40))
    assert pred.labels.shape == (40, 50) and pred.probs_work.shape == (3, 40, 50)


def test_predictor_from_checkpoint_path(tmp_path):
    model = make_threshold_model()
    classes = [{"name": "dark", "color": [0, 0, 0]}, {"name": "bright", "color": [255, 255, 0]}]
    manifest_path = workbench.save_checkpoint(tmp_path / "thr", model, {"classes": classes})
    im = make_image(72, 44)
    direct = workbench.Predictor(model, device="cpu", precision="fp32").predict(im)
    for ref in (manifest_path, tmp_path / "thr.safetensors", str(tmp_path / "thr")):
        predictor = workbench.Predictor(ref, device="cpu", precision="fp32")
        assert predictor.classes == classes
        pred = predictor.predict(im)
        np.testing.assert_array_equal(pred.labels, _halves_labels(44, 72))
        np.testing.assert_array_equal(pred.labels, direct.labels)
        np.testing.assert_allclose(pred.probs_work, direct.probs_work, atol=1e-6)
    with pytest.raises(workbench.CheckpointError):
        workbench.Predictor(tmp_path / "nothing_here.json", device="cpu")


def test_checkpoint_normalization_is_used(tmp_path):
    model = make_threshold_model()
    # a mean of 1 makes every pixel "dark" (normalised value <= 0)
    workbench.save_checkpoint(tmp_path / "m", model, {"normalization": {"mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]}})
    pred = workbench.Predictor(tmp_path / "m.json", device="cpu", precision="fp32").predict(make_image(64, 40))
    assert (pred.labels == 0).all()


def test_large_image_processed_at_working_size(predictor):
    predictor.max_side = 64
    im = make_image(200, 130)
    pred = predictor.predict(im)
    assert pred.probs_work.shape == (2, 42, 64)  # 130 * 64 / 200 = 41.6 -> 42
    assert pred.labels.shape == (130, 200)
    assert pred.probs.shape == (2, 130, 200)
    expected = _halves_labels(130, 200)
    # away from the boundary column the labels are exact at full size
    np.testing.assert_array_equal(pred.labels[:, :95], expected[:, :95])
    np.testing.assert_array_equal(pred.labels[:, 105:], expected[:, 105:])


def test_tiny_image_is_upscaled_to_the_minimum(predictor):
    pred = predictor.predict(make_image(20, 8))
    assert pred.labels.shape == (8, 20)
    assert min(pred.probs_work.shape[1:]) >= 32
    np.testing.assert_array_equal(pred.labels[:, :8], 0)
    np.testing.assert_array_equal(pred.labels[:, 12:], 1)


@pytest.mark.parametrize(
    "shape,size,band_pixels",
    [((5, 7, 9), (61, 83), 1 << 20), ((5, 7, 9), (61, 83), 200), ((3, 16, 16), (16, 16), 64), ((4, 10, 6), (7, 5), 3)],
)
def test_upsample_argmax_equals_interpolate_argmax(shape, size, band_pixels):
    torch.manual_seed(1)
    logits = torch.randn(1, *shape)
    got = upsample_argmax(logits, size, band_pixels=band_pixels)
    assert got.shape == size and got.dtype == torch.int64
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
    ref = up.argmax(0)
    # identical except where the top two classes tie to within float rounding
    top2 = up.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert clear.float().mean() > 0.99
    assert torch.equal(got[clear], ref[clear])


def test_precision_and_device_options():
    from workbench.inference.predictor import resolve_device, resolve_precision

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", torch.device("cpu"))
    # bf16 autocast gives the same labels as fp32 on the threshold model
    pred = workbench.Predictor(make_threshold_model(), device="cpu", precision="bf16").predict(make_image(64, 40))
    np.testing.assert_array_equal(pred.labels, _halves_labels(40, 64))


def test_save_interrupted_between_its_renames_rolls_forward(tmp_path, tiny_model):
    """A kill after the new weights are in place but before the new manifest: load uses the pending manifest."""
    import os

    import workbench
    from workbench.io.checkpoint import _pending_manifest

    torch.manual_seed(0)
    model = tiny_model("fcn8s")
    path = workbench.save_checkpoint(tmp_path / "ck", model, {"metrics": {"val": {"miou": 0.1}}})
    old_manifest = path.read_text()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    workbench.save_checkpoint(tmp_path / "ck", model, {"metrics": {"val": {"miou": 0.2}}})
    # simulate the crash window: new weights, old manifest, new manifest still pending
    os.replace(path, _pending_manifest(path))
    path.write_text(old_manifest)
    loaded, manifest = workbench.load_checkpoint(path)
    assert manifest["metrics"]["val"]["miou"] == 0.2
    assert not _pending_manifest(path).exists() and "0.2" in path.read_text()  # the interrupted save was completed
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_a_pending_manifest_for_other_weights_is_never_trusted(tmp_path, tiny_model):
    import json

    import workbench
    from workbench.io.checkpoint import _pending_manifest

    path = workbench.save_checkpoint(tmp_path / "ck", tiny_model("fcn8s"))
    fake = json.loads(path.read_text())
    fake["weights"]["sha256"] = "0" * 64
    _pending_manifest(path).write_text(json.dumps(fake))
    weights = tmp_path / "ck.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(workbench.CheckpointError, match="does not match"):
        workbench.load_checkpoint(path)


def test_shared_preprocessing_gives_the_same_answers_and_runs_once(tiny_model, image_factory, monkeypatch):
    """The app runs several models on one image: decode and normalisation happen once, answers are unchanged."""
    from workbench.inference.predictor import Predictor

    image = image_factory(97, 61, "gradient")
    preds = [Predictor(tiny_model(arch, 3), "cpu", precision="fp32") for arch in ("fcn8s", "unet")]
    alone = [p.predict(image).labels for p in preds]
    calls = []
    real = Predictor.preprocess
    monkeypatch.setattr(Predictor, "preprocess", lambda self, im: calls.append(1) or real(self, im))
    shared: dict = {}
    together = [p.predict(image, shared).labels for p in preds]
    assert len(calls) == 1
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)
    gray = Predictor(tiny_model("fcn8s", 3, in_chans=1), "cpu", precision="fp32")
    assert gray.predict(image, shared).labels.shape == (61, 97)  # another mode: its own decode and input
    assert len(calls) == 2


def test_predict_many_matches_one_by_one_and_isolates_errors(tiny_model, image_factory):
    from workbench.inference.predictor import Predictor, predict_many

    image = image_factory(97, 61, "gradient")
    preds = [Predictor(tiny_model(arch, 3), "cpu", precision="fp32") for arch in ("fcn8s", "unet", "dilated")]

    class Broken(torch.nn.Module):
        def forward(self, x):
            return x[:, :1, ::2, ::2]  # wrong shape

    bad = Predictor(Broken(), "cpu", precision="fp32", optimize=False)
    out = predict_many([preds[0], bad, preds[1], preds[2]], image)
    assert isinstance(out[1], ValueError) and "expected logits of shape" in str(out[1])
    for p, r in zip(preds, [out[0], out[2], out[3]]):
        alone = p.predict(image)
        assert np.array_equal(alone.labels, r.labels)
        assert set(r.timings) == {"load", "preprocess", "forward", "postprocess"}
        assert r.latency_ms == pytest.approx(sum(r.timings.values()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the GPU path)")
def test_gpu_path_queues_forwards_without_host_syncs_and_agrees_with_cpu(tiny_model, image_factory):
    from workbench.inference.predictor import Predictor, predict_many

    image = image_factory(480, 360, "gradient")
    models = [tiny_model(arch, 3) for arch in ("fcn8s", "unet", "residual_unet")]
    gpu = [Predictor(m, "cuda") for m in models]
    for p in gpu:
        p.warmup((360, 480))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync while the forwards are queued raises
    try:
        queued = [p.forward_device(p._prepare(image, {})[1]) for p in gpu]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(q.is_cuda for q in queued)
    out = predict_many(gpu, image)
    for m, r in zip(models, out):
        ref = Predictor(m, "cpu", precision="fp32").predict(image)
        assert (ref.labels == r.labels).mean() >= 0.995


def test_saving_the_same_weights_twice_gives_identical_bytes(tmp_path):
    """Reproducible checkpoint files (safetensors orders multi-key metadata arbitrarily per process, so the
    weights file carries a single metadata key; everything else lives in the manifest)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, workbench; torch.manual_seed(0); "
        "m = workbench.create_model('fcn32s', num_classes=3, encoder='test_resnet'); "
        "workbench.save_checkpoint(sys.argv[1], m, {}, dtype=torch.float16)"
    )
    for name in ("a", "b", "c"):
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    blobs = {(tmp_path / f"{n}.safetensors").read_bytes() for n in "abc"}
    assert len(blobs) == 1


def test_a_safetensors_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A pickle starts with byte 0x80, and so does a safetensors file whose header length is 128 mod 256."""
    import struct

    from safetensors.torch import save_file

    from workbench.io.checkpoint import _check_safetensors

    for pad in range(300):  # find metadata that makes the header length's low byte 0x80
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt", "x": "y" * pad} if pad else {"format": "pt"})
        if path.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length starting with 0x80")
    assert struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 128
    _check_safetensors(path)  # accepted
    pickled = tmp_path / "p.safetensors"
    torch.save({"w": torch.zeros(2)}, pickled)
    with pytest.raises(workbench.CheckpointError, match="pickle"):
        _check_safetensors(pickled)


def test_manifest_pinned_precision_is_honoured_by_auto_only(tiny_model, tmp_path):
    """A checkpoint that failed the bf16 parity check (scripts/check_bf16_parity.py) carries
    "inference": {"precision": "fp32"}: precision="auto" (the app) runs it in fp32, an explicit choice wins."""
    from workbench.io.checkpoint import load_checkpoint, save_checkpoint
    from workbench.inference.predictor import Predictor, resolve_precision

    model = tiny_model("unet", 3)
    path = save_checkpoint(tmp_path / "m", model, {"inference": {"precision": "fp32"}})
    loaded, manifest = load_checkpoint(path)
    assert manifest["inference"]["precision"] == "fp32"
    assert Predictor(loaded, "cpu").precision == "fp32"
    assert Predictor(path, "cpu").precision == "fp32"
    assert Predictor(path, "cpu", precision="bf16").precision == "bf16"
    plain = save_checkpoint(tmp_path / "plain", model)
    assert Predictor(plain, "cpu").precision == resolve_precision("auto", torch.device("cpu"))
    passed = save_checkpoint(tmp_path / "passed", model, {"inference": {"precision": "auto", "bf16_label_agreement": 0.999}})
    assert Predictor(passed, "cpu").precision == resolve_precision("auto", torch.device("cpu"))  # only an fp32 pin restricts "auto"
