"""int8 post-training quantization of a checkpoint: NNCF over an OpenVINO model, calibrated on training images.

::

    from workbench.inference.quantize import quantize_checkpoint, load_int8
    xml = quantize_checkpoint("checkpoints/camvid_unet.json", calib_images=128)   # checkpoints/camvid_unet.int8.xml/.bin
    net = load_int8("checkpoints/camvid_unet.json")   # an nn.Module returning logits, sha256 checked

or ``workbench quantize checkpoints/camvid_unet.json --accept`` (which also evaluates the int8 model on the
test split and records the result in the manifest, see :mod:`workbench.evaluation.manifests`).

Why this route: benchmarks/int8_cpu_avx2.md measured NNCF + OpenVINO against ONNX Runtime's
``quantize_static`` (QDQ, per channel) on the same checkpoints and calibration images; OpenVINO's int8 was
the faster of the two and kept the labels closer to fp32. The int8 model is an OpenVINO IR (``.xml`` graph +
``.bin`` weights) beside the checkpoint: no pickle, and its sha256 is recorded in the manifest
(``inference.int8``) and verified before every load. It is shipped rather than built on the user's machine
because quantization needs calibration images, which a Space does not have.

The graph takes the normalised image ``(1, C, H, W)`` with dynamic H and W (the model's pad-and-crop inside)
and returns logits ``(1, num_classes, H, W)``, like the PyTorch model.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Iterable

import nncf
import numpy as np
import openvino as ov
import torch
import torch.nn as nn

from ..classes import default_normalization
from ..io.checkpoint import load_checkpoint, sha256_file
from ..io.images import load_image
from ..paths import resolve_data_root
from .int8 import OpenVINOModule, compile_openvino, int8_paths, load_int8, save_ir, to_openvino

__all__ = [
    "DEFAULT_CALIB_IMAGES",
    "DEFAULT_SEED",
    "QuantizeError",
    "calibration_files",
    "normalised_batches",
    "quantize_openvino",
    "quantize_model",
    "quantize_checkpoint",
    # re-exported from .int8
    "to_openvino",
    "compile_openvino",
    "int8_paths",
    "load_int8",
    "OpenVINOModule",
]

DEFAULT_CALIB_IMAGES = 128  # of CamVid's 367 train images (benchmarks/int8_cpu_avx2.md)
DEFAULT_SEED = 0


class QuantizeError(ValueError):
    """Quantization cannot run (no calibration images, a graph that disagrees with PyTorch); the message says why."""


def calibration_files(data_root: str | os.PathLike | None = None, *, dataset: str = "camvid", split: str = "train", n: int = DEFAULT_CALIB_IMAGES, seed: int = DEFAULT_SEED) -> list[Path]:
    """``n`` image files of ``<data_root>/<dataset>/<split>/`` drawn without replacement with ``seed`` (sorted names first)."""
    folder = resolve_data_root(data_root) / dataset / split
    if not folder.is_dir():
        raise QuantizeError(f"no calibration images: {folder} does not exist (point --data-root at the folder holding {dataset}/)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    if not files:
        raise QuantizeError(f"no calibration images in {folder}")
    if n < 1:
        raise QuantizeError(f"calibration needs at least one image, got {n}")
    return sorted(random.Random(seed).sample(files, min(n, len(files))))


def normalised_batches(images: Iterable, mean, std, mode: str = "RGB") -> Iterable[np.ndarray]:
    """``(1, C, H, W)`` float32 arrays of ``images`` (paths, PIL images or arrays), normalised like the Predictor."""
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    for im in images:
        a = np.asarray(load_image(im, mode), dtype=np.float32) / 255.0
        a = a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None]
        yield np.ascontiguousarray((a - m) / s, dtype=np.float32)


def quantize_openvino(ov_model, calibration: list[np.ndarray], *, preset: str = "mixed", fast_bias_correction: bool = True, subset_size: int | None = None):
    """NNCF post-training int8 of an ``openvino.Model``: 8-bit weights (per channel) and activations.

    ``preset="mixed"`` quantizes activations asymmetrically (the ReLU-free logits and skip sums are not centred),
    ``"performance"`` symmetrically.
    """
    preset_value = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[preset]
    return nncf.quantize(
        ov_model,
        nncf.Dataset(calibration),
        preset=preset_value,
        subset_size=subset_size or len(calibration),
        fast_bias_correction=fast_bias_correction,
    )


def quantize_model(model: nn.Module, calibration: list[np.ndarray], *, in_chans: int = 3, **options):
    """``model`` converted to OpenVINO and quantized (:func:`quantize_openvino`); returns the int8 ``openvino.Model``."""
    return quantize_openvino(to_openvino(model, in_chans), calibration, **options)


CHECK_SIZES = ((97, 131), (64, 96))  # odd sizes: the converted graph's dynamic H and W really are dynamic


def check_conversion(model: nn.Module, ov_model, in_chans: int = 3, sizes=CHECK_SIZES, min_agreement: float = 0.999) -> None:
    """Raise QuantizeError unless the converted fp32 graph gives PyTorch's labels at ``sizes``."""
    compiled = compile_openvino(ov_model)
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(1, in_chans, h, w, generator=gen)
        with torch.inference_mode():
            ref = model(x).argmax(1).numpy()
        out = compiled({0: x.numpy()})[0]
        if out.shape[-2:] != (h, w):
            raise QuantizeError(f"the converted graph returned {out.shape} for a {h}x{w} input")
        agree = float((out.argmax(1) == ref).mean())
        if agree < min_agreement:
            raise QuantizeError(f"the converted fp32 graph gives PyTorch's labels on only {100 * agree:.2f}% of a {h}x{w} input")


