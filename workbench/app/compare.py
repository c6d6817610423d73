"""The Compare tab: every selected architecture on one image, one card each, and where they disagree.

A card is described once, in :data:`CARD_FIELDS` (its components) and :func:`card_values` (what they
show, finished or still running); handlers return values keyed by architecture and field name, and
:class:`CompareTab` turns them into ``{component: value}`` updates. Nothing outside this module knows the
order of the outputs.

Compare streams (:func:`compare_stream`): every selected card first says it is running, then each card is
filled in as soon as its model finishes (the fastest expected first: :func:`~workbench.app.segment.run_order`;
the cards keep their places), and the last result carries every output, which is what the ``/compare`` API
returns. Besides the cards, the tab names the training data and classes (:func:`~workbench.app.knowledge.training_note`),
shows the out-of-distribution notice once every calibrated model that was selected has answered
(:func:`~workbench.app.knowledge.least_alarmed` of their verdicts, see docs/ood.md), offers each card's label map
as an index PNG, an optional confidence view per card, and one zip of the request's results, packed by an event
chained after the run (:func:`results_zip`: about 0.5 s for seven models, which the last card does not wait for).
:meth:`CompareTab.run` sends each step to the page so that Gradio 6's page shows it as sent: every value
every step, a visibility only when it changes (see its docstring for why).
"""

from __future__ import annotations

import hashlib
import html
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from workbench import viz
from workbench.classes import CAMVID_CLASSES, IGNORE_INDEX
from workbench.inference.ood import load_calibrations

from . import knowledge
from .common import HEAVY, LIGHT, architectures, badge, clock, fast_png, image_input, zoo
from .own import MAX_PER_SESSION, OwnPanel, is_own, touch
from .segment import CONFIDENCE_KINDS, cached_segment_stream

__all__ = ["CARD_FIELDS", "RUNNING", "CardField", "CompareResult", "CompareTab", "card_values", "compare", "compare_stream", "results_zip", "encoded_images", "render_cards", "restyle"]

DISPLAY_MAX_SIDE = 1024  # results are shown (and kept per session) at most this large
STATE_TTL_S = 900  # a session's cached label maps live this long
RUNNING: dict = {"running": True}  # the result entry of a selected model that has not answered yet


@dataclass(frozen=True)
class CardField:
    """One component of an architecture's card: its name in :func:`card_values`, its class and arguments."""

    name: str
    component: type
    kwargs: dict = field(default_factory=dict)

    def build(self) -> gr.components.Component:
        return self.component(**self.kwargs)

    @property
    def image_format(self) -> str | None:
        """The format Gradio writes this field's pictures in (None: not an image)."""
        return self.kwargs.get("format") if issubclass(self.component, gr.Image) else None


# A card, top to bottom. The /compare API returns these fields per architecture, in this order.
CARD_FIELDS: tuple[CardField, ...] = (
    CardField("header", gr.HTML),
    CardField("mask", gr.Image, dict(label="Mask", format="png", interactive=False, height=220)),
    # photo-like: JPEG is 100x faster to encode than PNG
    CardField("overlay", gr.Image, dict(label="Overlay", format="jpeg", interactive=False, height=220)),
    CardField("errors", gr.Image, dict(label="Errors (red: wrong, dark blue: void)", format="jpeg", interactive=False, height=220, visible=False)),
    # shown when the request asks for a confidence view (the "Confidence view" dropdown): dark = unsure
    CardField("confidence", gr.Image, dict(label="Confidence (dark: unsure)", format="jpeg", interactive=False, height=220, visible=False)),
    CardField("legend", gr.HTML),
    CardField("download", gr.DownloadButton, dict(label="Label map (index PNG)", size="sm", variant="secondary")),
)
CONFIDENCE_CHOICES = [("Off", "off"), ("Max probability", "max"), ("Entropy", "entropy")]  # the dropdown's (label, value)
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "segmentation-workbench" / "downloads"
MAX_PENDING_ZIPS = 16  # requests whose full-size results wait for results_zip (the oldest are dropped)
_PENDING: OrderedDict[str, dict] = OrderedDict()  # state["zip_key"] -> {"entries", "image", "summary"} or {"path"}
_PENDING_LOCK = threading.Lock()
_FORMATS = {f.name: f.image_format for f in CARD_FIELDS}


