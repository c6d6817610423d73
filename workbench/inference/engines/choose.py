"""``engine="auto"``: measure every engine x precision on this checkpoint and machine, keep the fastest whose
labels pass the parity rule, and remember the decision on disk.

Candidates: torch fp32 (the fast path: folded BN, channels_last), torch bf16 and OpenVINO bf16 only where the CPU
has native bf16 (emulated bf16 is slower than fp32) and the manifest does not pin fp32, OpenVINO fp32, ONNX Runtime fp32, and
OpenVINO int8 where an int8 IR of the checkpoint exists (:func:`.openvino.int8_ir_path`). Each runs on a few
images, interleaved in one process with fp32 eager (the reference and the 1.00x of the ratios): CamVid val
images (or the checkpoint's dataset's) from the data root when present, else a fixed-seed synthetic image;
the record says which. Labels must agree with fp32 eager on :data:`~workbench.inference.parity_rule.PARITY_OVERALL`
of the pixels overall and :data:`~workbench.inference.parity_rule.PARITY_WORST_IMAGE` of every image.
"""

from __future__ import annotations

import datetime
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ...io.images import load_image
from ...io.manifest import Manifest
from ...paths import examples_dir, resolve_data_root
from ...system.machine import cpu_supports_bf16
from ..parity_rule import PARITY_OVERALL, PARITY_WORST_IMAGE, parity_holds
from . import CPU_ENGINES, Engine, engine_class
from .cache import decision_key, int8_ir_path, read_decision, write_decision

