"""Self-describing checkpoints: ``name.safetensors`` weights plus a ``name.json`` manifest.

The manifest names the architecture and every constructor kwarg, so
``load_checkpoint`` rebuilds any model from the files alone (as smp's
``from_pretrained``); it also carries class names and colours, the input
normalisation, the sha256 of the weights, and metrics and training recipe when
known (its schema: :class:`workbench.io.manifest.Manifest`). Weights are only
ever read with ``safetensors``: a pickle (including a ``torch.save`` zip) is
refused before anything is deserialised.

Both files are written atomically (temporary file, fsync, rename), weights
first, so an interrupted save never leaves a truncated file in place of a
good one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .. import __version__
from ..classes import default_classes, default_normalization
from ..models.registry import UnknownChoiceError, create_model
from .manifest import FORMAT, FORMAT_VERSION, CheckpointError, Manifest, checkpoint_paths, read_manifest

__all__ = ["CheckpointError", "Manifest", "save_checkpoint", "load_checkpoint", "read_manifest", "checkpoint_paths", "sha256_file", "atomic_write_bytes", "atomic_save_tensors", "export_checkpoint", "training_log_path"]

_MAX_HEADER_BYTES = 100 * 1024 * 1024


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder (fsync'd when ``durable``) and rename.

    Readers see the old file or the new one, never a partial one. ``durable=False`` skips the fsync, for
    caches that only need that atomicity, not survival of a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stage_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file to a temporary name beside ``path`` (fsynced); the caller renames it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except Exception as exc:  # safetensors reports I/O failures (disk full, quota) as its own error type
            if isinstance(exc, OSError):
                raise
            raise OSError(f"could not write {path}: {exc}") from exc
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` via a temporary file in the same folder, fsync and rename."""
    os.replace(_stage_tensors(path, tensors, metadata), path)


def _pending_manifest(manifest_path: Path) -> Path:
    """Where a manifest waits while its weights are being put in place (see :func:`save_checkpoint`)."""
    return manifest_path.with_name(f".{manifest_path.name}.pending")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, manifest: dict[str, Any] | None = None, *, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as ``<path>.safetensors`` plus a ``<path>.json`` manifest.

    Args:
        path: ``x``, ``x.json`` or ``x.safetensors`` (the other file goes beside it).
        model: a model from :func:`workbench.create_model` (its ``workbench_config``
            names the architecture and kwargs), or any module if ``manifest`` has
            ``architecture`` and ``kwargs``.
        manifest: extra manifest fields: ``classes`` (list of ``{"name", "color"}``),
            ``normalization`` (``{"mean", "std"}``), ``metrics``, ``training``, ...
        dtype: store floating-point weights in this dtype (e.g. ``torch.float16``);
            they are loaded back as float32.

    Returns:
        The manifest path.
    """
    manifest = dict(manifest or {})
    config = dict(getattr(model, "workbench_config", {}) or {})
    arch = manifest.get("architecture", config.get("architecture"))
    kwargs = manifest.get("kwargs", config.get("kwargs"))
    if not arch or kwargs is None:
        raise CheckpointError("cannot tell the architecture: build the model with workbench.create_model or pass manifest['architecture'] and manifest['kwargs']")
    if config and (config.get("architecture") != arch):
        raise CheckpointError(f"manifest says architecture {arch!r} but the model was built as {config.get('architecture')!r}")
    weights_path, manifest_path = checkpoint_paths(path)

    tensors = {}
    for k, v in model.state_dict().items():
        t = v.detach().to("cpu", copy=True).contiguous()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[k] = t
    staged = _stage_tensors(weights_path, tensors, {"format": "pt"})

    num_classes = int(kwargs.get("num_classes", 0))
    in_chans = int(kwargs.get("in_chans", 3))
    out: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "kwargs": kwargs,
        "classes": default_classes(num_classes),
        "normalization": default_normalization(in_chans),
        "input": {"channels": in_chans, "mode": "L" if in_chans == 1 else "RGB"},
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    out.update({k: v for k, v in manifest.items() if k not in ("weights", "format", "format_version")})
    out["weights"] = {
        "file": weights_path.name,
        "sha256": sha256_file(staged),
        "bytes": staged.stat().st_size,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "as_trained",
    }
    out.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    out["software"] = {"workbench": __version__, "torch": torch.__version__}
    try:
        if len(out["classes"]) != num_classes:
            raise CheckpointError(f"manifest lists {len(out['classes'])} classes but the model has num_classes={num_classes}")
        # Crash-consistent pair: the new manifest is complete on disk (as ".NAME.json.pending") before the
        # new weights replace the old ones; then it replaces the old manifest. A kill between the two
        # renames leaves new weights + pending manifest, which load_checkpoint rolls forward by hash.
        pending = _pending_manifest(manifest_path)
        atomic_write_bytes(pending, (json.dumps(out, indent=2) + "\n").encode())
        os.replace(staged, weights_path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(pending, manifest_path)
    return manifest_path


def _check_safetensors(path: Path) -> None:
    """Refuse anything that is not a safetensors file, without deserialising it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n <= _MAX_HEADER_BYTES and 8 + n <= size and head[8:9] == b"{":
            return  # a well-formed safetensors header (its length may well start with byte 0x80)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(
            f"{path.name} is a pickle / torch.save file, not safetensors; refusing to unpickle it "
            "(pickles can run arbitrary code). Convert it with safetensors.torch.save_file on a trusted machine."
        )
    if len(head) < 9:
        raise CheckpointError(f"{path.name} is truncated or empty ({size} bytes): not a safetensors file")
    raise CheckpointError(f"{path.name} is not a valid safetensors file (bad header); it may be truncated or of another format")


