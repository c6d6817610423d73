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
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, OverflowFix

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
    "QUANTIZE_VARIANTS",
    "DEFAULT_VARIANT",
    "fp32_scope",
    "float_layers",
    "label_agreement_metric",
    "validation_pairs",
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

DEFAULT_CALIB_IMAGES = 64  # of CamVid's 367 train images (benchmarks/int8_cpu_avx2.md, int8_options_cpu_avx512.md)
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


WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul"})

# Named NNCF settings, compared in benchmarks/int8_options_cpu_avx512.md (scripts/bench_int8_options.py).
# ``fp32_layers`` names layers kept in fp32 through nncf.IgnoredScope (see :func:`fp32_scope`); the rest are
# nncf.quantize's own arguments.
QUANTIZE_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {"preset": "mixed", "fast_bias_correction": True},
    "performance": {"preset": "performance", "fast_bias_correction": True},
    "fbc_off": {"preset": "mixed", "fast_bias_correction": False},
    "head": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("last",)},
    "head2": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("last2",)},
    "head_first": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("first", "last")},
    "head2_first": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("first", "last2")},
    "smoothquant": {"preset": "mixed", "fast_bias_correction": True, "smooth_quant_convolution": 0.15},
    "first": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("first",)},
    "overflow_off": {"preset": "mixed", "fast_bias_correction": True, "overflow_fix": "disable"},
    # nncf.quantize_with_accuracy_control: layers go back to fp32, most sensitive first, until the labels agree
    # with fp32 eager on validation images within the parity bar (see :func:`label_agreement_metric`)
    "accuracy_control": {"preset": "mixed", "fast_bias_correction": True, "accuracy_control": True},
    "accuracy_control_first": {"preset": "mixed", "fast_bias_correction": True, "fp32_layers": ("first",), "accuracy_control": True},
}
# the layers reading the image stay fp32, then accuracy control reverts layers until the labels agree with fp32 on val
# images: the only variant whose camvid_unet labels passed the parity bar on the test images (benchmarks/int8_options_cpu_avx512.md)
DEFAULT_VARIANT = "accuracy_control_first"


def float_layers(ov_model) -> list[str]:
    """Names of the weighted layers of a quantized model that NNCF left in fp32 (they read float weights)."""
    return [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_type_name() in WEIGHTED_OPS - {"MatMul"} and op.input(1).get_source_output().get_node().get_type_name() == "Constant"
    ]


def _producers(op) -> list:
    return [i.get_source_output().get_node() for i in op.inputs()]


def fp32_scope(ov_model, which: Iterable[str]) -> list[str]:
    """Names of the weighted layers (convolutions, transposed convolutions, matmuls) of ``ov_model`` to keep in fp32.

    ``which`` holds any of ``"first"`` (the layers that read the input image), ``"last"`` (the layers whose
    output reaches the logits through no other weighted layer: the head, and a learned final upsampling
    where the model has one) and ``"last2"`` (those and the weighted layers feeding them).
    """
    names: list[str] = []

    def walk(starts, depth: int, backward: bool) -> None:
        seen, frontier = set(), list(starts)
        while frontier:
            op = frontier.pop()
            key = op.get_friendly_name()
            if key in seen:
                continue
            seen.add(key)
            if op.get_type_name() in WEIGHTED_OPS and op not in starts:
                if key not in names:
                    names.append(key)
                if depth <= 1:
                    continue
                walk([op], depth - 1, backward)
                continue
            if backward:
                frontier += [p for p in _producers(op) if p.get_type_name() != "Constant"]
            else:
                frontier += [t.get_node() for o in op.outputs() for t in o.get_target_inputs()]

    which = set(which)
    unknown = which - {"first", "last", "last2"}
    if unknown:
        raise QuantizeError(f"unknown fp32 layer group(s) {sorted(unknown)}: use first, last or last2")
    if "first" in which:
        walk(list(ov_model.get_parameters()), 1, backward=False)
    if which & {"last", "last2"}:
        walk(list(ov_model.get_results()), 2 if "last2" in which else 1, backward=True)
    return names


# accuracy control's target: agreement with fp32 eager may drop by this much on the validation images, a margin
# inside the parity bar (99.5% overall, 98.5% worst image) because the test images are other images
ACCURACY_CONTROL_MAX_DROP = 0.003


