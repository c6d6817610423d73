"""Running the selected models on one image, and remembering the answers for the example images.

:func:`segment_stream` is the one place the app runs several networks, yielding each model's result as it is
ready (on a ZeroGPU Space it is the function that asks for the GPU); :func:`cached_segment_stream` answers the
examples from memory; the ``*_all`` forms run them to the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator

import gradio as gr
import numpy as np
import torch

from workbench import lab
from workbench.classes import CAMVID_CLASSES
from workbench.data.datasets import find_ground_truth
from workbench.evaluation.metrics import segmentation_metrics
from workbench.inference import predictor as _predictor
from workbench.inference.predictor import resolve_device

from . import knowledge
from .common import clock, read_upload, record_engine, zoo
from .gpu import on_gpu

__all__ = ["cached_segment_all", "cached_segment_stream", "register_examples", "run_order", "segment_all", "segment_stream", "warm_examples"]

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


# The fastest each architecture has been in this process (a Compare run's latency): the order of the next run.
_LATENCY_MS: dict[str, float] = {}


def run_order(archs: list[str]) -> list[str]:
    """The order Compare runs ``archs`` in: the fastest expected first, so the first card comes soonest (and, by
    the shortest-job-first rule, the average card too). Expected: the best latency measured in this process,
    else the manifest's CPU latency (``workbench eval --cost``, measured elsewhere: scaled by the median ratio
    of this process's figures to the manifests' where both exist). Models with neither (untrained ones) follow,
    in selection order. The cards keep their places whatever the order."""
    entries = zoo().entries

    def manifest_ms(name: str) -> float | None:
        entry = entries.get(name)
        return entry.manifest.cpu_latency_ms if entry is not None and entry.trained else None

    ratios = sorted(ms / m for name, ms in _LATENCY_MS.items() if (m := manifest_ms(name)))
    scale = ratios[len(ratios) // 2] if ratios else 1.0
    expected = {name: _LATENCY_MS.get(name, (manifest_ms(name) or 0.0) * scale or None) for name in archs}
    return sorted(archs, key=lambda n: (expected[n] is None, expected[n] or 0.0))


def _engine_of(name: str, pred) -> dict:
    """Which engine and precision ran a prediction (today's Predictor: torch at its precision)."""
    predictor = zoo().predictor(name)
    engine = getattr(pred, "engine", None) or getattr(predictor, "engine", "torch")
    precision = getattr(pred, "engine_precision", None) or getattr(predictor, "engine_precision", None) or predictor.precision
    reason = getattr(predictor, "engine_reason", "") or ""
    record_engine(name, engine, precision, reason)
    return {"engine": engine, "precision": precision, "engine_reason": reason}


CONFIDENCE_KINDS = ("max", "entropy")  # knowledge.confidence_view's kinds (viz.confidence_map)


def _knowledge(name: str, pred, confidence: str | None, timings) -> dict:
    """What the Compare tab shows besides the mask, computed while the prediction (and its probabilities) is at
    hand: the label map as an index PNG, the checkpoint's own out-of-distribution verdict (None when its
    weights are not calibrated) and, when asked (``confidence``: one of :data:`CONFIDENCE_KINDS`), the confidence
    view (about 15-20 ms a model, so only on request)."""
    with clock(timings, "label PNG, OOD score"):
        out = {"label_png": knowledge.label_png(pred), "ood": knowledge.ood_verdict([(getattr(zoo().predictor(name).manifest, "sha256", None), pred)])}
    if confidence:
        with clock(timings, "confidence view"):
            out["confidence"] = (confidence, *knowledge.confidence_view(pred, confidence))
    return out


def _score(name: str, pred, gt, pair_base, timings) -> tuple[dict, np.ndarray | None]:
    """One model's result entry from its prediction (checkerboard, engine, scores vs the ground truth)."""
    if timings is not None:
        for stage, ms in pred.timings.items():
            key = "network" if stage == "forward" else f"model {stage}"
            timings[key] = timings.get(key, 0.0) + ms
        timings.setdefault("per_model_forward", {})[name] = pred.timings["forward"]
    with clock(timings, "checkerboard score"):
        res = {"labels": pred.labels, "latency_ms": pred.latency_ms, "checkerboard": lab.checkerboard_score(pred.logits_work, 2), **_engine_of(name, pred)}
    if gt is not None and gt.shape == pred.labels.shape and len(pred.classes) == len(CAMVID_CLASSES):  # the ground truth is CamVid's
        with clock(timings, "scores vs ground truth"):
            c = len(pred.classes)  # CamVid's 11: every (true, predicted) bin fits in a byte
            if pair_base is None:  # void pixels start at bin c * c: their bins are cut off below
                pair_base = np.where(gt < c, gt * np.uint8(c), np.uint8(c * c))
            counts = np.bincount((pair_base + pred.labels).ravel(), minlength=256)[: c * c]
            m = segmentation_metrics(torch.from_numpy(counts.reshape(c, c)))
        res.update(miou=m["miou"], accuracy=m["pixel_accuracy"])
    return res, pair_base


@on_gpu
def segment_stream(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None, confidence: str | None = None) -> Iterator[tuple]:
    """Run every selected architecture on one image, yielding each result as soon as it is ready.

    Yields:
        First ``(image, ground_truth, None, None)``: the decoded RGB image and the CamVid label map when the
        image is a CamVid image under the data root (else None). Then ``(image, ground_truth, arch, result)``
        per architecture in :func:`run_order`, ``result`` being ``{"labels", "latency_ms", "checkerboard",
        "engine", "precision", "engine_reason", "label_png", "ood"[, "miou", "accuracy"][, "confidence"]}`` or
        ``{"error"}`` (``checkerboard``: :func:`workbench.lab.checkerboard_score` of the logits; ``label_png``:
        the label map as index-PNG bytes; ``ood``: this checkpoint's :class:`~workbench.inference.ood.OodResult`
        or None; ``confidence``: ``(kind, rgb, legend_html)`` when ``confidence`` names a kind).
        ``confidence``: None, or one of :data:`CONFIDENCE_KINDS` for a per-model confidence view.

    Raises:
        gr.Error: no image, an image that cannot be read, or no architecture selected (before the first yield).
    """
    if not archs:
        raise gr.Error("Select at least one architecture.")
    if confidence is not None and confidence not in CONFIDENCE_KINDS:
        raise gr.Error(f"Unknown confidence view {confidence!r}: choose one of {', '.join(CONFIDENCE_KINDS)}.")
    with clock(timings, "decode"):
        image = read_upload(image_path)
        arr = np.asarray(image)
    with clock(timings, "ground truth lookup"):
        gt = find_ground_truth(image_path, arr)
    yield arr, gt, None, None
    order = run_order(list(archs))
    pair_base = None  # ground truth * classes, once per request: + a model's labels = its (true, predicted) confusion bin
    shared: dict = {}  # one decode and normalisation of the image for every model that reads it the same way
    # on CUDA (the torch engine) every forward pass is queued back to back first, as before streaming
    queued = _queue_on_gpu(order, image, shared) if resolve_device(zoo().device).type == "cuda" else {}
    for i, name in enumerate(order):
        if progress is not None:
            progress((i, len(order)), desc=f"running {name}", unit="models")
        try:
            pred = queued[name] if name in queued else zoo().predict(name, image, shared=shared)
            if isinstance(pred, Exception):
                raise pred
            res, pair_base = _score(name, pred, gt, pair_base, timings)
            res.update(_knowledge(name, pred, confidence, timings))
            _LATENCY_MS[name] = min(float(pred.latency_ms), _LATENCY_MS.get(name, float("inf")))
        except Exception as exc:  # one failing model must not take the comparison down
            res = {"error": f"{type(exc).__name__}: {exc}"}
        yield arr, gt, name, res


def segment_all(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None) -> tuple[np.ndarray, dict, np.ndarray | None]:
    """:func:`segment_stream` run to the end: ``(image, {arch: result}, ground_truth)``, results in run order."""
    results: dict[str, dict] = {}
    image = gt = None
    for image, gt, name, res in segment_stream(image_path, archs, timings, progress):
        if name is not None:
            results[name] = res
    return image, results, gt


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


def cached_segment_stream(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None, confidence: str | None = None) -> Iterator[tuple]:
    """:func:`segment_stream`, answered from memory for the example images (bounded: examples x selections x
    confidence views): a cached answer streams at once, in the order it was computed."""
    if timings is not None:  # profiling (workbench bench --request) measures the real work
        yield from segment_stream(image_path, archs, timings, progress, confidence)
        return
    digest = _digest(image_path) if _EXAMPLE_DIGESTS else None
    key = (digest, tuple(archs), confidence)
    if digest in _EXAMPLE_DIGESTS:
        with _EXAMPLE_LOCK:
            hit = _EXAMPLE_CACHE.get(key)
        if hit is not None:
            image, results, gt = hit
            yield image, gt, None, None
            for name, res in results.items():
                yield image, gt, name, dict(res)  # callers replace entries; keep ours
            return
    results: dict[str, dict] = {}
    for image, gt, name, res in segment_stream(image_path, archs, timings, progress, confidence):
        if name is not None:
            results[name] = dict(res)
        yield image, gt, name, res
    if digest in _EXAMPLE_DIGESTS and len(_EXAMPLE_CACHE) < MAX_CACHED and all("error" not in r for r in results.values()):
        with _EXAMPLE_LOCK:
            _EXAMPLE_CACHE[key] = (image, results, gt)


def cached_segment_all(image_path: str | None, archs: list[str], timings: dict | None = None, progress=None):
    """:func:`cached_segment_stream` run to the end: ``(image, {arch: result}, ground_truth)``."""
    results: dict[str, dict] = {}
    image = gt = None
    for image, gt, name, res in cached_segment_stream(image_path, archs, timings, progress):
        if name is not None:
            results[name] = res
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
