"""Whatever file a stranger uploads: a result in the displayed orientation at the original size, or a clear message.

Every kind of input goes through the app's Compare handler (RGB models) and
through a grayscale Predictor (1-channel model), the two ways users reach the
models.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import workbench
from workbench.app import common, compare

ROOT = Path(__file__).resolve().parents[1]


def _street(w=160, h=120, mode="RGB"):
    rng = np.random.default_rng(0)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 3] = [135, 170, 220]
    arr[h // 3 :] = [90, 90, 95]
    arr[:, : w // 4] = [200, 40, 40]  # a red left edge: tells orientation apart
    arr = np.clip(arr + rng.integers(-8, 8, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def decompression_bomb(path: Path, side: int = 30000) -> Path:
    """A real 30000 x 30000 1-bit PNG (900 M pixels) that compresses to about a hundred KB."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    chunks = [comp.compress(row) for _ in range(side)]
    data = b"".join(chunks) + comp.flush()
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def make_valid(kind: str, d: Path) -> tuple[Path, tuple[int, int]]:
    """(file, displayed (width, height))."""
    base = _street()
    if kind == "rgb_png":
        return _save(base, d / "a.png"), base.size
    if kind == "rgba_png":
        return _save(base.convert("RGBA"), d / "a.png"), base.size
    if kind == "palette":
        return _save(base.convert("P"), d / "a.png"), base.size
    if kind == "palette_transparency":
        p = base.convert("P")
        return _save(p, d / "a.png", transparency=0), base.size
    if kind == "one_bit":
        return _save(base.convert("1"), d / "a.png"), base.size
    if kind == "grey_png":
        return _save(base.convert("L"), d / "a.png"), base.size
    if kind == "png16":
        arr = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        return _save(Image.fromarray(arr), d / "a.png"), base.size
    if kind == "float_tiff":
        arr = np.asarray(base.convert("L")).astype(np.float32) / 255
        return _save(Image.fromarray(arr, mode="F"), d / "a.tif"), base.size
    if kind == "cmyk_jpeg":
        return _save(base.convert("CMYK"), d / "a.jpg", quality=95), base.size
    if kind == "exif_rotated_jpeg":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        _save(base, d / "a.jpg", exif=exif, quality=95)
        return d / "a.jpg", (base.size[1], base.size[0])
    if kind == "animated_gif":
        frames = [base, base.transpose(Image.FLIP_LEFT_RIGHT)]
        frames[0].save(d / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        return d / "a.gif", base.size
    if kind == "webp":
        return _save(base, d / "a.webp", quality=90), base.size
    if kind == "one_by_one":
        return _save(Image.new("RGB", (1, 1), (10, 200, 10)), d / "a.png"), (1, 1)
    if kind == "thin_4x4000":
        return _save(Image.new("RGB", (4, 4000), (10, 200, 10)), d / "a.png"), (4, 4000)
    raise AssertionError(kind)


VALID = ["rgb_png", "rgba_png", "palette", "palette_transparency", "one_bit", "grey_png", "png16", "float_tiff", "cmyk_jpeg", "exif_rotated_jpeg", "animated_gif", "webp", "one_by_one", "thin_4x4000"]


@pytest.mark.parametrize("kind", VALID)
def test_valid_inputs_segment_at_the_displayed_size(kind, tmp_path):
    path, (w, h) = make_valid(kind, tmp_path)
    out = compare.compare(str(path), ["fcn8s"], 0.5)
    labels = out.state["results"]["fcn8s"]["labels"]
    scale = min(1.0, compare.DISPLAY_MAX_SIDE / max(w, h))  # what the browser gets is at most DISPLAY_MAX_SIDE a side
    assert labels.shape == (max(1, round(h * scale)), max(1, round(w * scale))), (kind, labels.shape)
    pred = workbench.Predictor(common.zoo().predictor("fcn8s").model, "cpu").predict(str(path))
    assert pred.labels.shape == (h, w)  # the Python API answers at the original size


@pytest.mark.parametrize("kind", ["rgb_png", "cmyk_jpeg", "png16", "exif_rotated_jpeg", "rgba_png"])
def test_grayscale_model_takes_any_input(kind, tmp_path):
    path, (w, h) = make_valid(kind, tmp_path)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = workbench.create_model("naive", num_classes=2, in_chans=1, width=4, depth=2)
    pred = workbench.Predictor(model, "cpu", precision="fp32").predict(str(path))
    assert pred.labels.shape == (h, w)
    assert pred.image.mode == "L"


def test_exif_rotation_gives_labels_in_displayed_orientation(tmp_path):
    """The red band is on the stored image's left; displayed (rotated 90 cw) it is on top."""
    path, (w, h) = make_valid("exif_rotated_jpeg", tmp_path)
    img = workbench.load_image(str(path))
    arr = np.asarray(img)
    assert arr.shape == (h, w, 3)
    assert arr[: h // 8, :, 0].mean() > 150 and arr[-h // 8 :, :, 0].mean() < 150


def make_invalid(kind: str, d: Path) -> Path:
    if kind == "empty":
        (d / "e.png").write_bytes(b"")
        return d / "e.png"
    if kind == "text_as_png":
        (d / "t.png").write_text("hello, I am text")
        return d / "t.png"
    if kind == "text_as_jpg":
        (d / "t.jpg").write_text("hello, I am text")
        return d / "t.jpg"
    if kind in ("truncated_png", "truncated_jpeg"):
        buf = io.BytesIO()
        _street(400, 300).save(buf, "PNG" if kind == "truncated_png" else "JPEG")
        p = d / ("x.png" if kind == "truncated_png" else "x.jpg")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        return p
    if kind == "svg":
        (d / "s.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
        return d / "s.svg"
    if kind == "svg_renamed_png":
        (d / "s.png").write_text('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
        return d / "s.png"
    if kind == "bomb":
        return decompression_bomb(d / "bomb.png")
    raise AssertionError(kind)


INVALID = {
    "empty": "empty",
    "text_as_png": "not an image",
    "text_as_jpg": "not an image",
    "truncated_png": "corrupt or truncated",
    "truncated_jpeg": "corrupt or truncated",
    "svg": "SVG",
    "svg_renamed_png": "SVG",
    "bomb": "pixels",
}


@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_inputs_get_a_clear_message(kind, tmp_path):
    path = make_invalid(kind, tmp_path)
    if kind == "bomb":
        assert path.stat().st_size < 500_000  # a few hundred KB that would decode to 900 M pixels
    with pytest.raises(gr.Error) as err:
        compare.compare(str(path), ["fcn8s"], 0.5)
    assert INVALID[kind] in err.value.message, err.value.message


def test_the_bomb_is_refused_before_decoding(tmp_path):
    """Refusal comes from the header: memory stays flat (measured in a fresh process)."""
    bomb = decompression_bomb(tmp_path / "bomb.png")
    code = (
        "import resource, sys; sys.path.insert(0, %r)\n"
        "from workbench.io.images import load_image, ImageError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_image(%r)\nexcept ImageError as e:\n    print('refused', e)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    ) % (str(ROOT), str(bomb))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused" in res.stdout, res.stdout + res.stderr
    grew_kb = int(res.stdout.split("grew_kb")[1])
    assert grew_kb < 50_000  # far below the 112 MB (1-bit) or 900 MB (8-bit) a decode would need


@pytest.mark.slow
def test_a_6000x4000_photo_is_segmented_at_full_size_with_bounded_memory(tmp_path):
    """Resized to the working size for the network, labels back at 6000x4000; peak memory measured in a fresh process."""
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (4000, 6000, 3), dtype=np.uint8)).save(big, quality=80)
    code = (
        "import resource, sys, torch; sys.path.insert(0, %r)\n"
        "import workbench\n"
        "torch.manual_seed(0)\n"
        "model = workbench.create_model('fcn8s', num_classes=11)\n"
        "pred = workbench.Predictor(model, 'cpu', max_side=1024)\n"
        "pred.warmup()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = pred.predict(%r)\n"
        "print('shape', out.labels.shape, 'work', out.probs_work.shape)\n"
        "print('peak_growth_mb', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    ) % (str(ROOT), str(big))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "shape (4000, 6000)" in res.stdout, res.stdout + res.stderr
    assert "work (11, 683, 1024)" in res.stdout
    growth = float(res.stdout.split("peak_growth_mb")[1])
    # decoded RGB is 72 MB and the label map 24 MB; full-size float logits would be 1 GB
    assert growth < 500, growth
