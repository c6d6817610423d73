"""Image loading (``workbench.io.images``) and the pure visualisation helpers (``workbench.viz``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, features

from workbench import viz
from workbench.io.images import ImageError, load_image, to_uint8_array

from conftest import make_image


def _px(im, xy):
    return tuple(int(v) for v in np.atleast_1d(im.getpixel(xy)))


# --------------------------------------------------------------------------- formats


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 6, 4), np.uint8)
    arr[:, :2] = (255, 0, 0, 255)  # opaque red
    arr[:, 2:4] = (255, 0, 0, 128)  # half-transparent red
    arr[:, 4:] = (0, 0, 0, 0)  # fully transparent (black underneath)
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (6, 4)
    assert _px(im, (0, 0)) == (255, 0, 0)
    r, g, b = _px(im, (2, 0))
    assert r == 255 and 120 <= g <= 135 and g == b
    assert _px(im, (5, 0)) == (255, 255, 255)


def test_palette_image(tmp_path):
    p_im = Image.new("P", (4, 4), 0)
    p_im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p_im.putpixel((1, 1), 1)
    p = tmp_path / "pal.png"
    p_im.save(p)
    im = load_image(p)
    assert im.mode == "RGB"
    assert _px(im, (0, 0)) == (10, 20, 30)
    assert _px(im, (1, 1)) == (200, 100, 50)


def test_palette_with_transparency(tmp_path):
    p_im = Image.new("P", (4, 4), 0)
    p_im.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    p_im.putpixel((2, 2), 1)
    p = tmp_path / "pal_t.png"
    p_im.save(p, transparency=0)  # index 0 (black) is transparent
    with Image.open(p) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 0
    im = load_image(p)
    assert im.mode == "RGB"
    assert _px(im, (0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert _px(im, (2, 2)) == (0, 200, 0)


def test_16bit_png_is_rescaled(tmp_path):
    arr = np.array([[0, 257, 32768, 65535]], np.uint16).repeat(3, 0)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    got = np.asarray(load_image(p, "L"))
    np.testing.assert_array_equal(got[0], [0, 1, 128, 255])
    rgb = load_image(p)
    assert rgb.mode == "RGB" and _px(rgb, (2, 0)) == (128, 128, 128)


def test_dark_16bit_png_stays_dark(tmp_path):
    # 16-bit data whose values happen to be <= 255 is still 16-bit: it must not be read as 8-bit
    arr = np.array([[0, 100, 255]], np.uint16).repeat(3, 0)
    p = tmp_path / "dark16.png"
    Image.fromarray(arr).save(p)
    got = np.asarray(load_image(p, "L"))
    np.testing.assert_array_equal(got[0], [0, 0, 1])


@pytest.mark.parametrize(
    "values,expected",
    [([0.0, 0.5, 1.0], [0, 128, 255]), ([-2.0, 0.0, 2.0], [0, 128, 255]), ([0.25, float("nan"), 0.75], [64, 0, 191])],
)
def test_float_tiff(tmp_path, values, expected):
    arr = np.array([values], np.float32).repeat(3, 0)
    p = tmp_path / "float.tiff"
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "F"
    got = np.asarray(load_image(p, "L"))
    np.testing.assert_array_equal(got[0], expected)


def test_one_bit(tmp_path):
    b = Image.new("1", (5, 4), 0)
    b.putpixel((1, 2), 1)
    p = tmp_path / "bits.png"
    b.save(p)
    im = load_image(p, "L")
    assert im.mode == "L"
    got = np.asarray(im)
    assert got[2, 1] == 255 and got.sum() == 255
    assert load_image(p).mode == "RGB"


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(p, quality=100)  # pure cyan
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    im = load_image(p)
    assert im.mode == "RGB"
    r, g, b = _px(im, (8, 8))
    assert r < 10 and g > 245 and b > 245


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.is_animated and raw.n_frames == 3
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (8, 8)
    assert _px(im, (4, 4)) == (255, 0, 0)


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp(tmp_path):
    p = tmp_path / "img.webp"
    Image.new("RGB", (8, 6), (10, 200, 30)).save(p, lossless=True)
    im = load_image(p)
    assert im.size == (8, 6) and _px(im, (3, 3)) == (10, 200, 30)


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    make_image(40, 20).save(p, exif=exif)
    im = load_image(p)
    assert im.size == (20, 40)
    a = np.asarray(im)
    assert a[:10].mean() < 60 and a[-10:].mean() > 200  # stored left half is now on top


def test_sources_and_modes(tmp_path):
    im = make_image(12, 8)
    p = tmp_path / "x.png"
    im.save(p)
    data = p.read_bytes()
    for src in (p, str(p), data, bytearray(data), io.BytesIO(data), im, np.asarray(im)):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (12, 8)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(im))
    gray = load_image(p, "L")
    assert gray.mode == "L" and gray.size == (12, 8)
    with pytest.raises(ValueError, match="mode"):
        load_image(p, "CMYK")
    with pytest.raises(ImageError, match="array of shape"):
        load_image(np.zeros((5, 5, 2), np.uint8))
    with pytest.raises(ImageError, match="cannot read an image"):
        load_image(12345)


def test_to_uint8_array():
    np.testing.assert_array_equal(to_uint8_array(np.array([True, False])), [255, 0])
    np.testing.assert_array_equal(to_uint8_array(np.array([0, 255], np.int64)), [0, 255])
    np.testing.assert_array_equal(to_uint8_array(np.array([0, 1000], np.int32)), [0, 4])  # taken as 16-bit range
    np.testing.assert_array_equal(to_uint8_array(np.array([-5, 0, 70000], np.int32)), [0, 0, 255])
    np.testing.assert_array_equal(to_uint8_array(np.array([0, 65535], np.uint16)), [0, 255])
    np.testing.assert_array_equal(to_uint8_array(np.array([0.0, 1.0])), [0, 255])


# --------------------------------------------------------------------------- refusals


def test_refuses_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(p)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_refuses_text_renamed_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("these are my notes, not a picture\n" * 10)
    with pytest.raises(ImageError, match="not an image file"):
        load_image(p)


def test_refuses_truncated_png(tmp_path):
    p = tmp_path / "full.png"
    make_image(64, 64, "noise").save(p)
    data = p.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(cut)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_refuses_svg(tmp_path):
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    p = tmp_path / "drawing.svg"
    p.write_bytes(svg)
    with pytest.raises(ImageError, match="SVG"):
        load_image(p)
    disguised = tmp_path / "drawing.png"
    disguised.write_bytes(svg)
    with pytest.raises(ImageError, match="SVG"):
        load_image(disguised)
    with pytest.raises(ImageError, match="SVG"):
        load_image(svg)


def test_refuses_too_many_pixels(tmp_path):
    p = tmp_path / "big.png"
    make_image(30, 20).save(p)
    assert load_image(p, max_pixels=600).size == (30, 20)
    with pytest.raises(ImageError, match="limit is 599 pixels"):
        load_image(p, max_pixels=599)
    with pytest.raises(ImageError, match="pixels"):
        load_image(make_image(30, 20), max_pixels=100)
    with pytest.raises(ImageError, match="MB"):
        load_image(p, max_bytes=10)


def test_refuses_missing_and_none(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="no image"):
        load_image(None)


# --------------------------------------------------------------------------- viz

CLASSES = [
    {"name": "road", "color": [128, 64, 128]},
    {"name": "sky", "color": [70, 130, 180]},
    {"name": "car", "color": [0, 0, 142]},
]


def test_colorize():
    labels = np.array([[0, 1, 2], [3, -1, 255]])
    out = viz.colorize(labels, CLASSES, void_color=(9, 9, 9))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [128, 64, 128]
    assert out[0, 1].tolist() == [70, 130, 180]
    assert out[0, 2].tolist() == [0, 0, 142]
    for j in range(3):
        assert out[1, j].tolist() == [9, 9, 9]  # out of range (3, -1, 255) -> void
    plain = viz.colorize(np.array([[1]], np.uint8), [c["color"] for c in CLASSES])  # a list of colours works too
    assert plain[0, 0].tolist() == [70, 130, 180]
    assert viz.colorize(np.array([[7]]), CLASSES)[0, 0].tolist() == [0, 0, 0]  # default void colour


def test_overlay():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    mask = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(viz.overlay(image, mask, 0.0), image)
    np.testing.assert_array_equal(viz.overlay(image, mask, 1.0), mask)
    half = viz.overlay(image, mask, 0.5).astype(int)
    assert np.abs(half - (image.astype(int) + mask.astype(int)) / 2).max() <= 0.5 + 1e-9
    gray = image[..., 0]
    np.testing.assert_array_equal(viz.overlay(gray, mask, 0.0), np.repeat(gray[..., None], 3, -1))
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(image, mask[:4], 0.5)


def test_disagreement_hand_made():
    a = np.array([[0, 1, 2], [1, 1, 0]])
    b = np.array([[0, 1, 1], [2, 1, 0]])
    c = np.array([[0, 2, 1], [0, 1, 0]])
    n, agreement = viz.disagreement([a, b, c])
    np.testing.assert_array_equal(n, [[1, 2, 2], [3, 1, 1]])
    assert agreement == pytest.approx(3 / 6)
    n1, agree1 = viz.disagreement([a])
    assert (n1 == 1).all() and agree1 == 1.0
    with pytest.raises(ValueError):
        viz.disagreement([])
    img = viz.disagreement_image(np.zeros((2, 3, 3), np.uint8), n, 3)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert (img[0, 0] == img[1, 1]).all()  # agreeing pixels are plain grey
    assert not (img[1, 0] == img[0, 0]).all()


def test_one_hot():
    labels = np.array([[0, 2], [1, 2]])
    oh = viz.one_hot(labels, 3)
    assert oh.shape == (3, 2, 2) and oh.dtype == np.uint8
    np.testing.assert_array_equal(oh.argmax(0), labels)
    np.testing.assert_array_equal(oh.sum(0), 1)
    assert viz.one_hot(np.array([[5]]), 3).sum() == 0  # out-of-range labels have no channel


def test_heatmap():
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    hm = viz.heatmap(values)
    assert hm.shape == (3, 4, 3) and hm.dtype == np.uint8
    assert not (hm[0, 0] == hm[-1, -1]).all()
    np.testing.assert_array_equal(viz.heatmap(np.full((2, 2), 5.0))[0, 0], hm[-1, -1])  # clipped to vmax
    maps = viz.class_probability_maps(np.stack([values, 1 - values]), CLASSES[:2])
    assert len(maps) == 2 and maps[0][0].shape == (3, 4, 3)
    assert maps[0][1].startswith("road") and "0.50" in maps[0][1]


def test_error_map():
    pred = np.array([[0, 1], [2, 2]])
    target = np.array([[0, 2], [255, 2]])
    out = viz.error_map(pred, target, ignore_index=255)
    assert out[0, 1].tolist() == [235, 30, 30]
    assert out[1, 0].tolist() == [20, 20, 70]
    assert out[0, 0].tolist() == [0, 0, 0]


def test_legend_html_escapes_names():
    classes = CLASSES + [{"name": '<script>alert("x")</script> & co', "color": [1, 2, 3]}]
    html_text = viz.legend_html(classes)
    assert "<script>" not in html_text
    assert "&lt;script&gt;" in html_text and "&amp; co" in html_text
    assert "rgb(1,2,3)" in html_text and "road" in html_text
    only = viz.legend_html(classes, present=np.array([1]))
    assert "sky" in only and "road" not in only and "car" not in only


def test_colorize_and_palette_image_with_more_than_256_classes():
    """uint8 labels with a 300-colour table: the palette path cannot hold it, the general path answers."""
    colors = [[i % 256, (i * 7) % 256, (i * 13) % 256] for i in range(300)]
    labels = np.array([[0, 5], [255, 17]], np.uint8)
    expected = np.array(colors, np.uint8)[labels]
    np.testing.assert_array_equal(viz.colorize(labels, colors), expected)
    np.testing.assert_array_equal(np.asarray(viz.palette_image(labels, colors)), expected)


@pytest.mark.parametrize("n_maps", [1, 2, 3, 7, 16, 17])
def test_disagreement_fast_paths_match_the_definition(n_maps):
    """Counting distinct labels by pairwise comparison (<= 16 maps) or by sorting (more) gives
    the definition: the size of the set of labels at each pixel."""
    rng = np.random.default_rng(n_maps)
    maps = [rng.integers(0, 4, (9, 11)).astype(np.uint8) for _ in range(n_maps)]
    n, agreement = viz.disagreement(maps)
    expected = np.array([[len({int(m[y, x]) for m in maps}) for x in range(11)] for y in range(9)])
    np.testing.assert_array_equal(n, expected)
    assert agreement == pytest.approx((expected == 1).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        viz.disagreement([maps[0], maps[0][:3]])


def test_disagreement_image_and_error_map_match_their_formulas():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    n_models = 5
    n = rng.integers(1, n_models + 1, (20, 30))
    out = viz.disagreement_image(image, n, n_models).astype(int)
    background = 0.35 * image.mean(-1) + 90
    t = ((n - 1) / (n_models - 1))[..., None]
    color = (1 - t) * np.array([255, 210, 0]) + t * np.array([230, 20, 20])
    expected = np.where((n > 1)[..., None], 0.25 * background[..., None] + 0.75 * color, background[..., None])
    assert np.abs(out - expected.astype(np.uint8)).max() <= 1  # integer grey: at most one level of rounding
    assert viz.disagreement_image(image[..., 0], n, n_models).shape == (20, 30, 3)  # grey input

    pred, target = rng.integers(0, 3, (20, 30)), rng.integers(0, 3, (20, 30))
    target[::4] = 255
    base = viz.dimmed(image)
    np.testing.assert_array_equal(base, (image.astype(int).sum(-1) * 2) // 15)
    expected = np.where((pred != target)[..., None], [235, 30, 30], base[..., None])
    expected = np.where((target == 255)[..., None], [20, 20, 70], expected)
    np.testing.assert_array_equal(viz.error_map(pred, target, ignore_index=255, base=base), expected)
    np.testing.assert_array_equal(viz.error_map(pred, target, image, ignore_index=255), expected)
    with pytest.raises(ValueError, match="differ in shape"):
        viz.error_map(pred[:3], target)
    with pytest.raises(ValueError, match="base must be dimmed"):
        viz.error_map(pred, target, base=np.repeat(base[..., None], 3, axis=-1))
