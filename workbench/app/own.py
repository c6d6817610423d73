"""Bring your own checkpoint: a workbench checkpoint of the user's joins Compare and Evaluate, for their session only.

Two ways in, both ending in the app's zoo (:meth:`~workbench.inference.zoo.Zoo.add`) under a key nobody else
can guess (``own-`` + random hex) and in the session's state, which is the only place the key is listed:

- an upload of the two files ``workbench export`` / ``save_checkpoint`` write: the manifest (``.json``) and its
  weights (``.safetensors``). Both are size-checked before being read, copied into a private temporary folder
  and loaded by :func:`workbench.load_checkpoint` (safetensors only, never pickle; the weights' sha256 must match
  the manifest; the architecture must be registered and the weights must fit it);
- a Hugging Face Hub repository id, fetched by :func:`workbench.io.hub.download_from_hub` (honours
  ``HF_HUB_OFFLINE`` and the Hub cache), refused before the download when the Hub says the weights are larger
  than the upload limit.

A checkpoint is loaded when it is added, so a broken one is refused at once with the loader's message rather than
failing later in a card. It runs on PyTorch (``auto``'s engine measurement is for the shipped checkpoints). It
is forgotten when the session's state is deleted (Gradio calls :func:`forget` an hour after the tab is closed), and
in any case :data:`IDLE_TTL_S` after its last use; at most :data:`MAX_PER_SESSION` per session and
:data:`MAX_ACTIVE` in the whole server are kept, since each holds a model in memory.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from workbench.io.checkpoint import atomic_write_bytes
from workbench.io.hub import WEIGHTS_NAME, HubError, download_from_hub, hub_file_size
from workbench.io.manifest import CheckpointError, Manifest
from workbench.models.registry import list_architectures

from .common import HEAVY, max_upload_bytes, zoo

__all__ = ["OwnPanel", "OwnCheckpoint", "add_checkpoint", "forget", "is_own", "touch", "active", "MAX_PER_SESSION", "MAX_ACTIVE", "IDLE_TTL_S", "MAX_MANIFEST_BYTES"]

PREFIX = "own-"
MAX_PER_SESSION = 3  # Compare has this many card slots for a session's own checkpoints
MAX_ACTIVE = 12  # in the whole server: each is a model held in memory
IDLE_TTL_S = 3600  # an own checkpoint unused this long is dropped (also when Gradio did not say the session ended)
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few kB; anything this large is not one
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_FOLDER = Path(tempfile.gettempdir()) / "segmentation-workbench" / "own"


@dataclass(frozen=True)
class OwnCheckpoint:
    """One checkpoint a user added: its zoo key, what the page calls it, and its private folder (None: a Hub
    download, which lives in the Hub cache)."""

    key: str
    label: str
    folder: str | None = None


_LOCK = threading.Lock()
_ACTIVE: dict[str, tuple[OwnCheckpoint, float]] = {}  # key -> (checkpoint, last used)


def is_own(name: str) -> bool:
    """Whether ``name`` is the zoo key of a user's checkpoint (not a registered architecture)."""
    return name.startswith(PREFIX)


def active() -> list[str]:
    """The keys of every user checkpoint the server holds now."""
    with _LOCK:
        return list(_ACTIVE)


def touch(names) -> None:
    """Mark the user checkpoints among ``names`` as just used (they are dropped :data:`IDLE_TTL_S` after their last use)."""
    now = time.monotonic()
    with _LOCK:
        for name in names or ():
            if name in _ACTIVE:
                _ACTIVE[name] = (_ACTIVE[name][0], now)


def _drop(own: OwnCheckpoint) -> None:
    zoo().remove(own.key)
    if own.folder:
        shutil.rmtree(own.folder, ignore_errors=True)


def forget(state: list[dict] | None) -> None:
    """Drop a session's checkpoints (the session state's ``delete_callback``; also "Remove")."""
    for item in state or ():
        with _LOCK:
            found = _ACTIVE.pop(item.get("key", ""), None)
        if found is not None:
            _drop(found[0])


def _sweep(now: float) -> None:
    """Drop every checkpoint unused for :data:`IDLE_TTL_S`, and the folders a stopped server left behind (older
    than that and not held; a held checkpoint's weights are in memory, its folder only a copy)."""
    with _LOCK:
        stale = [own for own, used in _ACTIVE.values() if now - used > IDLE_TTL_S]
        for own in stale:
            _ACTIVE.pop(own.key, None)
        held = set(_ACTIVE)
    for own in stale:
        _drop(own)
    for folder in _FOLDER.glob(PREFIX + "*") if _FOLDER.is_dir() else ():
        try:
            if folder.name not in held and time.time() - folder.stat().st_mtime > IDLE_TTL_S:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue  # removed meanwhile


# --- getting the files