__all__ = ["Choice", "choose_engine", "candidates", "int8_refusal", "measurement_images", "measure", "measurement_count", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NUM_IMAGES = 3
ROUNDS = 5  # timed calls per candidate, interleaved
SYNTHETIC_SIZE = (360, 480)  # the fallback image: a CamVid frame's size
_MEASUREMENTS = [0]  # measure() runs in this process: a second Predictor on a cached checkpoint adds none


def measurement_count() -> int:
    return _MEASUREMENTS[0]


@dataclass
class Choice:
    engine: str
    precision: str
    reason: str  # one line: why this engine
    record: dict = field(default_factory=dict)  # the stored decision: key, candidates, images
    built: Engine | None = None  # the chosen engine, when measuring just built it
    cached: bool = False


def candidates(manifest: Manifest, manifest_path=None, artifacts: Path | None = None) -> list[tuple[str, str]]:
    """The (engine, precision) pairs worth measuring for this checkpoint on this CPU."""
    out = [("torch", "fp32")]
    bf16 = cpu_supports_bf16() and manifest.pinned_precision != "fp32"
    if bf16:
        out.append(("torch", "bf16"))
    out += [("openvino", "fp32"), ("onnxruntime", "fp32")]
    if bf16:
        out.append(("openvino", "bf16"))
    if int8_ir_path(manifest_path, artifacts) is not None and int8_refusal(manifest) is None:
        out.append(("openvino", "int8"))
    return out


def int8_refusal(manifest: Manifest) -> str | None:
    """Why the checkpoint's int8 model is not a candidate, from what ``workbench quantize`` stored in the manifest
    (``inference.int8``): refused by its mIoU check, or labels that fail the parity rule on the test images it
    compared (a few measurement images can pass by luck). None: a candidate (or nothing stored to judge by)."""
    entry = (manifest.get("inference") or {}).get("int8") or {}
    if entry.get("accepted") is False:
        return f"refused by workbench quantize: {entry.get('reason', 'no reason stored')}"
    agreement = entry.get("test_label_agreement") or {}
    mean, worst = agreement.get("mean"), agreement.get("worst")
    if mean is not None and worst is not None and not (mean >= PARITY_OVERALL and worst >= PARITY_WORST_IMAGE):
        return (f"its labels agree with fp32 eager on {100 * mean:.2f}% of the pixels of {agreement.get('images', '?')} test images "
                f"(worst image {100 * worst:.2f}%), under the parity rule ({100 * PARITY_OVERALL:.1f}%, {100 * PARITY_WORST_IMAGE:.1f}%)")
    return None


def measurement_images(manifest: Manifest, mode: str, n: int = NUM_IMAGES, data_root=None) -> tuple[list[Image.Image], str]:
    """Up to ``n`` images of the checkpoint's dataset (val, else test, else train) from the data root, else from
    the examples shipped in the package (a Space has no data root), else one fixed-seed synthetic image
    (:data:`SYNTHETIC_SIZE`); and a description of what was used."""
    dataset = (manifest.dataset_name or "camvid").lower()
    roots = [resolve_data_root(data_root), examples_dir()]  # the data root, else the examples shipped in the package
    for root, folder in ((r, f) for r in roots if r.is_dir() for f in sorted(r.glob(f"{dataset}*"))):
        for split in ("val", "test", "train", "image"):  # "image": the ISBI stack's folder
            files = sorted(p for p in (folder / split).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if (folder / split).is_dir() else []
            images = []
            for path in files[: 2 * n]:
                try:
                    images.append(load_image(path, mode))
                except Exception:
                    continue
                if len(images) == n:
                    break
            if images:
                shipped = " shipped with the package" if root == examples_dir() else ""
                return images, f"{len(images)} {folder.name} {split} images{shipped}"
    gen = torch.Generator().manual_seed(0)
    channels = 1 if mode == "L" else 3
    smooth = F.interpolate(torch.rand(1, channels, 23, 30, generator=gen), size=SYNTHETIC_SIZE, mode="bilinear", align_corners=False)
    arr = (smooth[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return [Image.fromarray(arr[..., 0] if channels == 1 else arr)], f"a synthetic {SYNTHETIC_SIZE[0]}x{SYNTHETIC_SIZE[1]} image (seed 0; no dataset images under the data root)"


def _labels(y: torch.Tensor) -> np.ndarray:
    return y.float()[0].argmax(0).cpu().numpy()


def measure(reference: nn.Module, model: nn.Module, inputs: list[torch.Tensor], pairs: list[tuple[str, str]], *, in_chans: int, artifacts: Path | None, manifest_path=None, rounds: int | None = None, new_size: bool = True) -> tuple[list[dict], dict[tuple[str, str], Engine]]:
    """Time and check every (engine, precision) against fp32 eager ``reference``, interleaved.

    Returns a row per candidate (``engine``, ``precision``, ``latency_ms`` median, ``ratio`` to eager,
    ``label_agreement`` per image, ``parity``, build figures, or ``error``) with eager first, and the engines
    built, by pair.
    """
    _MEASUREMENTS[0] += 1
    rounds = ROUNDS if rounds is None else rounds
    reference = reference.eval()

    @torch.inference_mode()
    def eager(x):
        return reference(x)

    runners: dict[tuple[str, str], Callable] = {("torch eager", "fp32"): eager}
    built: dict[tuple[str, str], Engine] = {}
    rows: dict[tuple[str, str], dict] = {("torch eager", "fp32"): {"engine": "torch eager", "precision": "fp32"}}
    for pair in pairs:
        row = rows[pair] = {"engine": pair[0], "precision": pair[1]}
        t0 = time.perf_counter()
        try:
            built[pair] = runners[pair] = engine_class(pair[0])(model, in_chans=in_chans, precision=pair[1], artifacts=artifacts, manifest_path=manifest_path)
            row["build_s"] = time.perf_counter() - t0
            row.update(built[pair].info)
        except Exception as exc:  # an engine that cannot run this model is reported, never chosen
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    ref_labels = [_labels(eager(x)) for x in inputs]
    for pair, run in list(runners.items()):
        try:
            agree = [float((_labels(run(x)) == ref).mean()) for x, ref in zip(inputs, ref_labels)]  # also the warm-up
        except Exception as exc:
            rows[pair]["error"] = f"{type(exc).__name__}: {exc}"[:300]
            del runners[pair]
            continue
        rows[pair]["label_agreement"] = agree
        rows[pair]["parity"] = parity_holds(agree)
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in runners}
    order = list(runners)
    for r in range(rounds):  # interleaved, rotating the order: load changes touch every candidate alike
        for pair in order[r % len(order):] + order[: r % len(order)]:
            t = time.perf_counter()
            runners[pair](inputs[0]).float()
            times[pair].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(times[("torch eager", "fp32")])
    for pair, ts in times.items():
        rows[pair]["latency_ms"] = statistics.median(ts)
        rows[pair]["ratio"] = base / rows[pair]["latency_ms"]
    if new_size:  # what a new upload size costs: the first call at a size not seen yet, then a second
        h, w = inputs[0].shape[-2:]
        x2 = F.interpolate(inputs[0], size=(h * 5 // 4 + 3, w * 5 // 4 + 7), mode="bilinear", align_corners=False)
        for pair, run in runners.items():
            if pair[0] not in CPU_ENGINES:
                continue
            t = time.perf_counter()
            run(x2)
            first = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            run(x2)
            rows[pair]["new_size"] = {"size": list(x2.shape[-2:]), "first_call_ms": first, "second_call_ms": (time.perf_counter() - t) * 1e3}
    return list(rows.values()), built


def _reason(row: dict, images: str, when: str, cached: bool) -> str:
    agree = row["label_agreement"]
    return (f"{row['engine']} {row['precision']}: {row['ratio']:.1f}x torch eager fp32, labels {100 * sum(agree) / len(agree):.2f}% equal "
            f"(worst image {100 * min(agree):.2f}%) on {images} (measured {when}{', cached' if cached else ''})")


def choose_engine(reference: nn.Module, model: nn.Module, *, weights_sha256: str, manifest: Manifest, preprocess: Callable[[Image.Image], torch.Tensor], mode: str, in_chans: int, artifacts: Path | None, manifest_path=None, max_side: int = 1024, data_root=None) -> Choice:
    """The stored decision for this checkpoint and machine, or a new measurement (stored).

    Args:
        reference: the model as loaded (fp32 eager is the parity reference and the 1.00x).
        model: the model the engines run (BatchNorms folded).
        preprocess: image -> normalised (1, C, h, w) input, as the Predictor makes it.
    """
    key = decision_key(weights_sha256, max_side=max_side, int8=int8_ir_path(manifest_path, artifacts))
    stored = read_decision(key)
    if stored is not None:
        choice = stored["choice"]
        reason = stored["reason"][:-1] + ", cached)" if stored["reason"].endswith(")") else stored["reason"] + " (cached)"
        return Choice(choice["engine"], choice["precision"], reason, stored, cached=True)
    images, described = measurement_images(manifest, mode, data_root=data_root)
    inputs = [preprocess(im).contiguous() for im in images]
    rows, built = measure(reference, model, inputs, candidates(manifest, manifest_path, artifacts), in_chans=in_chans, artifacts=artifacts, manifest_path=manifest_path)
    refused = int8_refusal(manifest)
    if refused and int8_ir_path(manifest_path, artifacts) is not None:  # in the record: why int8 was not measured
        rows.append({"engine": "openvino", "precision": "int8", "error": f"not measured: {refused}"})
    ok = [r for r in rows if r["engine"] != "torch eager" and r.get("parity")]
    best = min(ok, key=lambda r: r["latency_ms"]) if ok else next(r for r in rows if r["engine"] == "torch" and "latency_ms" in r)
    when = datetime.date.today().isoformat()
    reason = _reason(best, described, when, False) if ok else f"torch fp32: no engine passed the parity rule on {described} (measured {when})"
    record = {"choice": {"engine": best["engine"], "precision": best["precision"]}, "reason": reason, "measured": datetime.datetime.now().isoformat(timespec="seconds"), "images": described, "candidates": rows}
    write_decision(key, record)
    return Choice(best["engine"], best["precision"], reason, {"key": key, **record}, built.get((best["engine"], best["precision"])))
