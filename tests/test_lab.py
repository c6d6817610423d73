"""The upsampling lab (workbench.lab) and its tab: overlap counts, checkerboard score, operators, constant input.

ICNR pixel shuffle at initialisation equal to nearest upsampling of its sub-convolution output is tested
on the module itself in tests/test_upsampling.py (test_icnr_pixel_shuffle_is_nearest_at_init); here the
lab's own pixel-shuffle operator is checked to be exactly nearest.
"""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import lab
from workbench.app import compare as compare_tab
from workbench.app import upsampling as upsampling_tab
from workbench.lab.__main__ import main as lab_main

ROOT = Path(__file__).resolve().parents[1]
FACTORS = (2, 4, 8)


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]  # (1, C, H, W)


def _image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise: something an upsampler can get wrong in every way."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = 120 + 60 * np.sin(x / 5.0)[..., None] * np.array([1.0, 0.5, -0.3]) + 40 * ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 3) ** 2)[..., None]
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- overlap counts

# One period of the interior tap count, by hand: output pixel o = s*i - pad + t for input i and tap t,
# with TransposedUp's pad = ceil((k - s) / 2); index 0 is the first output pixel of an input pixel's block.
HAND_COUNTED = {
    (3, 2): [1, 2],  # pad 1: even outputs get tap 1, odd ones taps 0 and 2
    (4, 2): [2, 2],
    (2, 2): [1, 1],
    (5, 2): [3, 2],  # pad 2: even outputs taps 0, 2, 4; odd ones 1, 3
    (6, 3): [2, 2, 2],
    (4, 3): [1, 1, 2],  # pad 1: o = 3i - 1 + t; o % 3 == 2 gets taps 0 and 3
}


@pytest.mark.parametrize("k,s", list(HAND_COUNTED))
def test_transposed_overlap_matches_hand_counts_and_2d_is_the_outer_product(k, s):
    one = lab.overlap_map_1d(k, s, 12)
    expected = np.tile(HAND_COUNTED[(k, s)], 12)[:12]
    np.testing.assert_array_equal(one, expected)
    two = lab.overlap_map_2d(k, s, 12)  # the workbench's real 2-D TransposedUp module
    np.testing.assert_array_equal(two, np.outer(one, one))
    assert (one.min() == one.max()) == (k % s == 0)  # uneven exactly when k is not divisible by s


@pytest.mark.parametrize("method", ["resize_conv", "pixel_shuffle"])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_resize_conv_and_pixel_shuffle_overlap_is_even(method, s):
    np.testing.assert_array_equal(lab.overlap_map_1d(None, s, 10, method), np.full(10, 3))
    np.testing.assert_array_equal(lab.overlap_map_2d(None, s, 10, method), np.full((10, 10), 9))


def test_overlap_rejects_bad_arguments_and_draws_a_figure():
    with pytest.raises(ValueError, match=">= the stride"):
        lab.overlap_map_2d(1, 2)
    with pytest.raises(ValueError, match="valid"):
        lab.overlap_map_1d(3, 2, method="deconv")
    with pytest.raises(ValueError, match="3x3"):
        lab.overlap_map_1d(5, 2, method="resize_conv")
    fig = lab.overlap_figure(3, 2)
    assert len(fig.axes) == 6
    assert "uneven" in fig.axes[0].get_title() and "even" in fig.axes[1].get_title()


# --------------------------------------------------------------------------- checkerboard score


def _periodic_component(x: np.ndarray, s: int) -> np.ndarray:
    """Each pixel replaced by the mean of the pixels with the same (row % s, col % s)."""
    out = np.empty_like(x)
    for p in range(s):
        for q in range(s):
            out[:, p::s, q::s] = x[:, p::s, q::s].mean(axis=(1, 2), keepdims=True)
    return out


