"""Running the selected models on one image, and remembering the answers for the example images.

:func:`segment_all` is the one place the app runs several networks (on a ZeroGPU Space it is the
function that asks for the GPU); :func:`cached_segment_all` answers the examples from memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading

import gradio as gr
import numpy as np
import torch

from workbench import lab
from workbench.classes import CAMVID_CLASSES
from workbench.data.datasets import find_ground_truth
from workbench.evaluation.metrics import segmentation_metrics
from workbench.inference import predictor as _predictor
from workbench.inference.predictor import resolve_device

from .common import clock, read_upload, zoo
from .gpu import on_gpu

__all__ = ["cached_segment_all", "register_examples", "segment_all", "warm_examples"]

MAX_CACHED = 64  # example results kept: examples x selections


def _queue_on_gpu(archs: list[str], image, shared: dict) -> dict:
    """On CUDA: every selected model's forward pass issued back to back, no host sync in between
    (:func:`workbench.inference.predictor.predict_many`). Models whose predictor cannot be built are left to the
    per-model path, which reports their error."""
    ready = {}
    for name in archs:
        with contextlib.suppress(Exception):
            ready[name] = zoo().predictor(name)
    return dict(zip(ready, _predictor.predict_many(list(ready.values()), image, shared)))


@on_gpu
def segment_all(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """Run every selected architecture on one image.

    Returns:
        ``(image, results, ground_truth)``: the decoded RGB image,
        ``{arch: {"labels", "latency_ms", "checkerboard"[, "miou", "accuracy"]} or {"error"}}``
        (``checkerboard``: :func:`workbench.lab.checkerboard_score` of the logits), and the
        CamVid label map when the image is a CamVid image under the data root (else None).

    Raises:
        gr.Error: no image, an image that cannot be read, or no architecture selected.
    """
    if not archs:
        raise gr.Error("Select at least one architecture.")
    with clock(timings, "decode"):
        image = read_upload(image_path)
        arr = np.asarray(image)
    with clock(timings, "ground truth lookup"):
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
            with clock(timings, "checkerboard score"):
                res = {"labels": pred.labels, "latency_ms": pred.latency_ms, "checkerboard": lab.checkerboard_score(pred.logits_work, 2)}
            if gt is not None and gt.shape == pred.labels.shape and len(pred.classes) == len(CAMVID_CLASSES):  # the ground truth is CamVid's
                with clock(timings, "scores vs ground truth"):
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


# --- the examples' results, kept after the first run (and, on a Space, computed at start-up: server.launch).
# Gradio's own example cache cannot store these outputs: its lazy mode fails on gr.update values, its eager
# mode on reading back hidden images and the session state.

_EXAMPLE_CACHE: dict[tuple[str, tuple[str, ...]], tuple] = {}
_EXAMPLE_DIGESTS: set[str] = set()
_EXAMPLE_LOCK = threading.Lock()


def _digest(path: str | None) -> str | None:
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
    if digest in _EXAMPLE_DIGESTS and len(_EXAMPLE_CACHE) < MAX_CACHED and all("error" not in r for r in results.values()):
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
