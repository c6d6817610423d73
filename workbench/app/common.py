"""What every tab shares: the model zoo, the architecture list, uploads, examples, badges, timing, status.

Nothing here runs at import: the zoo is created on first use, the registry is asked when a function is
called (importing the registry's plugins is work), example files are listed when the app is built.
"""

from __future__ import annotations

import contextlib
import html
import inspect
import io
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from PIL import Image

import workbench
from workbench.data.datasets import synthetic_sample
from workbench.data.examples import shipped_camvid_images
from workbench.inference.predictor import Predictor
from workbench.inference.zoo import Zoo, discover_checkpoints
from workbench.io.checkpoint import atomic_write_bytes
from workbench.io.images import ImageError, load_image
from workbench.paths import resolve_data_root

CLASSIC = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")
# Events that run networks share one slot ("models"): on a 2-core CPU, two at once only slow each other
# down. Light events (tables, figures, restyling) get a few slots of their own so a page load is never
# stuck behind a queue of segmentations.
HEAVY = dict(concurrency_limit=1, concurrency_id="models")
LIGHT = dict(concurrency_limit=4, concurrency_id="light")

ENGINES = ("auto", "torch", "openvino", "onnxruntime")  # --engine / WORKBENCH_ENGINE
IMAGE_SOURCES = ("upload", "webcam", "clipboard")  # where every tab's input image can come from

_ZOO: Zoo | None = None  # the zoo of the engine in use
_ZOOS: dict[str, Zoo] = {}  # one per engine asked for (switching back and forth reloads nothing: bench --request)
_ZOO_LOCK = threading.Lock()
# "auto": each checkpoint runs on the fastest engine whose labels match PyTorch fp32 on this machine. The
# measurement runs at launch in the background (server.launch -> Zoo.prepare; torch stands in meanwhile) and
# is cached on disk, so no visitor waits for it.
DEFAULT_ENGINE = "auto"
_ENGINE: str | None = None  # set by --engine; None: $WORKBENCH_ENGINE, else DEFAULT_ENGINE
_ENGINE_CHOICES: dict[str, tuple[str, str, str]] = {}  # architecture -> (engine, precision, why), as they ran


def set_engine(name: str | None) -> None:
    """The inference engine every model of the app asks for (``workbench app --engine``; None: the default).
    Later requests use that engine's zoo (made on first use, then kept)."""
    global _ENGINE, _ZOO
    if name is not None and name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    with _ZOO_LOCK:
        _ENGINE = name
        _ZOO = _ZOOS.get(engine())


def engine() -> str:
    """The engine asked for: ``--engine``, else ``$WORKBENCH_ENGINE``, else :data:`DEFAULT_ENGINE` (``auto``: the
    fastest that passes parity, measured once per checkpoint and machine)."""
    return _ENGINE or os.environ.get("WORKBENCH_ENGINE") or DEFAULT_ENGINE


def _takes_engine(cls) -> bool:
    return "engine" in inspect.signature(cls.__init__).parameters


def engine_kwargs(cls=Predictor) -> dict:
    """``{"engine": engine()}`` for a ``Predictor`` or ``Zoo`` that has engines (a torch-only build gets nothing:
    it runs torch, which its cards say)."""
    return {"engine": engine()} if _takes_engine(cls) else {}


def zoo() -> Zoo:
    """The app's model zoo, created on first use (models inside load lazily too), with the chosen engine."""
    global _ZOO
    if _ZOO is None:
        with _ZOO_LOCK:
            if _ZOO is None:
                _ZOO = _ZOOS[engine()] = Zoo(**engine_kwargs(Zoo))
    return _ZOO


def record_engine(name: str, engine_name: str, precision: str, reason: str) -> None:
    """Remember which engine ran ``name`` (for :func:`status_markdown`)."""
    _ENGINE_CHOICES[name] = (engine_name, precision, reason)


def architectures() -> list[str]:
    """Every registered architecture (the first call imports the plugins)."""
    return workbench.list_architectures()


def default_selection() -> list[str]:
    """The Compare tab's preselection: the classic architectures that have trained checkpoints (at least two of
    them), else the six classic ones (then untrained, and marked so)."""
    names = architectures()
    trained = set(discover_checkpoints()[0])
    chosen = [a for a in CLASSIC if a in names and a in trained]
    if len(chosen) >= 2:
        return chosen
    return [a for a in CLASSIC if a in names and a != "fcn16s"]


# --- examples and uploads


def max_upload() -> str:
    """Gradio refuses larger uploads before they reach a handler (``WORKBENCH_MAX_UPLOAD``, default 20mb)."""
    return os.environ.get("WORKBENCH_MAX_UPLOAD", "20mb")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def max_upload_bytes() -> int:
    """:func:`max_upload` in bytes ("20mb", "512kb", "1.5gb" or a plain number of bytes)."""
    text = max_upload()
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"WORKBENCH_MAX_UPLOAD must be a size such as 20mb or 500kb, got {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()])


