"""``workbench bench --request``: the app's whole Compare request, stage by stage, and the served app end to end.

:func:`profile_request` runs the app's handler in this process and splits its time into stages
(decoding, each network, colouring, Gradio's image encoding); :func:`end_to_end_latency` starts the
app in a fresh process and times requests through ``gradio_client``.
"""

from __future__ import annotations

import importlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from gradio import processing_utils
from PIL import Image

from .loadtest import _free_port, _start_app

__all__ = ["CLASSIC", "profile_request", "end_to_end_latency", "request_to_markdown"]


CLASSIC = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")


def _load_app():
    # the app is a layer above tools: looked up by name when --request runs, never imported at the top
    return importlib.import_module("workbench.app.compare")


def _encode_outputs(images) -> float:
    """Milliseconds Gradio spends writing the returned images, each in its component's format (PNG, JPEG)."""
    with tempfile.TemporaryDirectory() as tmp:  # made and removed outside the clock: Gradio keeps its cache
        t = time.perf_counter()
        for value, fmt in images:
            if isinstance(value, np.ndarray):
                processing_utils.save_img_array_to_cache(value, tmp, format=fmt)
            elif isinstance(value, Image.Image):  # the palette masks
                processing_utils.save_pil_to_cache(value, tmp, format=fmt)
        return (time.perf_counter() - t) * 1e3


def _card_images(card: dict) -> list:
    """A card's pictures with their formats, as :func:`encoded_images` lists them for a whole result."""
    app = _load_app()
    return [(v.get("value") if isinstance(v, dict) else v, f.image_format) for f in app.CARD_FIELDS if f.image_format for v in [card[f.name]]]


def _one_request(app, image_path: str, archs) -> dict:
    """One streamed Compare request in this process: its stage timings, the time to the first finished card
    (that card's image encoding included) and to the complete result (all of its encoding included)."""
    timings: dict = {}
    first, encode = None, 0.0
    t = time.perf_counter()
    for result in app.compare_stream(image_path, list(archs), 0.5, timings=timings):
        if first is None and (result.changed or (result.complete and result.state["results"])):
            done = result.changed or tuple(result.state["results"])[:1]
            encode = _encode_outputs(_card_images(result.cards[done[0]]))
            first = (time.perf_counter() - t) * 1e3
    timings["handler total"] = (time.perf_counter() - t) * 1e3 - encode
    timings["image encoding (Gradio)"] = _encode_outputs(app.encoded_images(result))
    timings["first card"] = first
    timings["engines"] = {name: " ".join(str(r[k]) for k in ("engine", "precision") if r.get(k)) for name, r in result.state["results"].items() if "labels" in r}
    return timings


def _summary(runs: list[dict]) -> dict:
    stages = [k for k in runs[0] if k not in ("per_model_forward", "engines", "first card")]
    med = {k: statistics.median(r[k] for r in runs) for k in stages}
    per_model = {n: statistics.median(r["per_model_forward"][n] for r in runs) for n in runs[0]["per_model_forward"]}
    total = med["handler total"] + med["image encoding (Gradio)"]
    return {
        "stages_ms": med,
        "per_model_forward_ms": per_model,
        "total_ms": total,
        "network_ms": med["network"],
        "overhead_share": 1 - med["network"] / total,
        "first_card_ms": statistics.median(r["first card"] for r in runs),
        "engines": runs[-1]["engines"],
    }


def profile_request(image_path: str, archs=CLASSIC, repeats: int = 5, engines=("auto", "torch")) -> dict:
    """The whole side-by-side request as the app's handler serves it (streamed, as the app does), broken down by
    stage, median over ``repeats``: the app's default engine (``engines[0]``) in full, and every engine of
    ``engines`` in summary (``per_engine``), their requests interleaved in one process so they share the machine's noise.
    ``first_card_ms``: from the call to the first finished card, encoded; ``total_ms``: the complete result, encoded."""
    app = _load_app()
    common = importlib.import_module("workbench.app.common")
    asked = common.engine()
    runs: dict[str, list] = {e: [] for e in engines}
    try:
        for e in engines:  # load and warm every model up (auto: the engine choice, measured once and cached on disk)
            common.set_engine(e)
            for name in archs:  # without the zoo's per-request timeout: a first engine measurement may take minutes
                common.zoo().predictor(name)
            app.compare(image_path, list(archs), 0.5)
            app.compare(image_path, list(archs), 0.5)  # the run order now follows this process's own figures
        for _ in range(repeats):
            for e in engines:
                common.set_engine(e)
                runs[e].append(_one_request(app, image_path, archs))
    finally:
        common.set_engine(None if asked == "auto" else asked)
    main = _summary(runs[engines[0]])
    per_engine = {e: {k: v for k, v in _summary(r).items() if k != "stages_ms"} for e, r in runs.items()}
    return {"archs": list(archs), "image": str(image_path), "engine": engines[0], **main, "per_engine": per_engine}