def quantize_checkpoint(
    path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    seed: int = DEFAULT_SEED,
    out: str | os.PathLike | None = None,
    calibration: list[np.ndarray] | None = None,
    preset: str = "mixed",
    fast_bias_correction: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Quantize checkpoint ``path`` to int8 and write its OpenVINO IR.

    Args:
        path: the checkpoint (``.json`` manifest).
        data_root: where ``<dataset>/train/`` lives (default: ``$WORKBENCH_DATA_ROOT``, then ``../shared/data``).
        calib_images: how many training images calibrate (drawn with ``seed``; full resolution).
        out: the ``.xml`` to write (default: ``<checkpoint>.int8.xml`` beside the manifest).
        calibration: ready ``(1, C, H, W)`` normalised arrays instead of training images (tests, other data).

    Returns:
        ``(xml_path, info)``: ``info`` is the manifest's future ``inference.int8`` entry without the
        accuracy figures (``engine``, ``files``, ``sha256``, ``bytes``, ``calibration``, ``nncf``,
        ``openvino``, ``quantize_s``); :func:`workbench.evaluation.manifests.record_int8` adds them.
    """
    model, manifest = load_checkpoint(path)
    norm = manifest.normalization or default_normalization(manifest.in_chans)
    mode = "L" if manifest.in_chans == 1 else "RGB"
    if calibration is None:
        ds = manifest.dataset_name or "camvid"
        split = (manifest.dataset_info or {}).get("train_split", "train")
        files = calibration_files(data_root, dataset=ds, split=split, n=calib_images, seed=seed)
        calibration = list(normalised_batches(files, norm["mean"], norm["std"], mode))
        calib_info = {"dataset": ds, "split": split, "images": len(files), "seed": seed, "resolution": "full", "normalization": "the manifest's"}
    else:
        calib_info = {"dataset": "given", "images": len(calibration)}
    t0 = time.perf_counter()
    fp32 = to_openvino(model, manifest.in_chans)
    check_conversion(model, fp32, manifest.in_chans)
    q = quantize_openvino(fp32, calibration, preset=preset, fast_bias_correction=fast_bias_correction)
    elapsed = time.perf_counter() - t0
    xml = Path(out) if out is not None else int8_paths(manifest.path)[0]
    xml, binf = save_ir(q, xml)
    info = {
        "engine": "openvino",
        "format": "OpenVINO IR, input (1, C, H, W) normalised, H and W dynamic; output logits",
        "files": [xml.name, binf.name],
        "sha256": {xml.name: sha256_file(xml), binf.name: sha256_file(binf)},
        "bytes": xml.stat().st_size + binf.stat().st_size,
        "calibration": calib_info,
        "method": {"tool": "nncf.quantize", "preset": preset, "fast_bias_correction": fast_bias_correction, "model_type": None},
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
        "quantize_s": round(elapsed, 1),
    }
    return xml, info


