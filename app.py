"""Segmentation Workbench: the Gradio app (also a Hugging Face Space entry point).

Handlers first (plain functions the tests call directly), then the layout, then
the events. ``demo`` is importable; ``python app.py`` serves it.
"""

from __future__ import annotations

if __name__ == "__main__":  # `python app.py` (a Space): restart with a caching allocator before torch loads
    from workbench.tools.allocator import reexec_with_allocator

    reexec_with_allocator()

import argparse
import contextlib
import html
import io
import os
import threading
import time
from pathlib import Path

try:  # Hugging Face ZeroGPU Spaces: `spaces` must be imported before torch; elsewhere it is absent
    import spaces
except ImportError:
    spaces = None

import gradio as gr
import numpy as np
import torch
from PIL import Image

import workbench
from workbench.lab import operators as lab
from workbench import viz
from workbench.evaluation import leaderboard as lb
from workbench.models.anatomy import count_flops, stage_shapes
from workbench.io.checkpoint import CheckpointError, atomic_write_bytes, read_manifest
from workbench.classes import CAMVID_CLASSES, IGNORE_INDEX, ISBI_CLASSES
from workbench.data.datasets import find_ground_truth
from workbench.io.images import ImageError, load_image
from workbench.evaluation.metrics import foreground_iou, pixel_error, rand_error, segmentation_metrics
from workbench.paths import bundled_path, checkpoints_dir, resolve_data_root
from workbench.inference.predictor import Predictor, resolve_device
from workbench.inference.zoo import Zoo

ARCHITECTURES = workbench.list_architectures()
PLUGIN_ERRORS = workbench.plugin_errors()
CLASSIC = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")


def default_selection() -> list[str]:
    """The Compare tab's preselection: the classic architectures that have trained checkpoints (at least two of
    them), else the six classic ones (then untrained, and marked so)."""
    from workbench.inference.zoo import discover_checkpoints

    trained = set(discover_checkpoints()[0])
    chosen = [a for a in CLASSIC if a in ARCHITECTURES and a in trained]
    if len(chosen) >= 2:
        return chosen
    return [a for a in CLASSIC if a in ARCHITECTURES and a != "fcn16s"]


DEFAULT_SELECTION = default_selection()
MAX_UPLOAD = os.environ.get("WORKBENCH_MAX_UPLOAD", "20mb")  # Gradio refuses larger uploads before they reach a handler
QUEUE_SIZE = int(os.environ.get("WORKBENCH_QUEUE_SIZE", "64"))  # waiting events beyond this get "Queue is full" at once
DISPLAY_MAX_SIDE = 1024  # results are shown (and kept per session) at most this large
STATE_TTL_S = 900  # a session's cached label maps live this long
MAX_SESSIONS = 128  # sessions whose state is kept; the oldest are dropped beyond this
# Compare's examples: their network results are kept after the first run (see cached_segment_all), and with
# WARM_EXAMPLES computed in the background at startup: on by default on a Space (SPACE_ID is set there), off
# locally where a quiet CPU matters more. (Gradio's own example cache cannot store these outputs: its lazy mode
# fails on gr.update values, its eager mode on reading back hidden images and the session state.)
WARM_EXAMPLES = os.environ.get("WORKBENCH_WARM_EXAMPLES", "1" if os.environ.get("SPACE_ID") else "0") == "1"


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each handler thread its own malloc arena; capping them keeps the resident memory of a
    many-threaded server from growing with fragmentation (measured with `workbench loadtest`)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


_limit_malloc_arenas()


def _atomic_image_cache() -> None:
    """Make Gradio's image-output cache write atomically.

    Gradio stores each output image under a hash of its bytes with a plain ``write_bytes``, so two requests that
    produce the same picture (two users segmenting the same example) rewrite one file while a browser may be
    downloading it: the download then ends early ("peer closed connection", seen in `workbench loadtest`).
    Here the bytes go to a temporary name and are renamed into place, and an existing copy is reused, the way
    Gradio already caches uploaded files (``save_file_to_cache``). PNGs are written with fast compression.
    """
    from gradio import processing_utils as pu

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


_atomic_image_cache()
_ZOO: Zoo | None = None
_ZOO_LOCK = threading.Lock()


def zoo() -> Zoo:
    """The app's model zoo, created on first use (models inside load lazily too)."""
    global _ZOO
    if _ZOO is None:
        with _ZOO_LOCK:
            if _ZOO is None:
                _ZOO = Zoo()
    return _ZOO


def example_images(n: int = 4) -> list[str]:
    """A few CamVid test images from the data root when the data is present (``workbench fetch-data camvid``),
    else one built-in synthetic image (shapes on a texture, made in code), so a fresh Space has an example."""
    folder = resolve_data_root() / "camvid" / "test"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return [synthetic_example()]
    step = max(1, len(files) // n)
    return [str(p) for p in files[::step][:n]]


def synthetic_example() -> str:
    """Write (once) and return a 360x480 synthetic example image."""
    import tempfile

    from workbench.data.datasets import synthetic_sample

    path = Path(tempfile.gettempdir()) / "segmentation-workbench" / "synthetic_example.png"
    if not path.is_file():
        image, _ = synthetic_sample(0, split="test", size=(360, 480), num_classes=5)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue(), durable=False)  # concurrent workers never see a half-written file
    return str(path)


def gpu_duration(image_path=None, archs=None, *args, **kwargs) -> int:
    """Seconds of ZeroGPU time to ask for: model loading plus a few seconds per selected model."""
    return int(min(120, 10 + 4 * len(archs or ())))