def _engine_text(res: dict) -> str:
    """``openvino int8``: the engine and precision that ran (the reason it was chosen as the tooltip)."""
    label = " ".join(str(v) for v in (res.get("engine"), res.get("precision")) if v)
    reason = res.get("engine_reason") or ""
    return f'<span class="wb-engine" title="{html.escape(reason, quote=True)}">{html.escape(label)}</span> · ' if label else ""


def _card_header(name: str, res: dict | None = None, error: str | None = None) -> str:
    entry = zoo().entries[name]
    code = "" if entry.added else f" <code>{name}</code>"  # a user's checkpoint: its title says what it is
    parts = [f"<b>{html.escape(entry.title)}</b>{code} {badge(entry)}"]
    res = res or {}
    if error:
        parts.append(f'<div class="wb-error">Error: {html.escape(error)}</div>')
    elif res.get("running"):
        parts.append('<div class="wb-stats wb-running">⏳ running…</div>')
    else:
        params = zoo().num_parameters(name)
        cb = f" · checkerboard <b>{res['checkerboard']:.2e}</b>" if "checkerboard" in res else ""
        parts.append(f'<div class="wb-stats">{_engine_text(res)}latency <b class="wb-latency">{res["latency_ms"]:.0f} ms</b> · {params / 1e6:.2f} M parameters{cb}</div>')
        if "miou" in res:
            parts.append(f'<div class="wb-stats">on this image: mIoU <b>{100 * res["miou"]:.1f}</b> · pixel accuracy <b>{100 * res["accuracy"]:.1f}</b> (classes present)</div>')
    return "".join(parts)


DOWNLOAD_MAX_AGE_S = 3600  # downloads older than this are deleted (Gradio's own cache of them lives as long: layout.py)
_PRUNE_EVERY_S = 300
_last_prune = [0.0]


def prune_downloads(now: float | None = None, max_age_s: float = DOWNLOAD_MAX_AGE_S) -> int:
    """Delete the download folders under :data:`DOWNLOAD_DIR` last written more than ``max_age_s`` ago; returns
    how many. Gradio serves its own copy of each file, so an old original is never needed again."""
    now = time.time() if now is None else now
    removed = 0
    for folder in DOWNLOAD_DIR.glob("*"):
        try:
            if folder.is_dir() and now - folder.stat().st_mtime > max_age_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        except OSError:
            continue  # removed by a concurrent prune
    return removed


def write_download(data: bytes, filename: str) -> str:
    """Write a download's bytes to a file named ``filename`` (in a folder named by the content's hash, so the same
    result is written once) and return its path; Gradio serves a copy from its cache. Every few minutes this also
    deletes the downloads older than :data:`DOWNLOAD_MAX_AGE_S` (:func:`prune_downloads`)."""
    if time.time() - _last_prune[0] > _PRUNE_EVERY_S:
        _last_prune[0] = time.time()
        prune_downloads()
    path = DOWNLOAD_DIR / hashlib.sha256(data).hexdigest()[:24] / filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".{id(data)}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a concurrent request never serves half a file
    return str(path)


