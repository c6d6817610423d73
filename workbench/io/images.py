"""Image loading that never surprises: any source, any mode, the orientation the user sees.

``load_image`` accepts a path, bytes, a PIL image or a numpy array and returns
an 8-bit PIL image in the requested mode (``"RGB"`` or ``"L"``), after EXIF
orientation, with the first frame of animations, transparency composited on
white, 16-bit and float data rescaled to 8 bits. Everything it refuses raises
:class:`ImageError` with a message meant for the person who uploaded the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "load_image", "to_uint8_array", "MAX_PIXELS", "MAX_FILE_BYTES"]

MAX_PIXELS = 50_000_000  # pixel-count limit checked from the header, before decoding
MAX_FILE_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """The input cannot be used as an image; the message explains why and what to do."""


def _from_array(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"array of shape {a.shape} is not an image (expected H x W, H x W x 3 or H x W x 4)")
    return Image.fromarray(to_uint8_array(a))


def to_uint8_array(a: np.ndarray) -> np.ndarray:
    """Rescale bool, integer or float image data to uint8 (floats in [0, 1] are taken as such, uint16 as 0..65535)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:
            return np.round(a * 255).astype(np.uint8)
        return np.round((a - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # 16-bit data: full scale is 65535 whatever the content
        return np.round(a.astype(np.float64) / 65535 * 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        hi = int(a.max(initial=0))
        if a.min(initial=0) >= 0 and hi <= 255:
            return a.astype(np.uint8)
        top = 65535 if a.min(initial=0) >= 0 and hi <= 65535 else max(hi, 1)
        return np.round(np.clip(a, 0, None).astype(np.float64) / top * 255).astype(np.uint8)
    raise ImageError(f"unsupported array dtype {a.dtype}")


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit L, RGB or RGBA."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(to_uint8_array(np.asarray(im)))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "L"):
        return im.convert("L")
    if im.mode == "LA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    return im


def load_image(src, mode: str = "RGB", *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """Load ``src`` as an 8-bit PIL image in ``mode`` (``"RGB"`` or ``"L"``), in display orientation.

    Args:
        src: path, bytes, file-like object, ``PIL.Image`` or numpy array.
        mode: ``"RGB"`` or ``"L"``.
        max_pixels: refuse images with more pixels than this (checked before decoding).
        max_bytes: refuse files larger than this.

    Raises:
        ImageError: the input is empty, not an image, truncated, too large, or of an unsupported kind.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if src is None:
        raise ImageError("no image given: upload an image first")
    if isinstance(src, np.ndarray):
        im = _from_array(src)
    elif isinstance(src, Image.Image):
        im = src
    else:
        name = "image"
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            name = path.name
            if not path.is_file():
                raise ImageError(f"{name}: file not found")
            size = path.stat().st_size
            if size == 0:
                raise ImageError(f"{name} is empty (0 bytes)")
            if size > max_bytes:
                raise ImageError(f"{name} is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            if path.suffix.lower() == ".svg":
                raise ImageError(f"{name}: SVG is a vector format and is not supported; export it as PNG or JPEG")
            fp = open(path, "rb")
        elif isinstance(src, (bytes, bytearray)):
            if len(src) == 0:
                raise ImageError("the uploaded file is empty (0 bytes)")
            if len(src) > max_bytes:
                raise ImageError(f"the image is {len(src) / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB")
            fp = io.BytesIO(src)
        elif hasattr(src, "read"):
            fp = src
        else:
            raise ImageError(f"cannot read an image from a {type(src).__name__}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                try:
                    opened = Image.open(fp)
                except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                    raise ImageError(f"{name} has too many pixels (a decompression bomb?); the limit is {max_pixels:,} pixels") from None
                except UnidentifiedImageError:
                    head = b""
                    try:
                        fp.seek(0)
                        head = fp.read(256)
                    except Exception:
                        pass
                    if b"<svg" in head.lower() or b"<?xml" in head.lower():
                        raise ImageError(f"{name}: SVG is a vector format and is not supported; export it as PNG or JPEG") from None
                    raise ImageError(f"{name} is not an image file PIL can read (PNG, JPEG, WebP, GIF, TIFF, BMP, ...)") from None
                w, h = opened.size
                if w * h > max_pixels:
                    raise ImageError(f"{name} is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels")
                if w < 1 or h < 1:
                    raise ImageError(f"{name} has no pixels ({w}x{h})")
                if getattr(opened, "is_animated", False):
                    opened.seek(0)  # first frame
                opened.load()
                im = opened
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"{name} is corrupt or truncated and cannot be decoded ({exc})") from None
        finally:
            if isinstance(src, (str, os.PathLike)):
                fp.close()
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels")
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:
        pass  # a broken EXIF block is not worth refusing the image for
    im = _normalise_mode(im)
    return im.convert(mode) if im.mode != mode else im