def on_gpu(fn):
    """``@spaces.GPU`` with :func:`gpu_duration` on a ZeroGPU Space; the function itself everywhere else."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=gpu_duration)(fn)


def raw_upload(component: gr.Image) -> gr.Image:
    """Make an image input hand the handler the uploaded file untouched.

    Gradio's own preprocessing opens every upload with PIL first, so a corrupt
    file fails inside Gradio with a bare "Error". With this, decoding happens in
    :func:`workbench.load_image`, which explains what is wrong with the file.
    (An instance override: subclassing a component makes Gradio write a .pyi file.)
    """
    default = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path is None:  # pasted data: URL
            try:
                return default(payload)
            except Exception:
                raise gr.Error("The pasted data is not an image that can be read.") from None
        return str(payload.path)

    component.preprocess = preprocess
    return component


# ----------------------------------------------------------------------------- handlers


def _badge(entry) -> str:
    if entry.trained:
        miou = entry.test_miou
        extra = f", CamVid test mIoU {100 * miou:.1f}" if miou is not None else ""
        return f'<span class="wb-badge wb-trained">trained{extra}</span>'
    return '<span class="wb-badge wb-untrained">untrained: random weights, no checkpoint yet</span>'


def _card_header(name: str, latency_ms: float | None = None, error: str | None = None, scores: dict | None = None) -> str:
    entry = zoo().entries[name]
    parts = [f"<b>{html.escape(entry.title)}</b> <code>{name}</code> {_badge(entry)}"]
    if error:
        parts.append(f'<div class="wb-error">Error: {html.escape(error)}</div>')
    else:
        params = zoo().num_parameters(name)
        cb = f" · checkerboard <b>{scores['checkerboard']:.2e}</b>" if scores and "checkerboard" in scores else ""
        parts.append(f'<div class="wb-stats">latency <b class="wb-latency">{latency_ms:.0f} ms</b> · {params / 1e6:.2f} M parameters{cb}</div>')
        if scores and "miou" in scores:
            parts.append(f'<div class="wb-stats">on this image: mIoU <b>{100 * scores["miou"]:.1f}</b> · pixel accuracy <b>{100 * scores["accuracy"]:.1f}</b> (classes present)</div>')
    return "".join(parts)


def read_upload(image_path: str | None):
    """Decode an uploaded file as RGB; any problem becomes a message for the user."""
    if not image_path:
        raise gr.Error("Upload an image first (or pick an example).")
    try:
        return load_image(image_path, "RGB")
    except ImageError as exc:
        raise gr.Error(str(exc)) from None


@contextlib.contextmanager
def _clock(timings: dict | None, key: str):
    """Add the block's wall time (ms) to ``timings[key]`` (for ``workbench bench --request``)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t) * 1e3


def _queue_on_gpu(archs: list[str], image, shared: dict) -> dict:
    """On CUDA: every selected model's forward pass issued back to back, no host sync in between
    (:func:`workbench.inference.predictor.predict_many`). Models whose predictor cannot be built are left to the
    per-model path, which reports their error."""
    from workbench.inference.predictor import predict_many

    ready = {}
    for name in archs:
        with contextlib.suppress(Exception):
            ready[name] = zoo().predictor(name)
    return dict(zip(ready, predict_many(list(ready.values()), image, shared)))