def card_values(name: str, res: dict | None, image: np.ndarray | None, opacity: float, base: np.ndarray | None = None, gt: np.ndarray | None = None,
                confidence: str | None = None) -> dict[str, Any]:
    """One card's contents: ``visible`` (the card itself) and a value for every field of :data:`CARD_FIELDS`.

    Args:
        res: the architecture's entry of :func:`~workbench.app.segment.segment_stream`'s results (None: not
            selected; :data:`RUNNING`: selected, not answered yet: a header saying so and no pictures, the error
            map's and the confidence view's frames shown empty when they will be filled). Its ``label_png`` is the
            path of the label map's index PNG (:func:`compare_stream` writes it), ``confidence`` the view's
            ``(kind, rgb, legend)``.
        base: the dimmed image the error maps are drawn on (None: no ground truth, no error map).
        confidence: the request's confidence view (None: none asked for).
    """
    hidden_errors = gr.update(value=None, visible=False)
    if res is None:
        return {"visible": False, "header": "", "mask": None, "overlay": None, "errors": hidden_errors, "confidence": gr.update(value=None, visible=False),
                "legend": "", "download": None}
    if "error" in res or res.get("running"):
        # a running card shows the error map's empty frame when there is ground truth: the map fills it in place
        # (showing a component and setting its value in one step loses the value on the page, see CompareTab.run)
        running = bool(res.get("running"))
        errors = gr.update(value=None, visible=base is not None) if running else hidden_errors
        conf = gr.update(value=None, visible=running and confidence is not None)
        return {"visible": True, "header": _card_header(name, res, error=res.get("error")), "mask": None, "overlay": None, "errors": errors,
                "confidence": conf, "legend": "", "download": None}
    classes = zoo().predictor(name).classes
    err = viz.error_map(res["labels"], gt, ignore_index=IGNORE_INDEX, base=base) if base is not None and "miou" in res else None
    legend = viz.legend_html(classes, present=viz.present_labels(res["labels"], len(classes)))
    conf = res.get("confidence")
    if conf is not None:
        legend += f'<div class="wb-confidence-legend">{"Max probability" if conf[0] == "max" else "Entropy"}: {conf[2]}</div>'
    return {
        "visible": True,
        "header": _card_header(name, res),
        "mask": fast_png(viz.palette_image(res["labels"], classes)),  # a palette image PNG-encodes 5x faster than an RGB array
        "overlay": viz.overlay(image, viz.colorize(res["labels"], classes), opacity),
        "errors": gr.update(value=err, visible=err is not None),
        "confidence": gr.update(value=conf[1] if conf is not None else None, visible=conf is not None),
        "legend": legend,
        "download": res.get("label_png") if isinstance(res.get("label_png"), str) else None,
    }


def render_cards(image: np.ndarray | None, results: dict, opacity: float, gt: np.ndarray | None = None, names: list[str] | None = None, running: list[str] = (),
                 confidence: str | None = None) -> dict[str, dict]:
    """Every card's contents, ``{architecture: card_values(...)}``, for ``names`` (default: every registered
    architecture); those in ``running`` without a result yet say they are running."""
    base = viz.dimmed(image) if gt is not None and image is not None else None  # shared by every error map
    entry = {name: RUNNING for name in running} | results
    return {name: card_values(name, entry.get(name), image, opacity, base, gt, confidence) for name in (names if names is not None else architectures())}


def disagreement_outputs(image: np.ndarray, results: dict) -> tuple[np.ndarray | None, str]:
    maps = [r["labels"] for r in results.values() if "labels" in r]
    if len(maps) < 2:
        return None, "Select two or more architectures to see where they disagree."
    n_distinct, agreement = viz.disagreement(maps)
    img = viz.disagreement_image(image, n_distinct, len(maps))
    return img, f"**{len(maps)} models agree on {100 * agreement:.1f}% of pixels.** Yellow: two different answers; red: every model says something else."


@dataclass
class CompareResult:
    """What the Compare tab shows after a run, or at one step of it (:func:`compare_stream`)."""

    cards: dict[str, dict]  # {architecture: card_values(...)}, every architecture (unselected ones hidden)
    disagreement: np.ndarray | None  # the disagreement map (None with fewer than two results, or while running)
    agreement: str  # the sentence under it (while running: how many models are done)
    ground_truth: dict  # gr.update of the ground-truth image (visible only when the image has one)
    state: dict  # {"image", "results", "gt", "archs", "confidence"}: kept in the session to restyle without rerunning models
    changed: tuple[str, ...] | None = None  # the cards that changed since the previous step; None: everything did
    ood: str = ""  # the out-of-distribution notice (knowledge.ood_html; empty: none, or not every calibrated model done)

    @property
    def complete(self) -> bool:
        """Every output is set (the first and the last step of a run; the only one :func:`compare` returns)."""
        return self.changed is None


