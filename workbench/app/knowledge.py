"""What the models know, in words and pictures, for the app's tabs: the training data and classes, the
out-of-distribution verdict (:mod:`workbench.inference.ood`), the confidence view and the downloads.

Plain functions over predictions; no Gradio here, so the Compare tab (or any other) calls them and the tests
need no browser.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import viz
from ..inference.ood import OodResult, load_calibrations
from ..inference.predictor import Prediction
from ..io.exports import label_png_bytes, results_zip

__all__ = ["training_note", "ood_verdict", "least_alarmed", "ood_html", "confidence_view", "label_png", "request_zip", "entries_zip"]

DATASET_NOTES = {
    "camvid": "CamVid: 367 training frames filmed from a car driving through Cambridge, UK (daylight and dusk street scenes)",
    "isbi": "ISBI 2012: 30 electron-microscopy slices of a fly's nerve cord (membranes vs. cell interior)",
}


def training_note(classes: Sequence[Mapping[str, Any]], dataset: str = "camvid") -> str:
    """Markdown naming the training data and the classes the models can answer with."""
    names = ", ".join(str(c["name"]) for c in classes)
    about = DATASET_NOTES.get(dataset.lower(), dataset)
    return (f"**What these models know.** Trained on {about}. They can only answer with these "
            f"{len(classes)} classes: {names}. Anything else in a picture is painted as the nearest of these.")


def ood_verdict(predictions: Iterable[tuple[str | None, Prediction]]) -> OodResult | None:
    """The out-of-distribution verdict for one image from the predictions made on it, as ``(weights sha256,
    Prediction)`` pairs (``predictor.manifest.sha256``; errors and uncalibrated checkpoints are skipped).

    Every calibrated checkpoint that ran scores the image against its own threshold, and the image is flagged
    only when all of them flag it: the result returned is the least alarmed one (smallest score minus
    threshold). With camvid_unet and camvid_fcn8s both running this keeps the false alarms on CamVid test at
    camvid_unet's 0.4% instead of camvid_fcn8s's 2.1%, and still flags every held-out non-street image
    (benchmarks/ood_calibration.md). ``None`` when no calibrated checkpoint ran."""
    by_sha = {sha: p for sha, p in predictions if sha and isinstance(p, Prediction)}
    return least_alarmed(cal.score_logits(by_sha[cal.sha256].logits_work) for cal in load_calibrations() if cal.sha256 in by_sha)


def least_alarmed(results: Iterable[OodResult | None]) -> OodResult | None:
    """The verdict of several checkpoints' verdicts on one image (None ones skipped): the least alarmed (smallest
    score minus threshold), so the image is flagged only when every one flags it; None when there are none.
    ``least_alarmed(ood_verdict([pair]) for pair in pairs)`` is ``ood_verdict(pairs)``."""
    results = [r for r in results if r is not None]
    return min(results, key=lambda r: r.score - r.threshold) if results else None


def ood_html(result: OodResult | None) -> str:
    """A notice for a flagged image (empty for an in-distribution one or no verdict), with the score."""
    if result is None or not result.flagged:
        return ""
    return (
        '<div class="wb-ood" role="alert" style="border-left:4px solid #d97706;padding:6px 10px;background:rgba(217,119,6,0.08)">'
        f"{html.escape(result.message)} <span style=\"opacity:0.7;font-size:0.85em\">(out-of-distribution score "
        f"{result.score:.2f} &gt; threshold {result.threshold:.2f}, from {html.escape(result.checkpoint)}; docs/ood.md)</span></div>"
    )


def confidence_view(prediction: Prediction, kind: str = "max") -> tuple[np.ndarray, str]:
    """A card's confidence view: ``(RGB image at the original size, HTML legend)``; dark = unsure."""
    rgb, scale = viz.confidence_image(prediction.probs, kind)
    return rgb, viz.confidence_legend_html(scale)


def label_png(prediction: Prediction) -> bytes:
    """A prediction's label map as an index PNG (class colours in the palette)."""
    return label_png_bytes(prediction.labels, prediction.classes)


def request_zip(results: Sequence[tuple[str, Prediction]], *, overlay_alpha: float = 0.5, confidence: str | None = "max",
                summary: Mapping[str, Any] | None = None) -> bytes:
    """All results of one request as a zip (:func:`workbench.io.exports.results_zip`): per model the label PNG,
    the overlay on the input, the confidence view (``confidence=None`` skips it) and, in ``results.json``, the
    engine, precision, timings and latency; ``summary`` adds request-level facts (e.g. the OOD verdict)."""
    if not results:
        raise ValueError("no results to pack")
    entries = [{
        "name": name, "labels": p.labels, "classes": p.classes, "confidence": viz.confidence_image(p.probs, confidence)[0] if confidence else None,
        "info": {"engine": p.engine, "precision": p.engine_precision, "latency_ms": round(p.latency_ms, 1),
                 "timings_ms": {k: round(v, 1) for k, v in p.timings.items()}},
    } for name, p in results]
    return entries_zip(entries, np.asarray(results[0][1].image.convert("RGB")), overlay_alpha=overlay_alpha, summary=summary)


def entries_zip(entries: Sequence[Mapping[str, Any]], image: np.ndarray, *, overlay_alpha: float = 0.5,
                summary: Mapping[str, Any] | None = None) -> bytes:
    """:func:`request_zip` from results already reduced to ``{"name", "labels", "classes"[, "confidence"][, "info"]}``
    (the Compare tab keeps these, not the probabilities): the overlays are drawn here on ``image`` (H, W, 3)."""
    if not entries:
        raise ValueError("no results to pack")
    image = np.asarray(image)
    models = []
    for e in entries:
        mask = viz.colorize(e["labels"], e["classes"])
        overlay = viz.overlay(image, mask, overlay_alpha) if image.shape[:2] == mask.shape[:2] else None
        models.append({"name": e["name"], "labels": e["labels"], "classes": e["classes"], "overlay": overlay,
                       "confidence": e.get("confidence"), "info": e.get("info", {})})
    return results_zip(models, image=image, summary=summary)
