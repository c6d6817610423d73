"""Process-wide settings for serving: a capped number of malloc arenas and an atomic Gradio image cache.

Both change global state, so nothing here runs at import: :func:`~workbench.app.build_app` and
:func:`~workbench.app.launch` call them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
from pathlib import Path

from workbench.io.checkpoint import atomic_write_bytes

__all__ = ["install_atomic_image_cache", "limit_malloc_arenas"]


def limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each handler thread its own malloc arena; capping them keeps the resident memory of a
    many-threaded server from growing with fragmentation (measured with `workbench loadtest`)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def install_atomic_image_cache() -> None:
    """Make Gradio's image-output cache write atomically (idempotent).

    Gradio stores each output image under a hash of its bytes with a plain ``write_bytes``, so two requests that
    produce the same picture (two users segmenting the same example) rewrite one file while a browser may be
    downloading it: the download then ends early ("peer closed connection", seen in `workbench loadtest`).
    Here the bytes go to a temporary name and are renamed into place, and an existing copy is reused, the way
    Gradio already caches uploaded files (``save_file_to_cache``). PNGs are written with fast compression.
    """
    from gradio import processing_utils as pu  # gradio's internals, touched only when the app is built

    if getattr(pu.save_pil_to_cache, "workbench_atomic", False):
        return
    if not all(hasattr(pu, f) for f in ("save_pil_to_cache", "encode_pil_to_bytes", "hash_bytes")):
        return  # a Gradio without these internals: leave it alone

    def encode(img, format: str) -> bytes:
        if format.lower() != "png" or not hasattr(pu, "get_pil_metadata"):
            return pu.encode_pil_to_bytes(img, format)
        with io.BytesIO() as buf:  # zlib level 1: 3x faster than PIL's default 6; a label map's PNG grows from 6.6 to 9.4 KB
            img.save(buf, "png", pnginfo=pu.get_pil_metadata(img), compress_level=1)
            return buf.getvalue()

    def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = encode(img, format)
        folder = Path(cache_dir) / pu.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)  # delete_cache ages files by ctime: a reused copy is young again
            return str(path)
        atomic_write_bytes(path, data, durable=False)  # a cache: atomic, no fsync on the request path
        return str(path)

    save_pil_to_cache.workbench_atomic = True
    pu.save_pil_to_cache = save_pil_to_cache
