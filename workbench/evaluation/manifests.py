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

__all__ = [
    "STANDARD_PROTOCOL",
    "MANIFEST_METRIC_KEYS",
    "INT8_MAX_MIOU_DROP",
    "protocol_deviations",
    "update_manifest",
    "write_int8_entry",
    "int8_verdict",
    "record_int8",
    "collect_checkpoints",
]

# int8 is accepted for a checkpoint only where its test mIoU (the standard protocol) is at most this far below fp32's.
INT8_MAX_MIOU_DROP = 0.005

MANIFEST_METRIC_KEYS = ("miou", "pixel_accuracy", "mean_class_accuracy", "per_class_iou", "class_names", "confusion")

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
    opts = result.get("options") or {}
    if opts.get("engine", "torch") != "torch":
        if opts.get("precision") == "int8":
            return record_int8(result)
        raise EvaluationError("manifests record the torch fp32 figures and the int8 model's; an fp32 engine's result is not stored (evaluate without --update-manifests)")
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


def _write(path: Path, manifest: dict) -> Path:
    atomic_write_bytes(path, (json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n").encode())
    return path


def write_int8_entry(checkpoint, info: dict) -> Path:
    """Record a freshly written int8 model (:func:`workbench.inference.quantize.quantize_checkpoint`'s ``info``) as
    ``inference.int8``, not accepted until :func:`record_int8` has its test mIoU; atomic, weights untouched."""
    manifest = read_manifest(checkpoint)
    path = Path(manifest.pop("_path"))
    entry = dict(info)
    entry.update({"accepted": False, "reason": "not evaluated yet (workbench quantize evaluates it on the test split)"})
    inference = manifest.get("inference")
    manifest["inference"] = inference = dict(inference) if isinstance(inference, dict) else {}
    inference["int8"] = entry
    return _write(path, manifest)


def int8_verdict(int8_miou: float, fp32_miou: float | None, max_drop: float = INT8_MAX_MIOU_DROP) -> tuple[bool, str]:
    """The acceptance rule: int8 is accepted only where its test mIoU is at most ``max_drop`` below fp32's."""
    if fp32_miou is None or int8_miou is None:
        return False, "no fp32 test mIoU in the manifest to compare with (run workbench eval --update-manifests first)"
    drop = fp32_miou - int8_miou
    if drop <= max_drop + 1e-12:
        return True, f"test mIoU {100 * int8_miou:.2f} vs fp32 {100 * fp32_miou:.2f}: drop {100 * drop:.2f} points <= {100 * max_drop:.1f}"
    return False, f"test mIoU {100 * int8_miou:.2f} vs fp32 {100 * fp32_miou:.2f}: drop {100 * drop:.2f} points > {100 * max_drop:.1f}"


def record_int8(result: dict, max_drop: float = INT8_MAX_MIOU_DROP) -> Path:
    """Write an int8 evaluation (``workbench eval --engine openvino --precision int8``, standard protocol on the
    split the fp32 figure was measured on) into ``inference.int8``: ``test_miou``, ``fp32_test_miou``,
    ``miou_drop_points``, ``accepted`` and why, the label agreement with fp32 eager when measured; atomic."""
    deviations = protocol_deviations(result.get("options") or {})
    if deviations:
        raise EvaluationError(f"int8 acceptance uses the standard protocol ({STANDARD_PROTOCOL}); this result used {', '.join(deviations)}")
    if (result.get("options") or {}).get("precision") != "int8":
        raise EvaluationError("not an int8 result")
    split = result["split"]
    manifest = read_manifest(result["checkpoint"])
    path = Path(manifest.pop("_path"))
    entry = ((manifest.get("inference") or {}).get("int8")) or None
    if not isinstance(entry, dict):
        raise EvaluationError(f"{path.name} records no int8 model (run workbench quantize)")
    fp32 = (((manifest.get("metrics") or {}).get(split)) or {}).get("miou")
    int8 = result["metrics"]["miou"]
    accepted, reason = int8_verdict(int8, fp32, max_drop)
    entry.update(
        {
            f"{split}_miou": int8,
            f"fp32_{split}_miou": fp32,
            "miou_drop_points": None if fp32 is None else round(100 * (fp32 - int8), 3),
            "max_drop_points": round(100 * max_drop, 3),
            "evaluated_on": {"split": split, "n_images": result["n_images"], "dataset": result.get("dataset")},
            "accepted": accepted,
            "reason": reason,
        }
    )
    if split != "test":
        entry["accepted"], entry["reason"] = False, f"acceptance needs the test split, this was {split}"
    if result.get("label_agreement"):
        entry[f"{split}_label_agreement"] = result["label_agreement"]
    if (result.get("latency_ms") or {}).get("p50") is not None:
        entry["eval_latency_ms_p50"] = round(result["latency_ms"]["p50"], 1)
    return _write(path, manifest)


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
