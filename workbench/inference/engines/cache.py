"""Where engines keep what they convert and what ``auto`` decided, on disk.

``$WORKBENCH_CACHE_DIR/engines`` (default ``~/.cache/workbench/engines``):

    models/<weights sha256>/        converted models of one checkpoint (OpenVINO IR, ONNX), per library version
    models/<weights sha256>/ov/     OpenVINO's compiled-blob cache (CACHE_DIR)
    decisions/<key digest>.json     one ``auto`` decision: the key it was measured under, the choice, the figures

A decision is trusted only if it parses, has the expected schema and its key equals the current one
(weights sha256, CPU instruction set, native bf16, threads, versions of torch, OpenVINO, ONNX Runtime and the
workbench, the int8 model if one exists); anything else is ignored and measured again. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import torch

from ... import __version__
from ...io.checkpoint import atomic_write_bytes
from ...system.allocator import active_allocator
from ...system.machine import cpu_supports_bf16, isa_caps
from . import ENGINES

__all__ = ["cache_root", "engines_dir", "artifacts_dir", "decision_key", "decision_path", "read_decision", "write_decision", "library_version", "int8_ir_path", "SCHEMA"]

SCHEMA = 2  # 2: OpenVINO bf16 candidates, int8 judged by its stored test agreement. Bump when a decision file's layout changes: older files are then ignored


def cache_root() -> Path:
    """``$WORKBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/workbench``, else ``~/.cache/workbench``."""
    env = os.environ.get("WORKBENCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "workbench"


def engines_dir() -> Path:
    return cache_root() / "engines"


def artifacts_dir(weights_sha256: str) -> Path:
    """The folder of one checkpoint's converted models (created)."""
    path = engines_dir() / "models" / weights_sha256
    path.mkdir(parents=True, exist_ok=True)
    return path


def library_version(name: str) -> str | None:
    """Installed version of a distribution, without importing it (None when absent)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def decision_key(weights_sha256: str, *, threads: int | None = None, precision: str = "auto", max_side: int = 1024, int8: Path | None = None) -> dict:
    """Everything an ``auto`` decision depends on: a decision measured under another key is not trusted."""
    return {
        "weights_sha256": weights_sha256,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": isa_caps(),
        "bf16": cpu_supports_bf16(),
        "threads": int(threads or torch.get_num_threads()),
        "allocator": active_allocator(),  # OpenVINO cannot run under a preloaded one; torch's speed depends on it
        "precision": precision,
        "max_side": int(max_side),
        "torch": torch.__version__,
        "openvino": library_version("openvino"),
        "onnxruntime": library_version("onnxruntime"),
        "workbench": __version__,
        "int8": None if int8 is None else f"{Path(int8).name} {Path(int8).with_suffix('.bin').stat().st_size} {Path(int8).with_suffix('.bin').stat().st_mtime_ns}",
    }


def decision_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return engines_dir() / "decisions" / f"{key['weights_sha256'][:16]}-{digest[:24]}.json"


def read_decision(key: dict) -> dict | None:
    """The stored decision for ``key``, or None when there is none or it is unreadable, malformed or for another key."""
    try:
        data = json.loads(decision_path(key).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("key") != key:
        return None
    choice = data.get("choice")
    if not isinstance(choice, dict) or choice.get("engine") not in ENGINES or not isinstance(choice.get("precision"), str):
        return None
    if not isinstance(data.get("reason"), str) or not isinstance(data.get("candidates"), list):
        return None
    return data


def write_decision(key: dict, data: dict) -> Path:
    path = decision_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps({"schema": SCHEMA, "key": key, **data}, indent=2) + "\n").encode(), durable=False)
    return path


def int8_ir_path(manifest_path: str | os.PathLike | None, artifacts: Path | None) -> Path | None:
    """Where an accepted int8 IR of this checkpoint lies, if one does."""
    candidates = []
    if manifest_path is not None:
        p = Path(manifest_path)
        candidates.append(p.with_name(p.stem + ".int8.xml"))  # what `workbench quantize` writes (inference/int8.py)
    if artifacts is not None:
        candidates.append(Path(artifacts) / "openvino_int8.xml")
    return next((c for c in candidates if c.is_file() and c.with_suffix(".bin").is_file()), None)