# the formats Gradio writes the result's pictures in (bench --request times this encoding)
_RESULT_FORMATS = {"disagreement": "jpeg", "ground_truth": "png"}


def encoded_images(result: CompareResult) -> list[tuple[Any, str]]:
    """Every picture of a result with the format its component writes it in: ``[(array or PIL image, "png"|"jpeg")]``."""
    out = [(card[k], fmt) for card in result.cards.values() for k, fmt in _FORMATS.items() if fmt]
    out += [(getattr(result, k), fmt) for k, fmt in _RESULT_FORMATS.items()]
    return [(v.get("value") if isinstance(v, dict) else v, fmt) for v, fmt in out]


def _calibrated(archs: list[str]) -> set[str]:
    """The selected architectures whose checkpoint has an out-of-distribution calibration (docs/ood.md)."""
    shas = {cal.sha256 for cal in load_calibrations()}
    entries = zoo().entries
    return {n for n in archs if getattr(getattr(entries.get(n), "manifest", None), "sha256", None) in shas}


def compare_stream(image_path: str | None, archs: list[str], opacity: float, timings: dict | None = None, progress=None, names: list[str] | None = None,
                   confidence: str | None = None) -> Iterator[CompareResult]:
    """The Compare tab, step by step: segment with every selected architecture and lay out one card each.

    Yields a complete :class:`CompareResult` with every selected card running (and the ground truth, known
    at once), then one per finished model but the last (``changed``: that card), then the complete final result,
    whose ``state["zip_key"]`` lets :func:`results_zip` pack the request's results. The out-of-distribution notice is set from the step at which every selected
    calibrated model has answered. ``timings`` (optional dict) receives the milliseconds spent per stage
    (``workbench bench --request``); ``progress`` is told which model is running; ``names``: the architectures
    that have a card (default: every registered one); ``confidence``: None or a kind of
    :data:`~workbench.app.segment.CONFIDENCE_KINDS` for a confidence view on every card.
    """
    names = names if names is not None else architectures()
    stream = cached_segment_stream(image_path, archs, timings, progress, confidence)
    image, gt, _, _ = next(stream)  # bad inputs raise here, before anything is shown
    full_image = image  # the zip holds the results at full size
    calibrated = _calibrated(list(archs))
    # What the browser shows (and the session keeps for restyling) is at most DISPLAY_MAX_SIDE pixels a side:
    # a 24-megapixel upload must not keep ~100 MB per session alive. Scores were computed at full size.
    with clock(timings, "fit for display"):
        image = viz.fit_for_display(image, DISPLAY_MAX_SIDE)
        gt = viz.fit_for_display(gt, DISPLAY_MAX_SIDE, labels=True) if gt is not None else None
    with clock(timings, "colorize, overlay, error maps, legends"):
        gt_img = fast_png(viz.palette_image(gt, CAMVID_CLASSES)) if gt is not None else None  # only CamVid images have one
        base = viz.dimmed(image) if gt is not None else None  # shared by every error map
        cards = render_cards(image, {}, opacity, gt, names, running=archs, confidence=confidence)
    gt_update = gr.update(value=gt_img, visible=gt_img is not None)
    results: dict[str, dict] = {}
    full: dict[str, dict] = {}  # per model what the zip needs, at full size (not kept in the session)

    def state() -> dict:
        return {"image": image, "results": dict(results), "gt": gt, "archs": list(archs), "confidence": confidence}

    def ood() -> str:  # once every calibrated model has answered (they agree to flag, or the notice stays away)
        if not calibrated <= set(results):
            return ""
        return knowledge.ood_html(knowledge.least_alarmed(results[n].get("ood") for n in calibrated))

    yield CompareResult(dict(cards), None, f"⏳ Running {len(archs)} model(s)…", gt_update, state(), ood=ood())
    for _, _, name, res in stream:
        if "labels" in res:
            conf = res.get("confidence")
            full[name] = {"name": name, "labels": res["labels"], "classes": zoo().predictor(name).classes, "confidence": conf[1] if conf else None,
                          "info": {k: res[k] for k in ("engine", "precision", "latency_ms", "miou", "accuracy", "checkerboard") if k in res}}
            with clock(timings, "label PNG, OOD score"):
                png = res.get("label_png")
                res = {**res, "label_png": write_download(png, f"{name}_labels.png") if isinstance(png, bytes) else png}
            with clock(timings, "fit for display"):
                res = {**res, "labels": viz.fit_for_display(res["labels"], DISPLAY_MAX_SIDE, labels=True)}
                if conf is not None:
                    res["confidence"] = (conf[0], viz.fit_for_display(conf[1], DISPLAY_MAX_SIDE), conf[2])
        results[name] = res
        if name in cards:
            with clock(timings, "colorize, overlay, error maps, legends"):
                cards[name] = card_values(name, res, image, opacity, base, gt, confidence)
        if len(results) < len(set(archs)):  # the last card arrives with the complete result
            yield CompareResult(dict(cards), None, f"⏳ {len(results)} of {len(archs)} models done…", gt_update, state(), changed=(name,), ood=ood())
    with clock(timings, "disagreement map"):
        dis_img, dis_text = disagreement_outputs(image, {n: results[n] for n in archs if n in results})
    final = state()
    if full:  # packed later (results_zip), so the last card does not wait for the zip
        verdict = knowledge.least_alarmed(results[n].get("ood") for n in calibrated if n in results)
        summary = {"models_run": [n for n in archs if n in full], "ood": verdict.to_dict() if verdict is not None else None,
                   "errors": {n: r["error"] for n, r in results.items() if "error" in r}}
        final["zip_key"] = key = uuid.uuid4().hex
        with _PENDING_LOCK:
            _PENDING[key] = {"entries": [full[n] for n in archs if n in full], "image": full_image, "opacity": opacity, "summary": summary}
            while len(_PENDING) > MAX_PENDING_ZIPS:
                _PENDING.popitem(last=False)
    yield CompareResult(cards, dis_img, dis_text, gt_update, final, ood=ood())