def end_to_end_latency(image_path: str, archs=CLASSIC, repeats: int = 5) -> dict:
    """The app started in a fresh process: time to the first answer, then the /compare latency through gradio_client."""
    from gradio_client import Client, handle_file  # optional: the test extra installs it

    port = _free_port()
    t0 = time.perf_counter()
    proc = _start_app(port, timeout_s=300, poll_s=0.1)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        client.predict(handle_file(image_path), ["fcn8s"], 0.5, api_name="/compare")
        first_answer = time.perf_counter() - t0
        client.predict(handle_file(image_path), list(archs), 0.5, api_name="/compare")  # loads the rest
        answer_only = Client(url, verbose=False, download_files=False)  # the server's answer, without the client fetching the images
        times, answer_times = [], []
        for _ in range(repeats):
            for c, out in ((client, times), (answer_only, answer_times)):
                t = time.perf_counter()
                c.predict(handle_file(image_path), list(archs), 0.5, api_name="/compare")
                out.append((time.perf_counter() - t) * 1e3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "start_to_first_answer_s": first_answer,
        "request_p50_ms": statistics.median(times),
        "request_max_ms": max(times),
        "answer_p50_ms": statistics.median(answer_times),
        "archs": list(archs),
    }


def request_to_markdown(prof: dict, e2e: dict | None, upload: dict | None = None) -> str:
    """The stage table: the CamVid example (ground truth: scores and error maps too) and, if given, the
    same pixels as a user's own upload (no ground truth, so no scores or error maps)."""
    profs = [("CamVid example", prof)] + ([("own upload", upload)] if upload else [])
    head = " | ".join(f"{name} ms | share" for name, _ in profs)
    lines = [
        f"Whole Compare request for {len(prof['archs'])} architectures ({', '.join(prof['archs'])}) on {Path(prof['image']).name}, median of repeats"
        + ("; 'own upload' is the same pixels under another file name, so no ground truth is found:" if upload else ":"),
        "",
        f"| stage | {head} |",
        "| --- |" + " ---: | ---: |" * len(profs),
    ]
    stages = list(dict.fromkeys(k for _, p in profs for k in p["stages_ms"] if k != "handler total"))
    for k in stages:
        cells = [(f"{p['stages_ms'][k]:.1f} | {100 * p['stages_ms'][k] / p['total_ms']:.1f}%" if k in p["stages_ms"] else "- | -") for _, p in profs]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **total (handler + encoding)** | " + " | ".join(f"**{p['total_ms']:.0f}** | " for _, p in profs) + "|")
    lines.append("")
    lines.append("Network time per model (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in prof["per_model_forward_ms"].items()))
    lines.append("App overhead (everything but the networks): " + "; ".join(f"{name} **{100 * p['overhead_share']:.1f}%**" for name, p in profs) + " of the request.")
    if prof.get("per_engine"):
        lines += [
            "",
            f"Per engine, in one process, requests interleaved (median of repeats; the table above is `{prof['engine']}`, the app's default); "
            "first card: from the call to the first finished card, its pictures encoded:",
            "",
            "| engine asked | what ran | network ms | request ms (handler + encoding) | first card ms | app overhead |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for e, r in prof["per_engine"].items():
            ran = ", ".join(f"{n} {v}" for n, v in r["engines"].items())
            lines.append(f"| {e} | {ran} | {r['network_ms']:.0f} | {r['total_ms']:.0f} | {r['first_card_ms']:.0f} | {100 * r['overhead_share']:.1f}% |")
        lines.append("")
    if e2e:
        lines.append(
            f"Served app through gradio_client: start to first answered request {e2e['start_to_first_answer_s']:.1f} s; "
            f"whole request p50 {e2e['request_p50_ms']:.0f} ms (max {e2e['request_max_ms']:.0f} ms)"
            + (
                f", of which the answer without the client downloading the result images one by one is {e2e['answer_p50_ms']:.0f} ms (p50)."
                if "answer_p50_ms" in e2e
                else "."
            )
        )
    return "\n".join(lines)