def label_agreement_metric(compiled, items) -> tuple[float, list[float]]:
    """NNCF validation function: ``items`` are ``(input, fp32 eager labels)``; per item the share of pixels whose
    int8 label agrees; the metric is ``min(mean, worst + 0.01)``, 1.0 for fp32, so a drop of ``d`` means
    the mean is >= ``1 - d`` and the worst image >= ``0.99 - d`` (the parity bar's two limits, 1 point apart)."""
    per_item = []
    for x, ref in items:
        out = compiled({0: x})[0]
        per_item.append(float((out[0].argmax(0) == ref).mean()))
    return min(float(np.mean(per_item)), min(per_item) + 0.01), per_item


def quantize_openvino(ov_model, calibration: list[np.ndarray], *, variant: str | None = None, preset: str | None = None, fast_bias_correction: bool | None = None, fp32_layers: Iterable[str] | None = None, smooth_quant_convolution: float | None = None, overflow_fix: str | None = None, accuracy_control: bool | None = None, validation: list[tuple[np.ndarray, np.ndarray]] | None = None, subset_size: int | None = None):
    """NNCF post-training int8 of an ``openvino.Model``: 8-bit weights (per channel) and activations.

    ``variant`` names a row of :data:`QUANTIZE_VARIANTS` (default :data:`DEFAULT_VARIANT`); the keyword
    arguments override it. ``preset="mixed"`` quantizes activations asymmetrically (the ReLU-free logits and
    skip sums are not centred), ``"performance"`` symmetrically; ``fast_bias_correction=False`` runs NNCF's
    full bias correction (slower); ``fp32_layers`` keeps layer groups in fp32 (:func:`fp32_scope`);
    ``smooth_quant_convolution`` is SmoothQuant's alpha for convolutions (NNCF leaves it off by default);
    ``overflow_fix`` is NNCF's (``first_layer_only`` by default: 7-bit weights in the first layer, which CPUs
    without VNNI need); ``accuracy_control`` runs ``nncf.quantize_with_accuracy_control`` against
    ``validation``, ``(input, fp32 eager labels)`` pairs (:func:`label_agreement_metric`).
    """
    if variant is not None and variant not in QUANTIZE_VARIANTS:
        raise QuantizeError(f"unknown quantization variant {variant!r}; choose from {', '.join(QUANTIZE_VARIANTS)}")
    opts = dict(QUANTIZE_VARIANTS[variant or DEFAULT_VARIANT])
    for k, v in {"preset": preset, "fast_bias_correction": fast_bias_correction, "fp32_layers": fp32_layers, "smooth_quant_convolution": smooth_quant_convolution, "overflow_fix": overflow_fix, "accuracy_control": accuracy_control}.items():
        if v is not None:
            opts[k] = v
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    if opts["preset"] not in presets:
        raise QuantizeError(f"unknown preset {opts['preset']!r}: mixed or performance")
    kwargs: dict[str, Any] = {}
    ignored = fp32_scope(ov_model, opts.get("fp32_layers") or ())
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored, validate=False)
    advanced: dict[str, Any] = {}
    if opts.get("smooth_quant_convolution") is not None:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER  # NNCF applies SmoothQuant only for this model type
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=float(opts["smooth_quant_convolution"]), matmul=-1)
    if opts.get("overflow_fix") is not None:
        advanced["overflow_fix"] = OverflowFix(opts["overflow_fix"])
    common = dict(preset=presets[opts["preset"]], subset_size=subset_size or len(calibration), fast_bias_correction=bool(opts["fast_bias_correction"]), **kwargs)
    if opts.get("accuracy_control"):
        if not validation:
            raise QuantizeError("accuracy control needs validation images with their fp32 labels")
        return nncf.quantize_with_accuracy_control(
            ov_model,
            nncf.Dataset(calibration),
            nncf.Dataset(validation, lambda item: item[0]),
            label_agreement_metric,
            max_drop=ACCURACY_CONTROL_MAX_DROP,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_quantization_parameters=AdvancedQuantizationParameters(**advanced) if advanced else None,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(ranking_subset_size=len(validation)),
            **common,
        )
    if advanced:
        common["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    return nncf.quantize(ov_model, nncf.Dataset(calibration), **common)


def quantize_model(model: nn.Module, calibration: list[np.ndarray], *, in_chans: int = 3, **options):
    """``model`` converted to OpenVINO and quantized (:func:`quantize_openvino`); returns the int8 ``openvino.Model``."""
    return quantize_openvino(to_openvino(model, in_chans), calibration, **options)


VALIDATION_IMAGES = 8  # accuracy control's validation images (the val split, never test)


def validation_pairs(model: nn.Module, manifest, data_root=None, *, n: int = VALIDATION_IMAGES, seed: int = DEFAULT_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(normalised input, fp32 eager labels)`` of ``n`` val images of the checkpoint's dataset (accuracy control)."""
    norm = manifest.normalization or default_normalization(manifest.in_chans)
    try:
        files = calibration_files(data_root, dataset=manifest.dataset_name or "camvid", split="val", n=n, seed=seed)
    except QuantizeError as exc:
        raise QuantizeError(f"accuracy control validates on val images: {exc}; or choose a variant without it (e.g. 'first')") from None
    xs = list(normalised_batches(files, norm["mean"], norm["std"], "L" if manifest.in_chans == 1 else "RGB"))
    with torch.inference_mode():
        return [(x, model.eval().float()(torch.from_numpy(x))[0].argmax(0).numpy()) for x in xs]


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
    calib_images: int | None = None,
    seed: int = DEFAULT_SEED,
    out: str | os.PathLike | None = None,
    calibration: list[np.ndarray] | None = None,
    variant: str | None = None,
    **options,
) -> tuple[Path, dict[str, Any]]:
    """Quantize checkpoint ``path`` to int8 and write its OpenVINO IR.

    Args:
        path: the checkpoint (``.json`` manifest).
        data_root: where ``<dataset>/train/`` lives (default: ``$WORKBENCH_DATA_ROOT``, then ``../shared/data``).
        calib_images: how many training images calibrate (drawn with ``seed``; full resolution; default
            :data:`DEFAULT_CALIB_IMAGES`).
        out: the ``.xml`` to write (default: ``<checkpoint>.int8.xml`` beside the manifest).
        calibration: ready ``(1, C, H, W)`` normalised arrays instead of training images (tests, other data).
        variant: NNCF settings by name (:data:`QUANTIZE_VARIANTS`, default :data:`DEFAULT_VARIANT`);
            ``options`` (``preset``, ``fast_bias_correction``, ``fp32_layers``, ``smooth_quant_convolution``)
            override it (:func:`quantize_openvino`).

    Returns:
        ``(xml_path, info)``: ``info`` is the manifest's future ``inference.int8`` entry without the
        accuracy figures (``engine``, ``files``, ``sha256``, ``bytes``, ``calibration``, ``method``,
        ``fp32_layers``, ``nncf``, ``openvino``, ``quantize_s``); :func:`workbench.evaluation.manifests.record_int8`
        adds them.
    """
    variant = variant or DEFAULT_VARIANT
    if variant not in QUANTIZE_VARIANTS:
        raise QuantizeError(f"unknown quantization variant {variant!r}; choose from {', '.join(QUANTIZE_VARIANTS)}")
    method = {**QUANTIZE_VARIANTS[variant], **{k: v for k, v in options.items() if v is not None}}
    model, manifest = load_checkpoint(path)
    norm = manifest.normalization or default_normalization(manifest.in_chans)
    mode = "L" if manifest.in_chans == 1 else "RGB"
    if calibration is None:
        ds = manifest.dataset_name or "camvid"
        split = (manifest.dataset_info or {}).get("train_split", "train")
        files = calibration_files(data_root, dataset=ds, split=split, n=calib_images or DEFAULT_CALIB_IMAGES, seed=seed)
        calibration = list(normalised_batches(files, norm["mean"], norm["std"], mode))
        calib_info = {"dataset": ds, "split": split, "images": len(files), "seed": seed, "resolution": "full", "normalization": "the manifest's"}
    else:
        calib_info = {"dataset": "given", "images": len(calibration)}
    t0 = time.perf_counter()
    fp32 = to_openvino(model, manifest.in_chans)
    check_conversion(model, fp32, manifest.in_chans)
    kept = fp32_scope(fp32, method.get("fp32_layers") or ())
    validation = None
    if method.get("accuracy_control"):
        validation = validation_pairs(model, manifest, data_root, seed=seed)
        calib_info["accuracy_control"] = {"split": "val", "images": len(validation), "max_drop": ACCURACY_CONTROL_MAX_DROP, "metric": "label agreement with fp32 eager: min(mean, worst image + 0.01)"}
    q = quantize_openvino(fp32, calibration, validation=validation, variant=variant, **{k: v for k, v in options.items() if v is not None})
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
        "method": {"tool": "nncf.quantize", "variant": variant, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in method.items()}},
        "fp32_layers": kept,
        "float_layers": len(float_layers(q)),  # kept above plus those accuracy control reverted
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
        "quantize_s": round(elapsed, 1),
    }
    return xml, info