def _upload_paths(files) -> tuple[Path, Path]:
    """The uploaded manifest and weights, checked for kind and size before anything reads them."""
    paths = [Path(f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", f)) for f in (files or [])]
    manifests = [p for p in paths if p.suffix.lower() == ".json"]
    weights = [p for p in paths if p.suffix.lower() == ".safetensors"]
    others = [p.name for p in paths if p not in manifests and p not in weights]
    if others:
        raise gr.Error(f"Refused: {', '.join(others)}. A workbench checkpoint is two files: its manifest (.json) and its weights (.safetensors); "
                       "pickled PyTorch files (.pt, .pth, .bin, .ckpt) are never loaded.")
    if len(manifests) != 1 or len(weights) != 1:
        raise gr.Error(f"Upload exactly two files, the checkpoint's manifest (.json) and its weights (.safetensors); got {len(manifests)} .json and {len(weights)} .safetensors.")
    limit = max_upload_bytes()
    if manifests[0].stat().st_size > MAX_MANIFEST_BYTES:
        raise gr.Error(f"Refused: {manifests[0].name} is {manifests[0].stat().st_size / 2**20:.1f} MiB; a workbench manifest is a few kB.")
    if weights[0].stat().st_size > limit:
        raise gr.Error(f"Refused: {weights[0].name} is {weights[0].stat().st_size / 1e6:.1f} MB; uploads are limited to {limit / 1e6:.0f} MB.")
    return manifests[0], weights[0]


def stage_upload(files, folder: Path) -> tuple[Path, str]:
    """Copy an uploaded manifest + weights into ``folder`` (created) as ``workbench.json`` + ``model.safetensors``,
    the manifest pointing at the copy; returns the copy's path and the uploaded manifest's name (without ``.json``). Refuses (``gr.Error``) wrong kinds of files,
    oversized ones and an unreadable manifest; the weights themselves are checked when the checkpoint loads."""
    manifest_file, weights_file = _upload_paths(files)
    try:
        manifest = Manifest.read(manifest_file)
    except CheckpointError as exc:
        raise gr.Error(f"Refused: {manifest_file.name} is not a workbench manifest: {exc}") from None
    if manifest.architecture not in list_architectures():
        raise gr.Error(f"Refused: {manifest_file.name} names architecture {manifest.architecture!r}, which this app does not have "
                       f"(it has {', '.join(list_architectures())}).")
    folder.mkdir(parents=True, exist_ok=False)
    shutil.copyfile(weights_file, folder / WEIGHTS_NAME)
    data = manifest.to_dict()
    data["weights"] = {**data.get("weights", {}), "file": WEIGHTS_NAME}
    path = folder / "workbench.json"
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode(), durable=False)
    return path, manifest_file.stem


def fetch_hub(repo_id: str) -> Path:
    """The manifest of a Hub checkpoint, downloaded (or found in the Hub cache); refused when it is too large."""
    repo_id = (repo_id or "").strip()
    if not _REPO_ID.match(repo_id):
        raise gr.Error(f"{repo_id!r} is not a Hub repository id; write it as owner/name, e.g. me/camvid-unet.")
    limit = max_upload_bytes()
    try:
        size = hub_file_size(repo_id, WEIGHTS_NAME)  # None offline or when the Hub does not say
        if size is not None and size > limit:
            raise gr.Error(f"Refused: {repo_id}'s weights are {size / 1e6:.1f} MB; checkpoints are limited to {limit / 1e6:.0f} MB here.")
        path = download_from_hub(repo_id)
    except (HubError, CheckpointError) as exc:
        raise gr.Error(str(exc)) from None
    weights = path.parent / (Manifest.read(path).weights.get("file") or WEIGHTS_NAME)
    if weights.stat().st_size > limit:
        raise gr.Error(f"Refused: {repo_id}'s weights are {weights.stat().st_size / 1e6:.1f} MB; checkpoints are limited to {limit / 1e6:.0f} MB here.")
    return path


# --- adding


def _label(manifest: Manifest, source: str) -> str:
    return f"{manifest.architecture} · yours ({source})"


def add_checkpoint(files, repo_id: str | None, state: list[dict] | None) -> tuple[list[dict], OwnCheckpoint]:
    """Add a user's checkpoint (uploaded ``files``, else the Hub ``repo_id``) to the zoo for the session whose
    checkpoints are ``state``; returns the new state and the checkpoint. Raises ``gr.Error`` with the reason when
    it is refused or does not load."""
    state = [s for s in (state or []) if s.get("key") in set(active())]  # some may have expired
    if len(state) >= MAX_PER_SESSION:
        raise gr.Error(f"This session already has {MAX_PER_SESSION} checkpoints of yours; remove one first.")
    now = time.monotonic()
    _sweep(now)
    if len(active()) >= MAX_ACTIVE:
        raise gr.Error("The server holds as many uploaded checkpoints as it can right now; try again in a while.")
    key = PREFIX + uuid.uuid4().hex[:12]
    folder = None
    try:
        if files:
            folder = _FOLDER / key
            path, source = stage_upload(files, folder)
        elif repo_id and repo_id.strip():
            path = fetch_hub(repo_id)
            source = repo_id.strip()
        else:
            raise gr.Error("Choose the two files of a checkpoint (.json and .safetensors), or type a Hub repository id.")
        manifest = Manifest.read(path)
        own = OwnCheckpoint(key, _label(manifest, source), str(folder) if folder else None)
        zoo().add(key, path, title=own.label, engine="torch")
        try:
            zoo().predictor(key)  # load it now: a bad file is refused here, with the loader's reason
        except Exception as exc:
            zoo().remove(key)
            raise gr.Error(f"Refused: the checkpoint does not load: {exc}") from None
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    with _LOCK:
        _ACTIVE[key] = (own, now)
    return state + [{"key": own.key, "label": own.label}], own


def _listing(state: list[dict]) -> str:
    if not state:
        return f"No checkpoint of yours yet (at most {MAX_PER_SESSION} per session; they stay for this session only)."
    items = []
    for s in state:
        entry = zoo().entries.get(s["key"])
        miou = entry.manifest.test_miou if entry is not None else None
        extra = f", its manifest says test mIoU {100 * miou:.1f}" if miou is not None else ""
        classes = f"{len(entry.manifest.classes)} classes" if entry is not None and entry.manifest.classes else ""
        items.append(f"- **{html.escape(s['label'])}**: {classes}{extra}")
    return "Yours, for this session only (select them in Compare and Evaluate):\n" + "\n".join(items)


class OwnPanel:
    """The "Your checkpoint" accordion: upload or Hub id, the session's list, and removal. :meth:`wire` updates
    the model choices of Compare and Evaluate."""

    def __init__(self) -> None:
        limit = max_upload_bytes() / 1e6
        with gr.Accordion("Add your own checkpoint", open=False, elem_id="wb-own"):
            gr.Markdown(
                "A workbench checkpoint (the `.json` manifest and `.safetensors` weights that `workbench train` / `export` "
                f"write, at most {limit:.0f} MB), or a Hub repository made by `workbench hub-push`. It joins Compare and "
                "Evaluate for this session only and runs on PyTorch; nobody else sees it. Pickled files are never loaded."
            )
            self.files = gr.File(label="Manifest + weights", file_count="multiple", file_types=[".json", ".safetensors"], type="filepath",
                                 elem_id="wb-own-files")
            self.repo = gr.Textbox(label="…or a Hub repository id", placeholder="owner/name")
            with gr.Row():
                self.add = gr.Button("Add", variant="secondary", size="sm")
                self.remove_choice = gr.Dropdown([], label="Remove", scale=2)
                self.remove = gr.Button("Remove", size="sm")
            self.listing = gr.Markdown(_listing([]))
        # no time to live: Gradio's counts from the last change of the state, not from the last use; it deletes the
        # state (calling forget) once the tab has been closed for a while, and _sweep drops what sits idle
        self.state = gr.State([], delete_callback=forget)

    def wire(self, names: list[str], compare_archs: gr.CheckboxGroup, evaluate_archs: gr.CheckboxGroup | None) -> None:
        """``names``: the registered architectures (the choices before any own checkpoint)."""
        targets = [c for c in (compare_archs, evaluate_archs) if c is not None]

        def choices(state):
            return [(n, n) for n in names] + [(s["label"], s["key"]) for s in state]

        def after(state, selected_lists, new_key=None):
            out = [state, _listing(state), gr.update(choices=[(s["label"], s["key"]) for s in state], value=None), None, ""]
            keys = {s["key"] for s in state}
            for selected in selected_lists:
                value = [v for v in (selected or []) if not is_own(v) or v in keys] + ([new_key] if new_key else [])
                out.append(gr.update(choices=choices(state), value=value))
            return out

        def on_add(files, repo_id, state, *selected):
            if not files and not (repo_id or "").strip():  # nothing chosen yet: say so, change nothing
                gr.Warning("Choose the two files of a checkpoint (.json and .safetensors), or type a Hub repository id.")
                return [gr.skip()] * len(outputs)
            state, own = add_checkpoint(files, repo_id, state)
            gr.Info(f"Added {own.label}: select it in Compare or Evaluate.")
            return after(state, selected, own.key)

        def on_remove(key, state, *selected):
            if not key:
                gr.Warning("Choose one of your checkpoints to remove.")
                return [gr.skip()] * len(outputs)
            forget([s for s in state or [] if s["key"] == key])
            return after([s for s in state or [] if s["key"] != key], selected)

        outputs = [self.state, self.listing, self.remove_choice, self.files, self.repo, *targets]
        self.add.click(on_add, [self.files, self.repo, self.state, *targets], outputs, api_name=False, **HEAVY)
        self.remove.click(on_remove, [self.remove_choice, self.state, *targets], outputs, api_name=False, **HEAVY)