def results_zip(state: dict | None, timings: dict | None = None) -> str | None:
    """The path of one zip of every result of the Compare run that left ``state``: per model the label map (index
    PNG), the overlay, the confidence view when one was asked for, and ``results.json`` (engine, precision,
    latency, scores, the out-of-distribution verdict); see :func:`workbench.app.knowledge.request_zip`.

    None when the run produced no result. Packed once per run (a second call returns the same file); a run's
    full-size results wait for this for the last :data:`MAX_PENDING_ZIPS` runs only.

    Raises:
        gr.Error: the run is too old (its results were dropped): run Compare again.
    """
    key = (state or {}).get("zip_key")
    if not key:
        return None
    with _PENDING_LOCK:
        pending = _PENDING.get(key)
    if pending is None:
        raise gr.Error("These results are no longer kept for download: press Segment again.")
    if "path" not in pending:
        with clock(timings, "results zip"):
            data = knowledge.entries_zip(pending["entries"], pending["image"], overlay_alpha=pending["opacity"], summary=pending["summary"])
        pending = {"path": write_download(data, "workbench_results.zip")}
        with _PENDING_LOCK:
            if key in _PENDING:
                _PENDING[key] = pending
    return pending["path"]


def compare(image_path: str | None, archs: list[str], opacity: float, timings: dict | None = None, progress=None, names: list[str] | None = None,
            confidence: str | None = None) -> CompareResult:
    """:func:`compare_stream` run to the end: the complete result."""
    result = None
    for result in compare_stream(image_path, archs, opacity, timings, progress, names, confidence):
        pass
    return result