def _roll_forward(manifest_path: Path, digest: str) -> dict[str, Any] | None:
    """After a save interrupted between its two renames: the pending manifest of exactly these weights."""
    pending = _pending_manifest(manifest_path)
    try:
        candidate = json.loads(pending.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(candidate, dict) or not isinstance(candidate.get("weights"), dict) or candidate["weights"].get("sha256") != digest:
        return None
    if not isinstance(candidate.get("architecture"), str) or not isinstance(candidate.get("kwargs"), dict):
        return None
    try:
        os.replace(pending, manifest_path)  # finish the interrupted save
    except OSError:
        pass  # read-only folder: use it without repairing
    candidate["_path"] = str(manifest_path)
    return candidate


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, Manifest]:
    """Load a checkpoint saved by :func:`save_checkpoint`.

    Args:
        path: the ``.json`` manifest, the ``.safetensors`` weights or their common stem.
        device: where to put the model.

    Returns:
        ``(model, manifest)``: the model in eval mode with float32 weights, and its
        :class:`~workbench.io.manifest.Manifest` (typed accessors such as ``manifest.test_miou``;
        also a mapping over the JSON keys, ``manifest["classes"]``, as the plain dict it used to be).

    Raises:
        CheckpointError: missing or invalid manifest, weights that are not
            safetensors, a hash mismatch, an unknown architecture or weights
            that do not fit the architecture. The message says which and why.
    """
    manifest = read_manifest(path)
    manifest_path = Path(manifest["_path"])
    weights_path = manifest_path.parent / manifest["weights"].get("file", manifest_path.with_suffix(".safetensors").name)
    if weights_path.parent != manifest_path.parent:
        raise CheckpointError(f"{manifest_path}: weights.file must name a file beside the manifest")
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {weights_path.name} named by {manifest_path.name} does not exist")
    _check_safetensors(weights_path)
    digest = sha256_file(weights_path)
    if digest != manifest["weights"]["sha256"]:
        manifest = _roll_forward(manifest_path, digest) or manifest
    if digest != manifest["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights_path.name}: sha256 {digest[:12]}... does not match the manifest ({manifest['weights']['sha256'][:12]}...); "
            "the weights were modified or corrupted"
        )
    kwargs = dict(manifest["kwargs"])
    if "encoder_weights" in kwargs:
        kwargs["encoder_weights"] = None  # the checkpoint holds the weights: never download
    num_classes = kwargs.get("num_classes")
    classes = manifest.get("classes")
    if isinstance(classes, list) and len(classes) != num_classes:
        raise CheckpointError(f"{manifest_path.name}: {len(classes)} classes listed but num_classes={num_classes}")
    try:
        model = create_model(manifest["architecture"], **kwargs)
    except UnknownChoiceError as exc:
        raise CheckpointError(f"{manifest_path.name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{manifest_path.name}: cannot build {manifest['architecture']!r} with the stored kwargs: {exc}") from None
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{weights_path.name}: cannot read safetensors: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise CheckpointError(f"{weights_path.name} does not fit {manifest['architecture']} with the manifest's kwargs: " + "; ".join(parts))
    state = {k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    typed = Manifest.from_dict(manifest)
    model.workbench_manifest = typed
    return model.to(device).eval(), typed


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, dtype: torch.dtype | None = torch.float16, extra: dict[str, Any] | None = None) -> Path:
    """Copy a checkpoint under a new name (e.g. a run's ``best`` into ``checkpoints/``), verified on the way.

    The source is loaded (hash checked), and saved again with its manifest and
    ``extra`` fields merged in; weights are stored in ``dtype`` (fp16 by default).

    Returns:
        The new manifest path.
    """
    model, manifest = load_checkpoint(src)
    keep = {k: v for k, v in manifest.to_dict().items() if k not in ("weights", "software", "created_utc", "format", "format_version")}
    keep.update(extra or {})
    out = save_checkpoint(dst, model, keep, dtype=dtype)
    log = training_log_path(src)
    if log is not None:  # the run's log travels with its weights (the app's Leaderboard draws the curves)
        records = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if _is_record(line)]
        atomic_write_bytes(training_log_path(out, existing=False), ("\n".join(records) + "\n").encode())
    return out


TRAINING_LOG_MAX_BYTES = 16 * 2**20


def training_log_path(manifest_path: str | os.PathLike, existing: bool = True) -> Path | None:
    """The training log (``metrics.jsonl``, one JSON record per epoch) of the checkpoint whose manifest is
    ``manifest_path``: ``<name>.metrics.jsonl`` beside a shipped checkpoint, or the run folder's
    ``metrics.jsonl`` beside a run's checkpoint. ``existing=False`` gives the shipped name whether or not it
    exists; otherwise None when there is no log (or it is over :data:`TRAINING_LOG_MAX_BYTES`)."""
    p = Path(manifest_path)
    shipped = p.with_name(p.name.removesuffix(".json").removesuffix(".safetensors") + ".metrics.jsonl")
    if not existing:
        return shipped
    for c in (shipped, p.with_name("metrics.jsonl")):
        if c.is_file() and c.stat().st_size <= TRAINING_LOG_MAX_BYTES:
            return c
    return None


def _is_record(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # a line cut by a kill
        return False
