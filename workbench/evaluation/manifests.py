"""Evaluation results into checkpoint manifests, and the checkpoints an evaluation takes.

A manifest records metrics of the standard protocol only (:data:`STANDARD_PROTOCOL`): every
image of the split, one full-resolution pass, no test-time augmentation. :func:`update_manifest`
refuses anything else; :func:`collect_checkpoints` turns command-line arguments (globs welcome)
into manifest paths.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterable

from ..io.checkpoint import CheckpointError, atomic_write_bytes, read_manifest
from ..io.manifest import Manifest
from .evaluate import EvaluationError
from .report import jsonable

__all__ = ["STANDARD_PROTOCOL", "MANIFEST_METRIC_KEYS", "protocol_deviations", "update_manifest", "collect_checkpoints"]

MANIFEST_METRIC_KEYS = ("miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "class_names")

STANDARD_PROTOCOL = "every image, one full-resolution pass"


def protocol_deviations(options: dict) -> list[str]:
    """The evaluation options (``flip``, ``scales``, ``limit``) by which ``options`` leave the standard
    protocol that manifests and leaderboards record (:data:`STANDARD_PROTOCOL`)."""
    return [k for k in ("flip", "scales", "limit") if options.get(k) not in (None, False)]


def update_manifest(result: dict) -> Path:
    """Write ``result``'s metrics into its checkpoint manifest (``metrics.<split>``, plus ``cost``); atomic.

    Only the manifest changes: the weights and their sha256 stay as they are. A result evaluated with
    test-time augmentation or on part of the split is refused (:func:`protocol_deviations`).
    """
    deviations = protocol_deviations(result.get("options") or {})
    if deviations:
        raise EvaluationError(f"manifests record the standard protocol ({STANDARD_PROTOCOL}); this result used {', '.join(deviations)}")
    manifest = read_manifest(result["checkpoint"])
    path = Path(manifest.pop("_path"))
    m = result["metrics"]
    entry = {k: m[k] for k in MANIFEST_METRIC_KEYS if k in m}
    entry.update({"split": result["split"], "n_images": result["n_images"], "options": result.get("options")})
    if "binary" in result:
        entry["binary"] = result["binary"]
    manifest.setdefault("metrics", {})[result["split"]] = entry
    if "cost" in result:
        manifest["cost"] = result["cost"]
    atomic_write_bytes(path, (json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n").encode())
    return path


def collect_checkpoints(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand globs (if the shell did not) and keep the paths whose manifest reads.

    Returns:
        ``(manifests, warnings)``: de-duplicated manifest paths in the given order,
        and one message per argument that is not a checkpoint (e.g. a results JSON).
    """
    out: list[Path] = []
    seen: set[str] = set()
    warnings: list[str] = []
    for raw in paths:
        s = str(raw)
        expanded = sorted(glob.glob(s)) if glob.has_magic(s) and not Path(s).exists() else [s]
        if not expanded:
            warnings.append(f"{s}: no file matches")
        for p in expanded:
            try:
                manifest = Manifest.read(p)
            except CheckpointError as exc:
                warnings.append(f"skipping {p}: not a checkpoint ({exc})")
                continue
            key = str(manifest.path.resolve())
            if key not in seen:
                seen.add(key)
                out.append(manifest.path)
    return out, warnings