def restyle(state: dict | None, opacity: float, names: list[str] | None = None) -> dict[str, dict]:
    """Opacity changed: redraw the overlays from the cached label maps, without rerunning models."""
    if not state:
        return render_cards(None, {}, opacity, names=names)
    return render_cards(state["image"], state["results"], opacity, state.get("gt"), names, running=state.get("archs", ()), confidence=state.get("confidence"))


def _props(value: Any) -> dict:
    """An output's value or ``gr.update(...)`` as the properties it sets: ``{"value"?, "visible"?, ...}``."""
    if isinstance(value, dict) and value.get("__type__") == "update":
        return {k: v for k, v in value.items() if k != "__type__"}
    return {"value": value}


class CompareTab:
    """The tab's components, one card per architecture, and its events.

    Built inside a ``gr.Tab``; ``names`` are the architectures that get a card and a checkbox. A session's own
    checkpoints (:mod:`~workbench.app.own`) get the :data:`~workbench.app.own.MAX_PER_SESSION` spare cards
    ``self.slots``, in the order they were added; the run's state keeps which key had which slot (``"slots"``).
    """

    def __init__(self, names: list[str], selection: list[str], examples: list[str]) -> None:
        self.names = list(names)
        self.slots = [f"own{i}" for i in range(MAX_PER_SESSION)]
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                self.image = image_input()
                self.archs = gr.CheckboxGroup(self.names, value=selection, label="Architectures", elem_classes=["wb-archs"])
                self.opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                self.confidence = gr.Dropdown(CONFIDENCE_CHOICES, value="off", label="Confidence view per card (dark: unsure)",
                                              info="Max probability or entropy of each pixel's class probabilities; about 20 ms a model.")
                self.button = gr.Button("Segment", variant="primary")
                self.zip = gr.DownloadButton("Download all results (zip)", value=None, size="sm", variant="secondary")
                self.own = OwnPanel()
            with gr.Column(scale=2, min_width=320):
                self.note = gr.Markdown(knowledge.training_note(CAMVID_CLASSES), elem_classes=["wb-training-note"])
                self.ood = gr.HTML()
                with gr.Row():
                    self.disagreement = gr.Image(label="Disagreement map", format=_RESULT_FORMATS["disagreement"], interactive=False, height=300)
                    self.ground_truth = gr.Image(label="Ground truth", format=_RESULT_FORMATS["ground_truth"], interactive=False, height=300, visible=False)
                self.agreement = gr.Markdown()
        self.state = gr.State(time_to_live=STATE_TTL_S)  # label maps for restyling, dropped after STATE_TTL_S
        self.cards: dict[str, gr.Column] = {}
        self.fields: dict[str, dict[str, gr.components.Component]] = {}
        with gr.Row(equal_height=False):
            for name in self.names + self.slots:
                with gr.Column(visible=False, min_width=300, elem_classes=["wb-card"], elem_id=f"wb-card-{name}") as card:
                    self.fields[name] = {f.name: f.build() for f in CARD_FIELDS}
                self.cards[name] = card
        # the API's order: per architecture its card and fields, then the disagreement map, its text, the ground truth
        self.card_outputs = [c for name in self.names + self.slots for c in (self.cards[name], *self.fields[name].values())]
        self._card_of = {comp: self.cards[name] for name in self.names + self.slots for comp in self.fields[name].values()}  # field -> its card
        self.outputs = [*self.card_outputs, self.disagreement, self.agreement, self.ground_truth, self.ood, self.zip, self.state]
        self.examples = gr.Examples(  # a click fills the inputs and runs Compare (wire()), answered from memory after the first time
            [[path, selection, 0.5] for path in examples], inputs=[self.image, self.archs, self.opacity],
            cache_examples=False, examples_per_page=8,
            label="CamVid test images (ground truth and error maps shown)" if "camvid" in examples[0] else "A synthetic example (fetch CamVid for real ones: workbench fetch-data camvid)",
        )

    def card_updates(self, cards: dict[str, dict], slots: dict[str, str] | None = None) -> dict:
        """``{component: value}`` for the cards in ``cards`` (:func:`render_cards`' output, or part of it);
        ``slots``: the card each own checkpoint's key is shown in."""
        out: dict = {}
        slots = slots or {}
        for name, values in cards.items():
            name = slots.get(name, name)
            if name not in self.cards:
                continue
            out[self.cards[name]] = gr.update(visible=values["visible"])
            out.update({comp: values[key] for key, comp in self.fields[name].items()})
        return out

    def updates(self, result: CompareResult) -> dict:
        """``{component: value}`` for the outputs a step of a Compare run sets: every output for a complete
        result, else the changed cards, the progress sentence and the state (the rest stays as shown)."""
        slots = result.state.get("slots") or {}
        if result.complete:
            unused = [s for s in self.slots if s not in slots.values()]  # no own checkpoint there (now): hidden
            return {
                **self.card_updates(result.cards, slots),
                **self.card_updates({s: card_values(s, None, None, 0.0) for s in unused}),
                self.disagreement: result.disagreement,
                self.agreement: result.agreement,
                self.ground_truth: result.ground_truth,
                self.ood: result.ood,
                self.zip: None,  # cleared while this run's results come in: set by pack_zip after the run
                self.state: result.state,
            }
        changed = {name: result.cards[name] for name in result.changed if slots.get(name, name) in self.cards}
        return {**self.card_updates(changed, slots), self.agreement: result.agreement, self.ood: result.ood, self.state: result.state}

    def _slots(self, own: list[dict] | None) -> dict[str, str]:
        """``{key: slot}`` for the session's own checkpoints that the zoo still serves, in the order they were added."""
        keys = [s["key"] for s in own or [] if s.get("key") in zoo().entries]
        return dict(zip(keys, self.slots))

    def run(self, image_path: str | None, archs: list[str], opacity: float, previous: dict | None = None, confidence: str | None = "off",
            own: list[dict] | None = None) -> Iterator[dict]:
        """Segment the image with every selected architecture, streaming each card as its model finishes
        (the /compare endpoint: its last value is the complete result).

        Every step sends every output's value, not only what changed, and a visibility only where it changes
        (``previous``: the session's state, which says which cards the page shows). Gradio 6's page
        loses values otherwise: an update without a value (a card column's ``visible``) reads its children's
        values back from the page while the same message sets them, so a card would keep an old mask or lose its
        new one until a later message set it again. A picture is encoded once per run: later steps send its file.
        ``confidence``: the dropdown's value ("off", or a kind of :data:`~workbench.app.segment.CONFIDENCE_KINDS`).
        ``own``: the session's own checkpoints (:class:`~workbench.app.own.OwnPanel`'s state).
        """
        kind = None if confidence in (None, "", "off") else confidence
        if kind is not None and kind not in CONFIDENCE_KINDS:
            raise gr.Error(f"Unknown confidence view {confidence!r}: choose one of off, {', '.join(CONFIDENCE_KINDS)}.")
        shown: dict = {}  # component -> {"value"?, "visible"?}: what this run has the page show
        known = self._visibility(previous)  # component -> the visibility the page has
        files: dict[int, tuple[Any, str]] = {}  # id(picture) -> (the picture, kept alive; the file Gradio wrote for it)
        slots = self._slots(own)
        touch(slots)
        gone = [a for a in archs or [] if is_own(a) and a not in slots]
        if gone:
            gr.Warning(f"{len(gone)} of your checkpoints is no longer kept (unused for an hour, or the session ended): add it again.")
            archs = [a for a in archs if a not in gone]
        for result in compare_stream(image_path, archs, opacity, names=self.names + list(slots), confidence=kind):
            result.state["slots"] = slots
            for comp, value in self.updates(result).items():
                update = _props(value)
                if "value" in update and isinstance(comp, gr.Image):
                    update["value"] = self._written(comp, update["value"], files)
                shown[comp] = {**shown.get(comp, {}), **update}
            yield self._send(shown, known)

    @staticmethod
    def _written(comp: gr.Image, picture: Any, files: dict[int, tuple[Any, str]]) -> Any:
        """A picture as the file Gradio writes for ``comp`` (written on the first call, its path after)."""
        if picture is None or isinstance(picture, (str, Path)):
            return picture
        if id(picture) not in files:
            files[id(picture)] = (picture, comp.postprocess(picture).path)
        return files[id(picture)][1]

    def _visibility(self, state: dict | None) -> dict:
        """The visibility each card has on the page after the run that left ``state`` (none known without it)."""
        if not state or "archs" not in state:
            return {}
        slots = state.get("slots") or {}
        shown = {slots.get(name, name) for name in state["archs"]}
        return {self.cards[name]: name in shown for name in self.names + self.slots}

    def _send(self, shown: dict, known: dict) -> dict:
        """``{component: value}`` that sets every value in ``shown`` and a visibility only where the page's
        (``known``, updated here) differs; a column whose visibility is as shown, and the fields of a hidden card,
        are left out (``gr.skip()``)."""
        out: dict = {}
        hidden = {comp for name, comp in self.cards.items() if shown.get(comp, {}).get("visible") is False}
        for comp, want in shown.items():
            if self._card_of.get(comp) in hidden:  # a hidden card's fields stay as they are until it is shown
                out[comp] = gr.skip()
                continue
            visible = want.get("visible")
            change = visible is not None and known.get(comp) != visible
            if change:
                known[comp] = visible
            if "value" not in want:  # a card's column: only its visibility
                out[comp] = gr.update(visible=visible) if change else gr.skip()
            else:
                out[comp] = gr.update(value=want["value"], visible=visible) if change else want["value"]
        return out

    def restyle(self, state: dict | None, opacity: float) -> dict:
        """Redraw the overlays; the cards keep their visibility (a restyle shows and hides nothing)."""
        known = self._visibility(state) if state else {comp: False for comp in self.cards.values()}
        slots = {k: v for k, v in ((state or {}).get("slots") or {}).items() if k in zoo().entries}
        shown = {comp: _props(value) for comp, value in self.card_updates(restyle(state, opacity, self.names + list(slots)), slots).items()}
        errors = {self.fields[name][key] for name in self.names + self.slots for key in ("errors", "confidence")}  # shown as they were
        known |= {comp: want.get("visible") for comp, want in shown.items() if comp in errors}
        out = self._send(shown, known)
        return {comp: out.get(comp, gr.skip()) for comp in self.card_outputs}  # spare cards no own checkpoint uses: as they are

    def pack_zip(self, state: dict | None) -> str | None:
        """The zip download of the last run's results (an event chained after the run; no network runs here)."""
        return results_zip(state)

    def wire(self):
        """The tab's events (inside the Blocks, after the layout); returns the Segment click's event (to chain on)."""
        inputs = [self.image, self.archs, self.opacity, self.state, self.confidence, self.own.state]
        event = self.button.click(self.run, inputs, self.outputs, api_name="compare", **HEAVY)
        event.success(self.pack_zip, [self.state], [self.zip], api_name=False, **LIGHT)
        # an example's click runs the same handler in the same queue slot, after it has filled the inputs
        self.examples.load_input_event.then(self.run, inputs, self.outputs, api_name=False, **HEAVY).success(
            self.pack_zip, [self.state], [self.zip], api_name=False, **LIGHT)
        self.opacity.release(self.restyle, [self.state, self.opacity], self.card_outputs, api_name=False, **LIGHT)
        return event