def test_checkerboard_score_is_one_for_a_checkerboard_and_tiny_for_smooth_maps():
    y, x = np.mgrid[:64, :80].astype(np.float64)
    checker = np.where((x + y) % 2 == 0, 1.0, -1.0)
    assert lab.checkerboard_score(checker) > 0.999
    assert lab.checkerboard_score(5 + 0.1 * checker) > 0.999  # offset and amplitude do not matter
    assert lab.checkerboard_score(checker[:33, :35]) > 0.999  # odd sizes: cropped to the period
    assert lab.checkerboard_score(np.where(x % 2 == 0, 1.0, 0.0)) > 0.999  # stripes: (0, pi)
    blob = np.exp(-((x - 30) ** 2 + (y - 25) ** 2) / (2 * 8.0**2))
    ramp = 0.5 * x + 0.2 * y
    for smooth in (blob, ramp, np.stack([blob, ramp, np.sin(x / 7)])):
        assert lab.checkerboard_score(smooth) < 0.01
    # a faint checkerboard on a smooth map: the score is the checkerboard's share of the energy
    e_checker, e_blob = np.square(0.05 * checker).sum(), np.square(blob - blob.mean()).sum()
    assert lab.checkerboard_score(blob + 0.05 * checker) == pytest.approx(e_checker / (e_checker + e_blob), rel=0.02)


def test_checkerboard_score_of_constant_maps_is_zero():
    assert lab.checkerboard_score(np.zeros((16, 16))) == 0.0
    assert lab.checkerboard_score(np.full((3, 16, 16), 7.25, np.float32)) == 0.0
    assert lab.checkerboard_score(torch.full((2, 10, 12), -3.0)) == 0.0


def test_checkerboard_score_stride_4():
    x = np.arange(64)
    half = np.where(x % 4 < 2, 1.0, -1.0)[None].repeat(64, 0)  # period 4, no period-2 energy
    assert lab.checkerboard_score(half, 4) > 0.999
    assert lab.checkerboard_score(half, 2) < 1e-9
    tile = np.random.default_rng(0).normal(size=(4, 4))
    pattern = np.tile(tile, (16, 16))  # any period-4 pattern
    assert lab.checkerboard_score(pattern, 4) > 0.999
    checker = np.where((x[:, None] + x[None]) % 2 == 0, 1.0, -1.0)
    assert lab.checkerboard_score(checker, 4) > 0.999  # period 2 divides 4: also caught


def _fft_score(x: np.ndarray, s: int) -> float:
    """The definition, literally: 2-D FFT power on the period-s frequency lattice over the total, mean removed."""
    h, w = x.shape[1] - x.shape[1] % s, x.shape[2] - x.shape[2] % s
    c = x[:, :h, :w] - x[:, :h, :w].mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(c)) ** 2
    return power[:, :: h // s, :: w // s].sum() / power.sum()


def test_checkerboard_score_is_the_fft_lattice_share_and_the_periodic_component_energy():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(3, 42, 50)) + np.tile(rng.normal(size=(3, 2, 2)), (1, 21, 25))
    for s in (2, 3, 4):
        c = m[:, : 42 - 42 % s, : 50 - 50 % s]
        c = c - c.mean(axis=(1, 2), keepdims=True)
        periodic = np.square(_periodic_component(c, s)).sum() / np.square(c).sum()
        assert lab.checkerboard_score(m, s) == pytest.approx(_fft_score(m, s), rel=1e-6)
        assert lab.checkerboard_score(m, s) == pytest.approx(periodic, rel=1e-6)
    assert lab.checkerboard_score(torch.from_numpy(m).float(), 2) == pytest.approx(lab.checkerboard_score(m, 2), rel=1e-5)


def test_checkerboard_score_rejects_bad_input():
    with pytest.raises(ValueError, match="stride"):
        lab.checkerboard_score(np.zeros((8, 8)), 1)
    with pytest.raises(ValueError, match="shape"):
        lab.checkerboard_score(np.zeros(8))


# --------------------------------------------------------------------------- reduce and restore