@on_gpu
def segment_all(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Run every selected architecture on one image.

    Returns:
        ``(image, results, ground_truth)``: the decoded RGB image,
        ``{arch: {"labels", "latency_ms", "checkerboard"[, "miou", "accuracy"]} or {"error"}}``
        (``checkerboard``: :func:`workbench.lab.operators.checkerboard_score` of the logits), and the
        CamVid label map when the image is a CamVid image under the data root (else None).

    Raises:
        gr.Error: no image, an image that cannot be read, or no architecture selected.
    """
    if not archs:
        raise gr.Error("Select at least one architecture.")
    with _clock(timings, "decode"):
        image = read_upload(image_path)
        arr = np.asarray(image)
    with _clock(timings, "ground truth lookup"):
        gt = find_ground_truth(image_path, arr)
    results: dict[str, dict] = {}
    pair_base = None  # ground truth * classes, once per request: + a model's labels = its (true, predicted) confusion bin
    shared: dict = {}  # one decode and normalisation of the image for every model that reads it the same way
    queued = _queue_on_gpu(archs, image, shared) if resolve_device(zoo().device).type == "cuda" else {}
    for i, name in enumerate(archs):
        if progress is not None:
            progress((i, len(archs)), desc=f"running {name}", unit="models")
        try:
            pred = queued[name] if name in queued else zoo().predict(name, image, shared=shared)
            if isinstance(pred, Exception):
                raise pred
            if timings is not None:
                for stage, ms in pred.timings.items():
                    key = "network" if stage == "forward" else f"model {stage}"
                    timings[key] = timings.get(key, 0.0) + ms
                timings.setdefault("per_model_forward", {})[name] = pred.timings["forward"]
            with _clock(timings, "checkerboard score"):
                res = {"labels": pred.labels, "latency_ms": pred.latency_ms, "checkerboard": lab.checkerboard_score(pred.logits_work, 2)}
            if gt is not None and gt.shape == pred.labels.shape and len(pred.classes) == len(CAMVID_CLASSES):  # the ground truth is CamVid's
                with _clock(timings, "scores vs ground truth"):
                    c = len(pred.classes)  # CamVid's 11: every (true, predicted) bin fits in a byte
                    if pair_base is None:  # void pixels start at bin c * c: their bins are cut off below
                        pair_base = np.where(gt < c, gt * np.uint8(c), np.uint8(c * c))
                    counts = np.bincount((pair_base + pred.labels).ravel(), minlength=256)[: c * c]
                    m = segmentation_metrics(torch.from_numpy(counts.reshape(c, c)))
                res.update(miou=m["miou"], accuracy=m["pixel_accuracy"])
            results[name] = res
        except Exception as exc:  # one failing model must not take the comparison down
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return arr, results, gt


_EXAMPLE_CACHE: dict[tuple[str, tuple[str, ...]], tuple] = {}
_EXAMPLE_DIGESTS: set[str] = set()
_EXAMPLE_LOCK = threading.Lock()


def _digest(path: str | None) -> str | None:
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read(64 << 20)).hexdigest()
    except (OSError, TypeError):
        return None


def register_examples(paths: list[str]) -> list[str]:
    """Mark these files as examples: their Compare results are cached (by content: Gradio serves copies).

    ``WORKBENCH_EXAMPLE_CACHE=0`` turns the cache off (benchmarks measure the work itself)."""
    if os.environ.get("WORKBENCH_EXAMPLE_CACHE", "1") != "0":
        _EXAMPLE_DIGESTS.update(d for d in map(_digest, paths) if d)
    return paths


def cached_segment_all(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None):
    """:func:`segment_all`, answered from memory for the example images (bounded: examples x selections)."""
    if timings is not None:  # profiling (workbench bench --request) measures the real work
        return segment_all(image_path, archs, timings, progress)
    digest = _digest(image_path) if _EXAMPLE_DIGESTS else None
    key = (digest, tuple(archs))
    if digest in _EXAMPLE_DIGESTS:
        with _EXAMPLE_LOCK:
            hit = _EXAMPLE_CACHE.get(key)
        if hit is not None:
            image, results, gt = hit
            return image, {k: dict(v) for k, v in results.items()}, gt  # callers replace entries; keep ours
    image, results, gt = segment_all(image_path, archs, timings, progress)
    if digest in _EXAMPLE_DIGESTS and len(_EXAMPLE_CACHE) < 64 and all("error" not in r for r in results.values()):
        with _EXAMPLE_LOCK:
            _EXAMPLE_CACHE[key] = (image, {k: dict(v) for k, v in results.items()}, gt)
    return image, results, gt


def warm_examples(paths: list[str], archs: list[str]) -> threading.Thread:
    """Compute the examples' results in a background thread (a Space's first visitor then waits for nothing)."""

    def run():
        for path in paths:
            with contextlib.suppress(Exception):
                cached_segment_all(path, archs)

    thread = threading.Thread(target=run, name="warm-examples", daemon=True)
    thread.start()
    return thread


def fast_png(image: Image.Image) -> Image.Image:
    """Ask Gradio's PNG save for zlib level 1 (Pillow reads ``encoderinfo`` as save options).

    On a label map this encodes several times faster than the default level, for a somewhat larger
    file (the request benchmark's "image encoding" stage)."""
    image.encoderinfo = {"compress_level": 1}
    return image


CARD_FIELDS = 6  # per architecture: column (visibility), header, mask, overlay, error map, legend


def render_cards(image: np.ndarray | None, results: dict, opacity: float, gt: np.ndarray | None = None) -> list:
    """Card contents for every architecture slot, in :data:`CARD_FIELDS` order."""
    out = []
    base = viz.dimmed(image) if gt is not None and image is not None else None  # shared by every error map
    for name in ARCHITECTURES:
        res = results.get(name)
        if res is None:
            out += [gr.update(visible=False), "", None, None, gr.update(value=None, visible=False), ""]
            continue
        if "error" in res:
            out += [gr.update(visible=True), _card_header(name, error=res["error"]), None, None, gr.update(value=None, visible=False), ""]
            continue
        classes = zoo().predictor(name).classes
        mask = fast_png(viz.palette_image(res["labels"], classes))  # a palette image PNG-encodes 5x faster than an RGB array
        over = viz.overlay(image, viz.colorize(res["labels"], classes), opacity)
        legend = viz.legend_html(classes, present=viz.present_labels(res["labels"], len(classes)))
        err = viz.error_map(res["labels"], gt, ignore_index=IGNORE_INDEX, base=base) if base is not None and "miou" in res else None
        out += [gr.update(visible=True), _card_header(name, res["latency_ms"], scores=res), mask, over, gr.update(value=err, visible=err is not None), legend]
    return out


def disagreement_outputs(image: np.ndarray, results: dict) -> tuple[np.ndarray | None, str]:
    maps = [r["labels"] for r in results.values() if "labels" in r]
    if len(maps) < 2:
        return None, "Select two or more architectures to see where they disagree."
    n_distinct, agreement = viz.disagreement(maps)
    img = viz.disagreement_image(image, n_distinct, len(maps))
    return img, f"**{len(maps)} models agree on {100 * agreement:.1f}% of pixels.** Yellow: two different answers; red: every model says something else."


def compare(image_path: str | None, archs: list[str], opacity: float, timings: dict | None = None, progress=gr.Progress()):
    """The Compare tab: segment with every selected architecture and lay out one card each.

    ``timings`` (optional dict) receives the milliseconds spent per stage (``workbench bench --request``);
    ``progress`` shows which model is running (Gradio fills it in; a no-op outside a request).
    """
    image, results, gt = cached_segment_all(image_path, archs, timings, progress)
    # What the browser shows (and the session keeps for restyling) is at most DISPLAY_MAX_SIDE pixels a side:
    # a 24-megapixel upload must not keep ~100 MB per session alive. Scores were computed at full size.
    with _clock(timings, "fit for display"):
        image = viz.fit_for_display(image, DISPLAY_MAX_SIDE)
        for res in results.values():
            if "labels" in res:
                res["labels"] = viz.fit_for_display(res["labels"], DISPLAY_MAX_SIDE, labels=True)
        gt = viz.fit_for_display(gt, DISPLAY_MAX_SIDE, labels=True) if gt is not None else None
    with _clock(timings, "disagreement map"):
        dis_img, dis_text = disagreement_outputs(image, results)
    with _clock(timings, "colorize, overlay, error maps, legends"):
        gt_img = fast_png(viz.palette_image(gt, zoo().predictor(archs[0]).classes)) if gt is not None else None
        cards = render_cards(image, results, opacity, gt)
    state = {"image": image, "results": results, "gt": gt}
    return [*cards, dis_img, dis_text, gr.update(value=gt_img, visible=gt_img is not None), state]


def restyle(state: dict | None, opacity: float):
    """Opacity changed: redraw the overlays from the cached label maps, without rerunning models."""
    if not state:
        return render_cards(None, {}, opacity)
    return render_cards(state["image"], state["results"], opacity, state.get("gt"))


def task_representation(image_path: str | None, arch: str, opacity: float):
    """The Task tab: per-class probability maps (the one-hot channels), argmax map and overlay."""
    image = read_upload(image_path)
    try:
        pred = zoo().predict(arch, image)
    except Exception as exc:
        raise gr.Error(f"{arch} failed: {type(exc).__name__}: {exc}") from None
    probs = pred.probs_work  # (C, h, w) at the working size
    gallery = viz.class_probability_maps(probs, pred.classes)
    mask = viz.colorize(pred.labels, pred.classes)
    over = viz.overlay(np.asarray(image), mask, opacity)
    note = (
        f"The network outputs **{probs.shape[0]} channels**, one per class: a score per pixel, turned into probabilities "
        "by a softmax across channels (bright = likely). Training compares them with the one-hot target, where exactly one "
        "channel is 1 at every pixel. The label map is the **argmax** across channels: each pixel takes the class whose "
        f"channel is brightest. {_badge(zoo().entries[arch])}"
    )
    return gallery, mask, over, viz.legend_html(pred.classes), note


_ANATOMY_CACHE: dict[tuple, tuple] = {}


def describe_architecture(arch: str, height: float, width: float):
    """The Architectures tab: explanation, stage-by-stage feature-map sizes, parameters and FLOPs."""
    info = workbench.get_architecture(arch)
    h, w = int(height or 360), int(width or 480)
    if min(h, w) < 32 or max(h, w) > 2048:
        raise gr.Error("Height and width must be between 32 and 2048 pixels.")
    key = (arch, h, w)
    if key not in _ANATOMY_CACHE:
        model = zoo().predictor(arch).model
        in_chans = zoo().predictor(arch).in_chans
        rows = [[s.name, s.channels, f"{s.height} x {s.width}", f"1/{s.reduction:g}"] for s in stage_shapes(model, (h, w), in_chans)]
        _ANATOMY_CACHE[key] = (rows, zoo().predictor(arch).num_parameters, count_flops(model, (h, w), in_chans))
    rows, params, flops = _ANATOMY_CACHE[key]
    text = (
        f"### {html.escape(info.title or arch)}\n*{html.escape(info.paper)}*\n\n{info.explanation}\n\n"
        f"**{params / 1e6:.2f} M parameters · {flops / 1e9:.1f} GFLOPs at {h}x{w}** "
        f"(default encoder: `{info.default_encoder}`, upsampling: `{info.default_upsample}`)"
    )
    return text, rows


def leaderboard_view():
    """The Leaderboard tab: test metrics from the shipped manifests, published anchors, two figures."""
    manifests = {name: e.manifest for name, e in zoo().entries.items() if e.trained}
    rows = lb.leaderboard_rows(manifests, "test")
    if rows:
        text = (
            f"**{len(rows)} checkpoints trained here** on CamVid train (val for model selection), evaluated on the 233 test "
            "images at 360x480, void excluded (`python -m workbench eval checkpoints/*.json --split test`). "
            "Rows marked *published* are the papers' numbers on the same split, for reference."
        )
    else:
        text = "No evaluated checkpoints are shipped yet: the table shows the published reference numbers only."
    return lb.table(rows, lb.PUBLISHED_CAMVID), lb.per_class_iou_figure(rows), lb.miou_latency_figure(rows, lb.PUBLISHED_CAMVID), text


_WEIGHTS_CACHE: dict[str, dict] = {}


def camvid_class_weights() -> dict:
    """Median-frequency weights computed from the CamVid training labels (or the committed copy without data)."""
    if "camvid" not in _WEIGHTS_CACHE:
        from workbench.data import weighting
        from workbench.data.datasets import DatasetError, build_dataset

        try:
            ds = build_dataset("camvid", "train")
            pixels, image_pixels = weighting.class_pixel_stats(ds.masks(), ds.num_classes, IGNORE_INDEX)
            data = {"classes": ds.class_names, "weights": [float(w) for w in weighting.median_frequency_weights(pixels, image_pixels)], "source": "computed now from the training labels"}
        except DatasetError:
            import json

            saved_path = bundled_path("benchmarks") / "camvid_class_weights.json"
            if not saved_path.is_file():
                raise gr.Error("CamVid is not under the data root and no saved weights were found.") from None
            saved = json.loads(saved_path.read_text())
            data = {"classes": saved["classes"], "weights": saved["weights"], "source": "saved by `workbench weights --json` (CamVid not found under the data root)"}
        data["segnet"] = list(weighting.SEGNET_CAMVID_WEIGHTS)
        _WEIGHTS_CACHE["camvid"] = data
    return _WEIGHTS_CACHE["camvid"]


def class_weights_view():
    d = camvid_class_weights()
    fig = lb.class_weights_figure(d["classes"], d["weights"], d["segnet"])
    rows = [[c, f"{w:.4f}", f"{r:.4f}"] for c, w, r in zip(d["classes"], d["weights"], d["segnet"])]
    text = (
        "**Median-frequency balancing** (Eigen & Fergus; used by FCN and SegNet): freq(c) = pixels of class c / pixels of the "
        "images that contain c, and w_c = median(freq) / freq(c). Rare classes (poles, pedestrians, cyclists) weigh up to "
        f"about 40x more than the road in the cross-entropy. Weights {d['source']}; the shipped CamVid models train with them."
    )
    return fig, rows, text


_ISBI: dict[str, Predictor] = {}


def isbi_predictors() -> dict[str, Predictor]:
    """The two shipped ISBI U-Nets, keyed "without" / "with" border weighting (lazily loaded)."""
    if not _ISBI:
        for path in sorted(checkpoints_dir().glob("*.json")):
            try:
                man = read_manifest(path)
            except CheckpointError:
                continue
            ds = man.get("dataset")
            if (ds.get("name") if isinstance(ds, dict) else ds) != "isbi":
                continue
            key = "with" if ((man.get("training") or {}).get("config") or {}).get("border_weights") else "without"
            _ISBI.setdefault(key, Predictor(path, "cpu", precision="fp32"))
    return _ISBI


def isbi_view(slice_index: float):
    """An ISBI held-out slice: image, label, the U-Net border weight map, and both U-Nets' predictions with errors."""
    from workbench.data.datasets import DatasetError, build_dataset
    from workbench.data.weighting import unet_border_weights

    idx = int(slice_index)
    try:
        ds = build_dataset("isbi", "test")
    except DatasetError as exc:
        raise gr.Error(str(exc)) from None
    names = [p.stem for p, _ in ds.files]
    if str(idx) not in names:
        raise gr.Error(f"slice {idx} is not one of the held-out slices {', '.join(names)}")
    sample = ds[names.index(str(idx))]
    image = sample["image"].numpy()[0]
    gt = sample["mask"].numpy()
    weights = unet_border_weights(gt)
    out = [image, viz.colorize(gt, ISBI_CLASSES), viz.heatmap(weights, 0.0, float(weights.max()), "magma")]
    lines = [f"Slice {idx} (held out: never trained or selected on). Border weight map: w(x) = w_c(x) + 10 exp(-(d1 + d2)^2 / (2 * 5^2)), max {weights.max():.1f}."]
    preds = isbi_predictors()
    for key in ("without", "with"):
        pred = preds.get(key)
        if pred is None:
            out += [None, None]
            lines.append(f"- U-Net {key} border weighting: no checkpoint shipped yet.")
            continue
        labels = pred.predict(image).labels.astype(np.int64)
        out += [viz.colorize(labels, ISBI_CLASSES), viz.error_map(labels, gt, image)]
        lines.append(
            f"- U-Net **{key}** border weighting: pixel error {100 * pixel_error(labels, gt):.2f}%, "
            f"cell IoU {100 * foreground_iou(labels, gt):.1f}%, Rand error {rand_error(labels, gt):.4f}"
        )
    return [*out, "\n".join(lines)]


# --- upsampling lab handlers

LAB_FACTORS = (2, 4, 8)
LAB_MAX_SIDE = 640  # larger uploads are shrunk first: the lab compares operators, not megapixels
LAB_TABLE_HEADERS = ["operator", "PSNR (dB)", "SSIM", "checkerboard score", "how it is set up"]
LAB_VARIANT_HEADERS = ["variant", "upsampling", "CamVid test mIoU", "checkerboard score (this image)", "latency (this image, ms)", "CPU latency 360x480 (ms)"]
_LAB_CONSTANT_CACHE: dict[int, tuple] = {}
_LAB_PREDICTORS: dict[str, Predictor] = {}


def _fmt_db(v: float) -> str:
    return "inf (identical)" if v == float("inf") else f"{v:.2f}"


def lab_operators(image_path: str | None, factor) -> tuple[list, list, str]:
    """Upsampling tab: the image reduced by ``factor`` and grown back with every operator, scored against the original."""
    image = read_upload(image_path)
    if max(image.size) > LAB_MAX_SIDE:
        image = image.copy()
        image.thumbnail((LAB_MAX_SIDE, LAB_MAX_SIDE))
    arr = np.asarray(image)
    f = int(factor or 2)
    if f not in LAB_FACTORS:
        raise gr.Error(f"Factor must be one of {', '.join(map(str, LAB_FACTORS))}.")
    rows = lab.compare_operators(arr, f)
    small = lab.reduce_image(arr, f)
    gallery = [(arr, f"original {arr.shape[1]}x{arr.shape[0]}"), (small, f"reduced 1/{f}: {small.shape[1]}x{small.shape[0]} block means")]
    gallery += [(r["image"], f"{r['title']} · PSNR {_fmt_db(r['psnr'])} dB · SSIM {r['ssim']:.3f} · checkerboard {r['checkerboard']:.3f}") for r in rows]
    table = [[r["title"], _fmt_db(r["psnr"]), f"{r['ssim']:.3f}", f"{r['checkerboard']:.4f}", r["setup"]] for r in rows]
    note = (
        f"**The image shrunk {f}x (mean of each {f}x{f} block; for max-unpooling the maximum, remembering where it was) and grown "
        f"back {f}x** by applying each 2x operator {int(np.log2(f))} time(s), as a decoder grows its map stage by stage. "
        "The learned operators are the workbench's own modules (`workbench/upsampling.py`) with one input and one output "
        "channel, applied to each colour channel separately: a 3-to-3 layer at initialisation would mix colours at random, "
        "and what we compare is the spatial structure each operator imposes. Their weights are set to show that structure "
        "(see the table): bilinear-initialised transposed convolutions as FCN and our U-Net start, equal taps to expose the "
        "uneven overlap of kernel 3 / stride 2, resize-conv with a tent kernel and pixel shuffle with ICNR. Bed-of-nails and "
        "max-unpooling leave most pixels empty: in a decoder the convolutions that follow fill them in.\n\n"
        f"PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian window) against the original; **checkerboard score**: the share of "
        f"the restored image's energy in a pattern repeating every {f} pixels (2-D FFT power at multiples of 1/{f} of the "
        "sampling frequency, mean removed; 0 = none, 1 = nothing else)."
    )
    return gallery, table, note


def lab_overlap(kernel, stride) -> tuple[object, str]:
    """Upsampling tab: how many taps land on each output pixel, transposed conv vs resize-conv vs pixel shuffle."""
    k, s = int(kernel or 3), int(stride or 2)
    if k < s:
        raise gr.Error(f"A transposed convolution with stride {s} needs a kernel of at least {s} (got {k}): smaller kernels leave gaps.")
    fig = lab.overlap_figure(k, s)
    one = lab.overlap_map_1d(k, s, 2 * s)[:s]
    pattern = ", ".join(map(str, one))
    if one.min() == one.max():
        verdict = f"**Even**: kernel {k} is divisible by stride {s}, so every output pixel gets {one[0]} taps per axis ({one[0] ** 2} in 2-D)."
    else:
        verdict = (
            f"**Uneven**: kernel {k} is not divisible by stride {s}, so output pixels get {pattern} taps per axis in turn "
            f"({one.min() ** 2} to {one.max() ** 2} in 2-D). Whatever the weights, some pixels sum more contributions than their "
            "neighbours: a checkerboard the network must learn to cancel (Odena, Dumoulin and Olah 2016)."
        )
    text = (
        f"{verdict}\n\nCounts come from running the workbench's own layers with all-ones weights on an all-ones input (TransposedUp "
        "with its padding; the interior, away from the borders). Resize-convolution (nearest, then a 3x3 convolution) and pixel "
        "shuffle (a 3x3 convolution per sub-pixel) give every output pixel the same 9 taps whatever the stride. Even overlap is "
        "necessary, not sufficient: with random weights every transposed convolution sums different taps at different phases "
        "(see the constant-input experiment below); ICNR makes the pixel-shuffle sub-pixel kernels equal so it starts as nearest."
    )
    return fig, text


def lab_constant_input(seed) -> tuple[list, list, str]:
    """Upsampling tab: the U-Net decoder with each method at random initialisation, fed a constant input."""
    sd = int(seed or 0)
    if sd not in _LAB_CONSTANT_CACHE:
        if len(_LAB_CONSTANT_CACHE) >= 8:
            _LAB_CONSTANT_CACHE.clear()
        results = lab.constant_input_gallery(sd)
        gallery = [(r["image"], f"{r['label']} · checkerboard {r['score']:.3f}") for r in results]
        table = [[r["label"], f"{r['score']:.4f}", f"{r['spread']:.2e}", "period-2 artifacts" if r["score"] > 0.1 else "no artifacts"] for r in results]
        _LAB_CONSTANT_CACHE[sd] = (gallery, table)
    gallery, table = _LAB_CONSTANT_CACHE[sd]
    text = (
        f"The U-Net decoder (resnet10t's feature pyramid, decoder widths 256/128/64/32/16) built with `torch.manual_seed({sd})`, "
        "in eval mode, fed encoder features that are constant in space (one random value per channel) and a constant image. "
        "Any pattern in its output comes from the decoder. Shown: the central 64x64 window, far from the zero-padding borders, of "
        "the output channel that varies most, stretched to its own range and enlarged 4x. Transposed convolutions with "
        "PyTorch's default initialisation, pixel shuffle without ICNR, bed-of-nails and max-unpooling (with a constant guide "
        "every maximum is a tie, so it places values like bed-of-nails) print a period-2 pattern before any training; "
        "interpolation, resize-conv, ICNR pixel shuffle and bilinear-initialised transposed convolutions stay flat."
    )
    return gallery, table, text


def lab_trained(image_path: str | None) -> tuple[list, list, str]:
    """Upsampling tab: the trained U-Net upsampling variants side by side on the image, with their numbers."""
    variants = lab.variant_checkpoints()
    if not variants:
        return [], [], (
            "No trained upsampling variants are shipped yet. `bash scripts/train_upsampling.sh` trains the eight U-Nets (one "
            "recipe, only the upsampling differs) and `bash scripts/train_upsampling.sh publish` exports them to "
            "`checkpoints/upsampling_unet_<method>` and evaluates them."
        )
    image = read_upload(image_path)
    gallery, table = [], []
    for method, path in variants.items():
        try:
            if method not in _LAB_PREDICTORS:
                _LAB_PREDICTORS[method] = Predictor(path, "auto")
            pred = _LAB_PREDICTORS[method].predict(image)
        except Exception as exc:  # one broken checkpoint must not hide the others
            table.append([path.stem, method, "-", "-", "-", f"error: {type(exc).__name__}: {exc}"])
            continue
        man = _LAB_PREDICTORS[method].manifest
        miou = ((man.get("metrics") or {}).get("test") or {}).get("miou")
        cpu = (man.get("cost") or {}).get("cpu_latency_ms")
        score = lab.checkerboard_score(pred.probs_work, 2)
        gallery.append((viz.colorize(pred.labels, pred.classes), f"{method} · test mIoU {'-' if miou is None else f'{100 * miou:.1f}'} · checkerboard {score:.2e}"))
        table.append([path.stem, method, "-" if miou is None else f"{100 * miou:.1f}", f"{score:.2e}", f"{pred.latency_ms:.0f}", "-" if cpu is None else f"{cpu:.0f}"])
    text = (
        f"**{len(variants)} U-Nets identical except for the upsampling method**, trained with one recipe on CamVid "
        "(`scripts/train_upsampling.sh`). Test mIoU and CPU latency at 360x480 come from their manifests (`workbench eval --split "
        "test --cost`); the checkerboard score is measured on this image's probability maps (stride 2)."
    )
    return gallery, table, text


def status_markdown() -> str:
    """Plugins that failed to import and checkpoints that were refused: the rest of the app works without them."""
    parts = []
    if PLUGIN_ERRORS:
        items = "\n".join(f"- `{Path(k).name}`: {html.escape(v)}" for k, v in PLUGIN_ERRORS.items())
        parts.append(f"**{len(PLUGIN_ERRORS)} plugin(s) failed to load** (the others work):\n{items}")
    refused = zoo().checkpoint_errors
    if refused:
        items = "\n".join(f"- `{name}`: {html.escape(err)}" for name, err in refused.items())
        parts.append(f"**{len(refused)} checkpoint(s) refused** (those architectures run untrained or not at all):\n{items}")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- layout

CSS = """
.wb-badge {font-size: 0.8em; padding: 1px 6px; border-radius: 8px; margin-left: 6px}
.wb-untrained {background: #fde68a; color: #7c2d12}
.wb-trained {background: #bbf7d0; color: #14532d}
.wb-error {color: #b91c1c; font-weight: 600}
.wb-stats {font-size: 0.9em; color: #555}
"""

with gr.Blocks(title="Segmentation Workbench", delete_cache=(1800, 3600)) as demo:  # uploads and results older than an hour are deleted
    gr.Markdown(
        "# Segmentation Workbench\nSee how semantic-segmentation architectures differ: run them side by side on your image. "
        "Models marked *untrained* have random weights until their trained checkpoint ships."
    )
    status_md = gr.Markdown()
    with gr.Tab("Compare"):
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                cmp_image = raw_upload(gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=300))
                cmp_archs = gr.CheckboxGroup(ARCHITECTURES, value=DEFAULT_SELECTION, label="Architectures", elem_classes=["wb-archs"])
                cmp_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                cmp_button = gr.Button("Segment", variant="primary")
                examples = register_examples(example_images())
            with gr.Column(scale=2, min_width=320):
                with gr.Row():
                    dis_image = gr.Image(label="Disagreement map", format="jpeg", interactive=False, height=300)
                    gt_image = gr.Image(label="Ground truth", format="png", interactive=False, height=300, visible=False)
                dis_text = gr.Markdown()
        cmp_state = gr.State(time_to_live=STATE_TTL_S)  # label maps for restyling, dropped after STATE_TTL_S
        card_outputs = []
        with gr.Row(equal_height=False):
            for name in ARCHITECTURES:
                with gr.Column(visible=False, min_width=300, elem_classes=["wb-card"]) as card:
                    header = gr.HTML()
                    mask = gr.Image(label="Mask", format="png", interactive=False, height=220)
                    over = gr.Image(label="Overlay", format="jpeg", interactive=False, height=220)  # photo-like: JPEG is 100x faster to encode than PNG
                    err = gr.Image(label="Errors (red: wrong, dark blue: void)", format="jpeg", interactive=False, height=220, visible=False)
                    legend = gr.HTML()
                card_outputs += [card, header, mask, over, err, legend]
        gr.Examples(  # a click fills the inputs and runs Compare, answered from memory after the first time
            [[path, DEFAULT_SELECTION, 0.5] for path in examples], inputs=[cmp_image, cmp_archs, cmp_opacity],
            outputs=[*card_outputs, dis_image, dis_text, gt_image, cmp_state], fn=compare, run_on_click=True,
            cache_examples=False, examples_per_page=8,
            label="CamVid test images (ground truth and error maps shown)" if "camvid" in examples[0] else "A synthetic example (fetch CamVid for real ones: workbench fetch-data camvid)",
        )

    with gr.Tab("Task representation"):
        gr.Markdown("How a segmentation network represents its answer: one probability map per class, then an argmax.")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                task_image = raw_upload(gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=300))
                task_arch = gr.Dropdown(ARCHITECTURES, value="unet" if "unet" in ARCHITECTURES else ARCHITECTURES[0], label="Architecture")
                task_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                task_button = gr.Button("Show representation", variant="primary")
                gr.Examples(examples, inputs=task_image, label="Examples")
            with gr.Column(scale=2, min_width=320):
                task_note = gr.Markdown()
                task_gallery = gr.Gallery(label="Per-class probability maps (one channel per class)", columns=4, height="auto")
                with gr.Row():
                    task_mask = gr.Image(label="Argmax label map", format="png", interactive=False)
                    task_over = gr.Image(label="Overlay", format="png", interactive=False)
                task_legend = gr.HTML()

    with gr.Tab("Architectures"):
        with gr.Row():
            arch_name = gr.Dropdown(ARCHITECTURES, value=ARCHITECTURES[0], label="Architecture")
            arch_h = gr.Number(360, label="Input height", precision=0)
            arch_w = gr.Number(480, label="Input width", precision=0)
            arch_button = gr.Button("Describe")
        arch_text = gr.Markdown()
        arch_table = gr.Dataframe(headers=["stage", "channels", "feature map (H x W)", "resolution"], label="Feature maps stage by stage", interactive=False)

    with gr.Tab("Upsampling"):
        gr.Markdown(
            "## Upsampling lab: every way to grow a feature map back to full resolution\nDecoders differ most in how they "
            "upsample, and transposed convolutions bring checkerboard artifacts. Shrink an image and grow it back with each "
            "operator; see why kernel 3 / stride 2 overlaps unevenly; feed a decoder a constant input; compare U-Nets trained "
            "with each method."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                up_image = raw_upload(gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=260))
                up_factor = gr.Radio(list(LAB_FACTORS), value=4, label="Factor")
                up_button = gr.Button("Reduce and restore", variant="primary")
                gr.Examples(examples, inputs=up_image, label="Examples")
            with gr.Column(scale=2, min_width=320):
                up_note = gr.Markdown()
                up_gallery = gr.Gallery(label="Reduced, then restored by each operator", columns=4, height="auto")
        up_table = gr.Dataframe(headers=LAB_TABLE_HEADERS, label="Restored vs original", interactive=False, wrap=True)
        gr.Markdown("### Overlap: how many kernel taps land on each output pixel")
        with gr.Row():
            ov_kernel = gr.Slider(1, 8, value=3, step=1, label="Transposed convolution kernel size")
            ov_stride = gr.Radio([2, 3, 4], value=2, label="Stride")
            ov_button = gr.Button("Show overlap")
        ov_plot = gr.Plot(label="Tap counts in 1-D (bars) and 2-D (maps)")
        ov_text = gr.Markdown()
        gr.Markdown("### Before any training: the U-Net decoder at random initialisation, fed a constant input")
        with gr.Row():
            ci_seed = gr.Number(0, label="Seed", precision=0)
            ci_button = gr.Button("Feed a constant input")
        ci_text = gr.Markdown()
        ci_gallery = gr.Gallery(label="Decoder output (central window, one channel, stretched)", columns=6, height="auto")
        ci_table = gr.Dataframe(headers=["upsampling", "checkerboard score", "largest spread in a channel", "verdict"], interactive=False)
        gr.Markdown("### Trained U-Net variants (identical except for the upsampling), on the image above")
        tr_button = gr.Button("Run the trained variants")
        tr_text = gr.Markdown()
        tr_gallery = gr.Gallery(label="Predictions", columns=4, height="auto")
        tr_table = gr.Dataframe(headers=LAB_VARIANT_HEADERS, interactive=False, wrap=True)

    with gr.Tab("Leaderboard"):
        lb_text = gr.Markdown()
        lb_table = gr.Dataframe(headers=lb.TABLE_HEADERS, label="CamVid test set (233 images, 360x480, 11 classes, void excluded)", interactive=False, wrap=True)
        lb_bars = gr.Plot(label="Per-class IoU")
        lb_scatter = gr.Plot(label="mIoU against CPU latency")
        lb_button = gr.Button("Refresh")

    with gr.Tab("Loss weighting"):
        gr.Markdown("## Class weighting for imbalance (Long et al.; SegNet)")
        with gr.Row():
            w_plot = gr.Plot(label="CamVid class weights")
            w_table = gr.Dataframe(headers=["class", "computed", "SegNet reference"], interactive=False)
        w_text = gr.Markdown()
        w_button = gr.Button("Compute class weights")
        gr.Markdown(
            "## U-Net border weighting (Ronneberger et al.)\nTouching cells are separated by membranes a few pixels thin. "
            "The border weight map makes the loss care most about the pixels between two cells; compare the U-Net trained "
            "with it and the one trained without it on the held-out slices 24-29."
        )
        with gr.Row():
            isbi_slice = gr.Slider(24, 29, value=24, step=1, label="Held-out ISBI slice")
            isbi_button = gr.Button("Show slice", variant="primary")
        with gr.Row():
            isbi_img = gr.Image(label="EM slice", format="png", interactive=False)
            isbi_gt = gr.Image(label="Label (membrane red)", format="png", interactive=False)
            isbi_w = gr.Image(label="Border weight map", format="png", interactive=False)
        with gr.Row():
            isbi_plain = gr.Image(label="U-Net without border weighting", format="png", interactive=False)
            isbi_plain_err = gr.Image(label="its errors", format="png", interactive=False)
            isbi_border = gr.Image(label="U-Net with border weighting", format="png", interactive=False)
            isbi_border_err = gr.Image(label="its errors", format="png", interactive=False)
        isbi_text = gr.Markdown()

    # ------------------------------------------------------------------------- events
    # Events that run networks share one slot ("models"): on a 2-core CPU, two at once only slow each other
    # down. Light events (tables, figures, restyling) get a few slots of their own so a page load is
    # never stuck behind a queue of segmentations. Beyond QUEUE_SIZE waiting events Gradio answers
    # "Queue is full" at once instead of letting requests pile up.
    heavy = dict(concurrency_limit=1, concurrency_id="models")
    light = dict(concurrency_limit=4, concurrency_id="light")
    COMPARE_OUTPUTS = [*card_outputs, dis_image, dis_text, gt_image, cmp_state]
    cmp_button.click(compare, [cmp_image, cmp_archs, cmp_opacity], COMPARE_OUTPUTS, api_name="compare", **heavy)
    cmp_opacity.release(restyle, [cmp_state, cmp_opacity], card_outputs, api_name=False, **light)
    task_button.click(task_representation, [task_image, task_arch, task_opacity], [task_gallery, task_mask, task_over, task_legend, task_note], api_name="task_representation", **heavy)
    arch_button.click(describe_architecture, [arch_name, arch_h, arch_w], [arch_text, arch_table], api_name="describe_architecture", **heavy)
    demo.load(describe_architecture, [arch_name, arch_h, arch_w], [arch_text, arch_table], api_name=False, **heavy)
    demo.load(status_markdown, None, status_md, api_name=False, **light)
    lb_outputs = [lb_table, lb_bars, lb_scatter, lb_text]
    lb_button.click(leaderboard_view, None, lb_outputs, api_name="leaderboard", **light)
    demo.load(leaderboard_view, None, lb_outputs, api_name=False, **light)
    w_button.click(class_weights_view, None, [w_plot, w_table, w_text], api_name="class_weights", **light)
    isbi_button.click(isbi_view, isbi_slice, [isbi_img, isbi_gt, isbi_w, isbi_plain, isbi_plain_err, isbi_border, isbi_border_err, isbi_text], api_name="isbi", **heavy)
    up_button.click(lab_operators, [up_image, up_factor], [up_gallery, up_table, up_note], api_name="upsampling_operators", **heavy)
    ov_button.click(lab_overlap, [ov_kernel, ov_stride], [ov_plot, ov_text], api_name="upsampling_overlap", **light)
    demo.load(lab_overlap, [ov_kernel, ov_stride], [ov_plot, ov_text], api_name=False, **light)
    ci_button.click(lab_constant_input, ci_seed, [ci_gallery, ci_table, ci_text], api_name="upsampling_constant_input", **heavy)
    tr_button.click(lab_trained, up_image, [tr_gallery, tr_table, tr_text], api_name="upsampling_trained", **heavy)

demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
if WARM_EXAMPLES and spaces is None:  # on ZeroGPU the GPU exists only inside requests
    warm_examples(examples, DEFAULT_SELECTION)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve the Segmentation Workbench app")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = p.parse_args(argv)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, css=CSS, state_session_capacity=MAX_SESSIONS)


if __name__ == "__main__":
    main()