def example_images(n: int = 5) -> list[str]:
    """The app's example images: ``n`` CamVid test images from the data root when the data is there
    (``workbench fetch-data camvid``), else the CamVid test images shipped with the package (real street scenes
    with their label maps, so ground truth and scores show on a Space), else, only if those are missing too, one
    built-in synthetic image (shapes on a texture, made in code)."""
    folder = resolve_data_root() / "camvid" / "test"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if files:
        step = max(1, len(files) // n)
        return [str(p) for p in files[::step][:n]]
    shipped = shipped_camvid_images()
    if shipped:
        return [str(p) for p in shipped[:n]]
    return [synthetic_example()]


def synthetic_example() -> str:
    """Write (once) and return a 360x480 synthetic example image."""
    path = Path(tempfile.gettempdir()) / "segmentation-workbench" / "synthetic_example.png"
    if not path.is_file():
        image, _ = synthetic_sample(0, split="test", size=(360, 480), num_classes=5)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue(), durable=False)  # concurrent workers never see a half-written file
    return str(path)


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


def image_input(height: int = 300) -> gr.Image:
    """A tab's image input: upload, webcam or clipboard (:data:`IMAGE_SOURCES`), the file handed over untouched
    (:func:`raw_upload`), as a path."""
    return raw_upload(gr.Image(type="filepath", label="Image", sources=list(IMAGE_SOURCES), height=height))


def architecture_dropdown(names: list[str]) -> gr.Dropdown:
    """One architecture to look at (``unet`` first where it is registered)."""
    return gr.Dropdown(names, value="unet" if "unet" in names else names[0], label="Architecture")


def read_upload(image_path: str | None) -> Image.Image:
    """Decode an uploaded file as RGB; any problem becomes a message for the user."""
    if not image_path:
        raise gr.Error("Upload an image first (or pick an example).")
    try:
        return load_image(image_path, "RGB")
    except ImageError as exc:
        raise gr.Error(str(exc)) from None


# --- small pieces of presentation


def badge(entry) -> str:
    """``trained`` (with its test mIoU), ``untrained``, or ``yours`` (a user's checkpoint, with the test mIoU its
    manifest claims) for a zoo entry, as an HTML badge."""
    if getattr(entry, "added", False):
        miou = entry.test_miou
        extra = f", its manifest says test mIoU {100 * miou:.1f}" if miou is not None else ""
        return f'<span class="wb-badge wb-own">your checkpoint (this session only){extra}</span>'
    if entry.trained:
        miou = entry.test_miou
        extra = f", CamVid test mIoU {100 * miou:.1f}" if miou is not None else ""
        return f'<span class="wb-badge wb-trained">trained{extra}</span>'
    return '<span class="wb-badge wb-untrained">untrained: random weights, no checkpoint yet</span>'


def fast_png(image: Image.Image) -> Image.Image:
    """Ask Gradio's PNG save for zlib level 1 (Pillow reads ``encoderinfo`` as save options).

    On a label map this encodes several times faster than the default level, for a somewhat larger
    file (the request benchmark's "image encoding" stage)."""
    image.encoderinfo = {"compress_level": 1}
    return image


@contextlib.contextmanager
def clock(timings: dict | None, key: str):
    """Add the block's wall time (ms) to ``timings[key]`` (for ``workbench bench --request``)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t) * 1e3


def engine_markdown() -> str:
    """Which engine was asked for, and for every model that has run so far, which engine and precision ran and why."""
    asked = engine()
    how = {
        "auto": "each model runs on the fastest engine and precision whose labels match PyTorch fp32 (measured at launch, once per machine, and cached; PyTorch stands in until a model's measurement ends)",
        "torch": "PyTorch for every model",
    }.get(asked, f"{asked} for every model")
    if not _takes_engine(Zoo) and asked != "torch":
        how = "this build has only the PyTorch engine"
    text = f"**Inference engine: `{asked}`** (`--engine`, `WORKBENCH_ENGINE`): {how}."
    if _ENGINE_CHOICES:
        items = "\n".join(f"- `{n}`: {html.escape(e)} {html.escape(p)}" + (f": {html.escape(r)}" if r else "") for n, (e, p, r) in sorted(_ENGINE_CHOICES.items()))
        text += f"\n<details><summary>Chosen so far: {len(_ENGINE_CHOICES)} model(s)</summary>\n\n{items}\n</details>"
    else:
        text += " Each Compare card says which engine and precision ran it (hover it for why)."
    return text


def status_markdown() -> str:
    """The engine choice (:func:`engine_markdown`); plugins that failed to import and checkpoints that were
    refused: the rest of the app works without them."""
    parts = [engine_markdown()]
    plugin_errors = workbench.plugin_errors()
    if plugin_errors:
        items = "\n".join(f"- `{Path(k).name}`: {html.escape(v)}" for k, v in plugin_errors.items())
        parts.append(f"**{len(plugin_errors)} plugin(s) failed to load** (the others work):\n{items}")
    refused = zoo().checkpoint_errors
    if refused:
        items = "\n".join(f"- `{name}`: {html.escape(err)}" for name, err in refused.items())
        parts.append(f"**{len(refused)} checkpoint(s) refused** (those architectures run untrained or not at all):\n{items}")
    return "\n\n".join(parts)