@pytest.mark.parametrize("factor", FACTORS)
def test_every_operator_restores_the_original_shape(factor):
    for shape in ((40, 56, 3), (37, 53, 3), (21, 30)):  # multiple of 8, odd, grayscale
        img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        for name in lab.OPERATORS:
            out = lab.reduce_and_restore(img, factor, name)
            assert out.shape == img.shape and out.dtype == np.uint8, (name, shape)
        small = lab.reduce_image(img, factor)
        assert small.shape[:2] == (math.ceil(shape[0] / factor), math.ceil(shape[1] / factor))


def test_bad_factor_and_method_are_rejected():
    img = _image()
    with pytest.raises(ValueError, match="power of two"):
        lab.reduce_and_restore(img, 3, "nearest")
    with pytest.raises(ValueError, match="valid"):
        lab.reduce_and_restore(img, 2, "lanczos")


@pytest.mark.parametrize("factor", FACTORS)
def test_nearest_and_bilinear_match_torch(factor):
    img = _image()
    small = F.avg_pool2d(_chw(img), factor)
    ref_near = F.interpolate(small, scale_factor=factor, mode="nearest")
    ref_bil = small
    for _ in range(int(math.log2(factor))):  # one 2x stage at a time, as the lab (and a decoder) does
        ref_bil = F.interpolate(ref_bil, scale_factor=2, mode="bilinear", align_corners=False)
    for method, ref in (("nearest", ref_near), ("bilinear", ref_bil)):
        ref = np.clip(np.rint(ref[0].permute(1, 2, 0).numpy()), 0, 255)
        diff = np.abs(lab.reduce_and_restore(img, factor, method).astype(np.float64) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, method  # equal up to float rounding at .5


def test_learned_operators_at_their_lab_initialisation():
    img = _image()
    near = lab.reduce_and_restore(img, 4, "nearest")
    bil = lab.reduce_and_restore(img, 2, "bilinear")
    np.testing.assert_array_equal(lab.reduce_and_restore(img, 4, "pixel_shuffle"), near)  # ICNR = nearest
    for name in ("transposed_k4", "resize_conv"):  # bilinear inside the 1-pixel zero-padding frame
        inner = np.abs(lab.reduce_and_restore(img, 2, name)[1:-1, 1:-1].astype(int) - bil[1:-1, 1:-1])
        assert inner.max() <= 1, name
    flat = np.full((64, 64, 3), 128, np.uint8)
    scores = {r["name"]: r["checkerboard"] for r in lab.compare_operators(flat, 2)}
    assert scores["transposed_k3_uniform"] > 0.5 and scores["bed_of_nails"] > 0.9
    assert scores["transposed_k4_uniform"] < 0.01 and scores["nearest"] == 0 and scores["pixel_shuffle"] == 0


def test_bed_of_nails_and_max_unpooling_are_sparse_and_exact():
    img = _image(32, 48)
    bon = lab.reduce_and_restore(img, 4, "bed_of_nails")
    np.testing.assert_array_equal(bon[::4, ::4], lab.reduce_image(img, 4))
    mask = np.zeros(bon.shape[:2], bool)
    mask[::4, ::4] = True
    assert (bon[~mask] == 0).all()
    mup = lab.reduce_and_restore(img, 4, "max_unpool")
    # every 4x4 block keeps its per-channel maximum, where it was, and nothing else
    t, r = _chw(img), _chw(mup)
    torch.testing.assert_close(F.max_pool2d(r, 4), F.max_pool2d(t, 4))
    assert ((r > 0).float().view(1, 3, 8, 4, 12, 4).sum((3, 5)) <= 1).all()
    assert np.array_equal(mup[mup > 0], img[mup > 0])


def test_psnr_and_ssim():
    img = _image()
    assert lab.psnr(img, img) == math.inf
    assert lab.ssim(img, img) == pytest.approx(1.0)
    shifted = np.clip(img.astype(int) + 5, 0, 255).astype(np.uint8)
    mse = np.mean((shifted.astype(float) - img) ** 2)
    assert lab.psnr(shifted, img) == pytest.approx(10 * math.log10(255**2 / mse))
    tm = pytest.importorskip("torchmetrics.functional.image")
    other = lab.reduce_and_restore(img, 4, "bilinear")
    a, b = _chw(other).double(), _chw(img).double()
    assert lab.ssim(other, img) == pytest.approx(float(tm.structural_similarity_index_measure(a, b, data_range=255.0)), abs=1e-9)
    assert lab.psnr(other, img) == pytest.approx(float(tm.peak_signal_noise_ratio(a, b, data_range=255.0)), abs=1e-6)


def test_compare_operators_scores_every_operator():
    img = _image()
    rows = lab.compare_operators(img, 2)
    assert [r["name"] for r in rows] == list(lab.OPERATORS)
    by = {r["name"]: r for r in rows}
    assert by["bilinear"]["psnr"] > by["bed_of_nails"]["psnr"] + 10
    assert by["nearest"]["ssim"] > by["max_unpool"]["ssim"]
    assert all(0 <= r["checkerboard"] <= 1 and r["image"].shape == img.shape for r in rows)


# --------------------------------------------------------------------------- constant input

SMALL_DECODER = dict(channels=(8, 16, 24), reductions=(2, 4, 8), decoder_channels=(16, 8, 8), size=96, crop=32)


@pytest.mark.parametrize("seed", range(5))
def test_random_transposed_k3_decoder_prints_a_checkerboard_on_a_constant_input(seed):
    scores = {m: lab.constant_input_artifacts(m, seed=seed, **SMALL_DECODER)["score"] for m in ("transposed k3 s2 (default init)", "resize-conv", "nearest")}
    assert scores["resize-conv"] < 0.01 and scores["nearest"] < 0.01
    assert scores["transposed k3 s2 (default init)"] > 0.5
    assert scores["transposed k3 s2 (default init)"] > max(scores["resize-conv"], scores["nearest"]) + 0.4


def test_constant_input_flat_methods_and_result_fields():
    res = lab.constant_input_artifacts("pixel shuffle (ICNR)", seed=0, **SMALL_DECODER)
    assert res["output"].shape == (8, 32, 32) and res["score"] < 0.01
    assert lab.constant_input_artifacts("transposed k3 s2 (bilinear init)", seed=0, **SMALL_DECODER)["score"] < 0.01
    assert lab.constant_input_artifacts("bed-of-nails", seed=0, **SMALL_DECODER)["score"] > 0.5
    gallery = lab.constant_input_gallery(0, methods=["nearest", "bed-of-nails"], **SMALL_DECODER)
    assert [g["image"].shape for g in gallery] == [(128, 128, 3)] * 2


# --------------------------------------------------------------------------- export --set, discovery, the tab


@pytest.fixture
def lab_checkpoints(tmp_path, tiny_model):
    """A folder holding one tiny U-Net exported as an upsampling-lab variant with `workbench export --set`."""
    from workbench import save_checkpoint
    from workbench.cli import main

    model = tiny_model("unet", num_classes=3, upsample="nearest")
    src = save_checkpoint(tmp_path / "run" / "best", model, {"dataset": {"name": "camvid"}, "metrics": {"test": {"miou": 0.5}}})
    folder = tmp_path / "ckpt"
    assert main(["export", str(src), str(folder / "upsampling_unet_nearest"), "--set", "upsampling_lab=true", "--set", "note=lab"]) == 0
    assert main(["export", str(src), str(folder / "bad"), "--set", "kwargs={}"]) == 2  # cannot rewrite what the weights need
    return folder


def test_export_set_marks_variants_and_the_zoo_skips_them(lab_checkpoints):
    from workbench.io.checkpoint import read_manifest
    from workbench.inference.zoo import discover_checkpoints

    man = read_manifest(lab_checkpoints / "upsampling_unet_nearest.json")
    assert man["upsampling_lab"] is True and man["note"] == "lab"
    assert lab.variant_checkpoints(lab_checkpoints) == {"nearest": lab_checkpoints / "upsampling_unet_nearest.json"}
    assert discover_checkpoints(lab_checkpoints)[0] == {}  # never the Compare tab's unet


def test_variant_table_command(lab_checkpoints, tmp_path, capsys):
    assert lab_main(["table", str(lab_checkpoints / "upsampling_unet_nearest.json"), "--data-root", str(tmp_path), "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| upsampling_unet_nearest | `nearest` | 50.0 | - |" in text




@pytest.fixture(scope="module")
def street(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "street.png"
    Image.fromarray(_image(96, 128)).save(path)
    return str(path)


@pytest.mark.parametrize("factor", [2, 8])
def test_tab_operators(street, factor):
    gallery, table, note = upsampling_tab.lab_operators(street, factor)
    assert len(gallery) == 2 + len(lab.OPERATORS) and len(table) == len(lab.OPERATORS)
    assert gallery[1][0].shape == (96 // factor, 128 // factor, 3)
    assert all(img.shape == (96, 128, 3) for img, _ in gallery[2:])
    assert all("PSNR" in cap and "SSIM" in cap and "checkerboard" in cap for _, cap in gallery[2:])
    assert all(len(row) == len(upsampling_tab.LAB_TABLE_HEADERS) for row in table)
    assert "checkerboard score" in note
    with pytest.raises(gr.Error):
        upsampling_tab.lab_operators(street, 3)
    with pytest.raises(gr.Error):
        upsampling_tab.lab_operators(None, 2)


def test_tab_overlap():
    fig, text = upsampling_tab.lab_overlap(3, 2)
    assert fig is not None and "Uneven" in text and "1, 2" in text
    assert "Even" in upsampling_tab.lab_overlap(4, 2)[1]
    with pytest.raises(gr.Error, match="at least"):
        upsampling_tab.lab_overlap(2, 3)


def test_tab_constant_input(monkeypatch):
    full = lab.constant_input_gallery
    small = lambda seed: full(seed, methods=["nearest", "transposed k3 s2 (default init)"], **SMALL_DECODER)  # noqa: E731
    monkeypatch.setattr(upsampling_tab.lab, "constant_input_gallery", small)
    monkeypatch.setattr(upsampling_tab, "_LAB_CONSTANT_CACHE", {})
    gallery, table, text = upsampling_tab.lab_constant_input(0)
    assert len(gallery) == len(table) == 2
    assert table[0][-1] == "no artifacts" and table[1][-1] == "period-2 artifacts"
    assert "constant" in text


def test_tab_trained_variants(monkeypatch, tmp_path, lab_checkpoints, street):
    monkeypatch.setattr(upsampling_tab, "_LAB_PREDICTORS", {})
    monkeypatch.setenv("WORKBENCH_CHECKPOINTS", str(tmp_path / "empty"))
    gallery, table, text = upsampling_tab.lab_trained(None)  # nothing shipped: a message, no error, no image needed
    assert gallery == [] and table == [] and "No trained upsampling variants" in text
    monkeypatch.setenv("WORKBENCH_CHECKPOINTS", str(lab_checkpoints))
    gallery, table, text = upsampling_tab.lab_trained(street)
    assert len(gallery) == 1 and gallery[0][0].shape == (96, 128, 3)
    assert table[0][:3] == ["upsampling_unet_nearest", "nearest", "50.0"] and len(table[0]) == len(upsampling_tab.LAB_VARIANT_HEADERS)


def test_compare_cards_show_the_checkerboard_score(street):
    out = compare_tab.compare(street, ["naive"], 0.5)
    header = out.cards["naive"]["header"]
    assert "checkerboard" in header
