"""Process-wide settings for serving: a capped number of malloc arenas, an atomic Gradio image cache, and a
fast path for ``gr.skip()`` in Gradio's output processing.

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

__all__ = ["install_atomic_image_cache", "install_fast_skip", "limit_malloc_arenas"]


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


def _is_skip(value) -> bool:
    """``gr.skip()``: an update that changes nothing (no property, no value)."""
    return type(value) is dict and len(value) == 1 and value.get("__type__") == "update"


def install_fast_skip() -> None:
    """Let Gradio pass ``gr.skip()`` outputs through without rebuilding their component (idempotent).

    For every update dict an event returns, Gradio 6 rebuilds the output's component from its constructor
    arguments and regenerates its config (a pydantic JSON schema), about 2 ms each, even for ``gr.skip()``, which
    changes nothing and reaches the page as ``{"__type__": "update"}`` whatever is done. Each step of a Compare
    run skips a dozen card columns whose visibility stays as it is, so this cost added up to about a third of
    the served request's time on a 2-core CPU. Here skips are set aside before Gradio's output processing and
    put back, as what Gradio's ``postprocess_update_dict`` makes of them, after it; every other output is processed by Gradio as
    before (``tests/test_app.py`` checks that the page receives the same data either way).
    """
    from gradio import blocks, components  # gradio's internals, touched only when the app is built

    original = blocks.Blocks.postprocess_data
    if getattr(original, "workbench_fast_skip", False):
        return
    if not all(hasattr(blocks, f) for f in ("convert_component_dict_to_list", "postprocess_update_dict")) or not hasattr(components._Keywords, "FINISHED_ITERATING"):
        return  # a Gradio without these internals: leave it alone

    async def postprocess_data(self, block_fn, predictions, state):
        outputs = list(block_fn.outputs)
        if len(outputs) > 1 and isinstance(predictions, dict) and predictions and not _is_skip(predictions):
            predictions = blocks.convert_component_dict_to_list(outputs, predictions)
        skipped = []
        if len(outputs) > 1 and isinstance(predictions, (list, tuple)) and len(predictions) == len(outputs):
            predictions = list(predictions)
            for i, (block, value) in enumerate(zip(outputs, predictions)):
                if not block.stateful and _is_skip(value):
                    predictions[i] = components._Keywords.FINISHED_ITERATING  # Gradio's own "nothing here": no work
                    skipped.append(i)
        out = await original(self, block_fn, predictions, state)
        for i in skipped:  # what Gradio sends for a skip (its own function, without rebuilding the component)
            out[i] = blocks.postprocess_update_dict(outputs[i], {"__type__": "update"}, postprocess=False)
        return out

    postprocess_data.workbench_fast_skip = True
    postprocess_data.workbench_original = original
    blocks.Blocks.postprocess_data = postprocess_data
