"""Evaluate checkpoints on a dataset split at full resolution; write JSON, a leaderboard and confusion plots.

::

    from workbench.evaluate import evaluate_checkpoint, write_results
    res = evaluate_checkpoint("checkpoints/unet_camvid.json", split="test")
    res["metrics"]["miou"], res["metrics"]["per_class_iou"], res["metrics"]["class_names"]
    write_results([res], "eval_results")   # unet_camvid.test.json, leaderboard_test.md, unet_camvid.test.confusion.png

or ``python -m workbench eval checkpoints/*.json --split test``.

Images are run one at a time at their full resolution (the models pad and crop
internally), so the numbers are those of the standard protocol (CamVid: 233
test images at 360x480, void excluded). Dataset metrics come from one
confusion matrix summed over every image (see :mod:`workbench.metrics`), never
from averaging per-image scores; the per-image records are kept so that a CI
job can re-run a few images and compare.

Options:

* ``flip``: average the softmax probabilities of the image and of its
  horizontal mirror (mirrored back).
* ``window=(h, w)``: sliding-window inference for images larger than the window
  (in either dimension): tiles of ``window`` (clipped to the image) at ``stride``
  (default half the window), the last tile flush with the border; overlapping
  probabilities are averaged with equal weights. ``flip`` applies per tile.
* ``scales=(0.75, 1.0, 1.25)``: multi-scale inference: the image is resized
  (bilinear, antialiased when shrinking) by each factor, predicted (with
  ``flip`` and ``window`` as above), and the probabilities are resized back to
  the full resolution and averaged with equal weights. Metrics are always
  computed at the label's own resolution.
"""

from __future__ import annotations

import datetime as _dt
import glob
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn

from ..classes import IGNORE_INDEX, default_normalization
from .metrics import ConfusionMatrix, foreground_iou, pixel_error, rand_scores, segmentation_metrics
from ..models.base import MIN_INPUT_SIZE
from ..inference.predictor import autocast_context, checkpoint_precision, resolve_device, resolve_precision

__all__ = [
    "EvaluationError",
    "evaluate_checkpoint",
    "model_cost",
    "update_manifest",
    "evaluate_model",
    "predict_probs",
    "sliding_window_starts",
    "check_scales",
    "collect_checkpoints",
    "parse_dataset_option",
    "confusion_from_entries",
    "format_leaderboard",
    "plot_confusion",
    "write_results",
]

RAND_VARIANT = "ISBI 2012 foreground-restricted Rand error (1 - V_rand, N^2 normalisation, 4-connected cells, no threshold sweep or thinning)"


class EvaluationError(ValueError):
    """Evaluation cannot run (missing data, unknown split, mismatched model and dataset); the message says why."""


# ----------------------------------------------------------------------------- inference


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an int or a pair (h, w), got {v!r}") from None
    return h, w


def sliding_window_starts(size: int, window: int, stride: int) -> list[int]:
    """Tile start offsets along one axis: every ``stride``, the last tile flush with the end.

    A ``size`` not larger than ``window`` gives one tile at 0 (of length ``size``).
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def check_scales(scales: Iterable[float] | None) -> tuple[float, ...] | None:
    """Validated multi-scale factors (``None`` or ``(1.0,)`` means single-scale).

    Raises ``ValueError`` for an empty list, a non-finite or non-positive factor,
    a factor above 4 (16x the pixels: a typo, not a test-time augmentation) or a
    repeated factor.
    """
    if scales is None:
        return None
    out = tuple(float(s) for s in scales)
    if not out:
        raise ValueError("scales must name at least one factor, e.g. 0.75 1.0 1.25")
    for s in out:
        if not math.isfinite(s) or s <= 0 or s > 4:
            raise ValueError(f"scale factor {s:g} is out of range: use factors in (0, 4], e.g. 0.75 1.0 1.25")
    if len(set(out)) != len(out):
        raise ValueError(f"scale factors repeat: {' '.join(f'{s:g}' for s in out)}")
    return None if out == (1.0,) else out


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _forward_probs(model: nn.Module, x: torch.Tensor, flip: bool, device: torch.device, precision: str) -> torch.Tensor:
    """(1, C, h, w) float32 softmax probabilities of ``x`` (1, C_in, h, w), flip-averaged if asked."""
    xb = torch.cat([x, x.flip(-1)]) if flip else x
    xb = xb.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, precision):
        logits = model(xb)
    probs = logits.float().softmax(1)
    if flip:
        probs = (probs[:1] + probs[1:].flip(-1)) * 0.5
    return probs


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    *,
    flip: bool = False,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    scales: Iterable[float] | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Softmax probabilities ``(C, H, W)`` (float32, on the model's device) for one normalised image ``(C_in, H, W)``.

    ``flip`` averages with the mirrored image; ``window`` switches to sliding-window
    inference when the image is larger than the window; ``scales`` averages over
    resized copies of the image (see the module docstring).
    ``precision`` is ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
    """
    device = _model_device(model)
    x = _plain(image).to(device=device, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected one (C, H, W) image, got shape {tuple(x.shape)}")
    x = x[None]
    factors = check_scales(scales)
    if factors is None:
        return _predict_one_scale(model, x, flip, window, stride, device, precision)
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    acc = None
    for f in factors:
        h, w = max(MIN_INPUT_SIZE, round(H * f)), max(MIN_INPUT_SIZE, round(W * f))
        xs = x if (h, w) == (H, W) else F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=f < 1)
        p = _predict_one_scale(model, xs, flip, window, stride, device, precision)
        if (h, w) != (H, W):
            p = F.interpolate(p[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        acc = p if acc is None else acc + p
    return acc / len(factors)


def _predict_one_scale(model, x, flip, window, stride, device, precision) -> torch.Tensor:
    """``predict_probs`` for a (1, C_in, H, W) batch at its own size (flip and sliding window only)."""
    H, W = x.shape[-2:]
    if window is None:
        return _forward_probs(model, x, flip, device, precision)[0]
    wh, ww = _pair(window, "window")
    if min(wh, ww) < MIN_INPUT_SIZE:
        raise ValueError(f"window {wh}x{ww} is too small: the models need at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
    sh, sw = _pair(stride, "stride") if stride is not None else (max(1, wh // 2), max(1, ww // 2))
    if not (1 <= sh <= wh and 1 <= sw <= ww):
        raise ValueError(f"stride {sh}x{sw} must be between 1 and the window {wh}x{ww} (larger strides would skip pixels)")
    if H <= wh and W <= ww:
        return _forward_probs(model, x, flip, device, precision)[0]
    th, tw = min(wh, H), min(ww, W)
    acc = None
    count = torch.zeros((1, 1, H, W), dtype=torch.float32, device=device)
    for r in sliding_window_starts(H, th, sh):
        for c in sliding_window_starts(W, tw, sw):
            p = _forward_probs(model, x[..., r : r + th, c : c + tw], flip, device, precision)
            if acc is None:
                acc = torch.zeros((1, p.shape[1], H, W), dtype=torch.float32, device=device)
            acc[..., r : r + th, c : c + tw] += p
            count[..., r : r + th, c : c + tw] += 1
    return (acc / count)[0]


# ----------------------------------------------------------------------------- per-image records


def _sparse_confusion(m: torch.Tensor) -> list[list[int]]:
    """Non-zero entries of a (C, C) matrix as ``[target, prediction, count]`` triples."""
    nz = torch.nonzero(m, as_tuple=False)
    return [[int(t), int(p), int(m[t, p])] for t, p in nz.tolist()]


def confusion_from_entries(entries: Iterable[Iterable[int]], num_classes: int) -> torch.Tensor:
    """Rebuild a (C, C) int64 matrix from a per-image record's ``confusion`` triples."""
    m = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    for t, p, n in entries:
        m[int(t), int(p)] += int(n)
    return m


def _plain(x) -> torch.Tensor:
    """A plain tensor from a tensor subclass (tv_tensors), numpy array or PIL image."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.as_subclass(torch.Tensor) if type(t) is not torch.Tensor else t


def _class_names(classes) -> list[str]:
    out = []
    for i, c in enumerate(classes or []):
        out.append(str(c.get("name", f"class_{i}")) if isinstance(c, dict) else str(c))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _latency_stats(times_ms: list[float]) -> dict[str, Any]:
    if not times_ms:
        return {"n": 0}
    arr = np.asarray(times_ms)
    return {
        "n": len(times_ms),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "total_s": float(arr.sum() / 1e3),
        "note": "per image: forward pass(es) incl. flip/window and argmax, excluding data loading; the first image includes warm-up",
    }


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(statistics.fmean(vals)) if vals else math.nan


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    dataset,
    *,
    classes: list | None = None,
    flip: bool = False,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    scales: Iterable[float] | None = None,
    limit: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    per_image: bool = True,
    progress: bool = True,
    ignore_index: int = IGNORE_INDEX,
    desc: str = "eval",
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` (items ``{"image": (C, H, W) normalised float, "mask": (H, W) int, "name"}``).

    Returns the part of :func:`evaluate_checkpoint`'s result that does not
    depend on a checkpoint: ``n_images``, ``options``, ``metrics``, ``binary``
    (two-class datasets only), ``latency_ms`` and ``per_image``. ``classes``
    (``[{"name", ...}]`` or names) label the metrics; the dataset's names are used
    when none or only generic ``class_i`` names are given.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    window_hw = _pair(window, "window") if window is not None else None
    stride_hw = _pair(stride, "stride") if stride is not None else None
    if window_hw is None and stride_hw is not None:
        raise ValueError("stride needs a window")
    if window_hw is not None:
        if min(window_hw) < MIN_INPUT_SIZE:
            raise ValueError(f"window {window_hw[0]}x{window_hw[1]} is too small: the models need at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
        stride_hw = stride_hw or (max(1, window_hw[0] // 2), max(1, window_hw[1] // 2))
    factors = check_scales(scales)
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    total = len(dataset)
    n = min(total, int(limit)) if limit is not None else total
    if n == 0:
        raise EvaluationError("the dataset is empty: nothing to evaluate")

    head_out = None
    model = model.eval().to(dev).to(memory_format=torch.channels_last)
    num_classes = ((getattr(model, "workbench_config", None) or {}).get("kwargs") or {}).get("num_classes")
    ds_classes = getattr(dataset, "num_classes", None)
    if num_classes is not None and ds_classes is not None and int(ds_classes) != int(num_classes):
        raise EvaluationError(f"the model predicts {num_classes} classes but the dataset has {ds_classes}")
    names = _class_names(classes)
    ds_names = _class_names(getattr(dataset, "classes", None))
    if ds_names and (not names or (names == [f"class_{k}" for k in range(len(names))] and len(ds_names) == len(names))):
        names = ds_names  # the manifest only has generic names (an untrained checkpoint): the dataset's are better

    cm: ConfusionMatrix | None = None
    records: list[dict[str, Any]] = []
    times: list[float] = []
    binary_vals: dict[str, list[float]] = {"pixel_error": [], "foreground_iou": [], "rand_error": []}

    from tqdm import tqdm

    bar = tqdm(range(n), desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False)
    for i in bar:
        item = dataset[i]
        name = str(item.get("name", i))
        image = _plain(item["image"])
        mask = _plain(item["mask"])
        if image.ndim != 3 or not image.is_floating_point():
            raise EvaluationError(f"{name}: expected a normalised float (C, H, W) image, got {tuple(image.shape)} {image.dtype}; is the evaluation transform applied?")
        if mask.shape != image.shape[-2:]:
            raise EvaluationError(f"{name}: mask shape {tuple(mask.shape)} does not match the image {tuple(image.shape[-2:])}")
        if min(image.shape[-2:]) < MIN_INPUT_SIZE:
            raise EvaluationError(f"{name}: image {tuple(image.shape[-2:])} is smaller than the models' minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
        _sync(dev)
        t0 = time.perf_counter()
        probs = predict_probs(model, image, flip=flip, window=window_hw, stride=stride_hw, scales=factors, precision=prec)
        pred = probs.argmax(0)
        _sync(dev)
        times.append((time.perf_counter() - t0) * 1e3)
        if cm is None:
            head_out = probs.shape[0]
            if num_classes is not None and head_out != int(num_classes):
                raise EvaluationError(f"the model returned {head_out} channels but is configured for {num_classes} classes")
            if ds_classes is not None and head_out != int(ds_classes):
                raise EvaluationError(f"the model predicts {head_out} classes but the dataset has {ds_classes}")
            cm = ConfusionMatrix(head_out, ignore_index=ignore_index, device=pred.device)
        try:
            counts = cm.update(pred, mask.to(pred.device))
        except ValueError as exc:
            raise EvaluationError(f"{name}: {exc}") from None
        rec: dict[str, Any] = {}
        if per_image:
            m = segmentation_metrics(counts)
            rec = {
                "index": i,
                "name": name,
                "size": [int(image.shape[-2]), int(image.shape[-1])],
                "miou": m["miou"],
                "pixel_accuracy": m["pixel_accuracy"],
                "n_pixels": m["n_pixels"],
                "confusion": _sparse_confusion(counts.cpu()),
                "latency_ms": times[-1],
            }
        if head_out == 2:
            p_np, t_np = pred.cpu().numpy(), mask.cpu().numpy()
            vals = {
                "pixel_error": pixel_error(p_np, t_np, ignore_index=ignore_index),
                "foreground_iou": foreground_iou(p_np, t_np, 1, ignore_index=ignore_index),
                "rand_error": rand_scores(p_np, t_np, 1, ignore_index=ignore_index)["error"],
            }
            for k, v in vals.items():
                binary_vals[k].append(v)
            rec.update(vals)
        if per_image:
            records.append(rec)
    bar.close()

    assert cm is not None
    metrics = cm.compute()
    if len(names) != cm.num_classes:
        names = [f"class_{k}" for k in range(cm.num_classes)]
    metrics["class_names"] = names
    out: dict[str, Any] = {
        "n_images": n,
        "dataset_size": total,
        "options": {
            "flip": bool(flip),
            "window": list(window_hw) if window_hw else None,
            "stride": list(stride_hw) if window_hw else None,
            "scales": list(factors) if factors else None,
            "limit": int(limit) if limit is not None else None,
            "device": str(dev),
            "precision": prec,
            "resolution": "full (one image at a time, the model pads and crops)",
        },
        "metrics": metrics,
    }
    if cm.num_classes == 2:
        out["binary"] = {
            **{k: _nanmean(v) for k, v in binary_vals.items()},
            "averaged_over": f"images: the mean of per-image values over {n} images (nan images skipped)",
            "foreground_class": 1,
            "foreground_name": names[1],
            "rand_error_variant": RAND_VARIANT,
        }
    out["latency_ms"] = _latency_stats(times)
    out["per_image"] = records if per_image else None
    return out


def _build_dataset(name: str, split: str, data_root, mean, std, options: dict) -> Any:
    try:
        from ..data.datasets import DatasetError, build_dataset
        from ..data.transforms import eval_transforms
    except ImportError as exc:
        raise EvaluationError(f"the dataset module is not available ({exc}); pass a dataset object instead") from None
    try:
        transform = eval_transforms(mean=mean, std=std)
        return build_dataset(name, split, data_root=data_root, transform=transform, **options)
    except (DatasetError, FileNotFoundError, KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        where = f" under data root {data_root}" if data_root else ""
        raise EvaluationError(f"cannot load dataset {name!r} split {split!r}{where}: {msg}") from None


def evaluate_checkpoint(
    path: str | os.PathLike,
    *,
    dataset=None,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    dataset_options: dict | None = None,
    flip: bool = False,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    scales: Iterable[float] | None = None,
    limit: int | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    per_image: bool = True,
    progress: bool = True,
    cost: bool = False,
) -> dict[str, Any]:
    """Evaluate one checkpoint on a dataset split at full resolution.

    Args:
        path: the checkpoint (``.json`` manifest, ``.safetensors`` or stem).
        dataset: a dataset name for :func:`workbench.data.build_dataset` (default:
            the manifest's ``dataset.name``), or a dataset object whose items are
            already normalised for this checkpoint.
        split: ``"test"``, ``"val"``, ... (used with a dataset name).
        data_root: where the data lives (default: ``$WORKBENCH_DATA_ROOT``, then ``../shared/data``).
        dataset_options: extra ``build_dataset`` options (e.g. ``{"path": ...}`` for
            ``folder``), on top of the manifest's ``dataset.options`` (the training
            run's) when evaluating on the dataset the checkpoint was trained on; for
            ``synthetic`` ``num_classes`` defaults to the model's.
        flip, window, stride, scales: test-time augmentation (mirror, multi-scale)
            and sliding-window inference (see the module docstring).
        limit: evaluate only the first ``limit`` images.
        device, precision: as for :class:`workbench.Predictor`, but precision defaults to fp32.
        per_image: keep per-image records (name, mIoU, accuracy, sparse confusion).
        progress: show a progress bar on stderr.
        cost: also measure ``cost``: GFLOPs and the app's CPU latency at 360x480 (see :func:`model_cost`).

    Returns:
        A JSON-able dict: ``checkpoint``, ``architecture``, ``num_parameters``,
        ``dataset``, ``split``, ``data_root``, ``n_images``, ``options``,
        ``metrics`` (:meth:`ConfusionMatrix.compute` plus ``class_names``),
        ``binary`` (two-class datasets: pixel error, foreground IoU and Rand error,
        each the mean over images), ``latency_ms``, ``per_image``. Per-image
        ``confusion`` is a list of ``[target, prediction, count]`` non-zero entries
        (:func:`confusion_from_entries` rebuilds the matrix).

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        EvaluationError: no dataset named, data missing, unknown split, or a model
            and dataset that do not fit together.
    """
    from ..io.checkpoint import load_checkpoint

    model, manifest = load_checkpoint(path)
    kwargs = manifest.get("kwargs", {})
    ds_field = manifest.get("dataset")
    trained_on = ds_field.get("name") if isinstance(ds_field, dict) else ds_field if isinstance(ds_field, str) else None
    if dataset is None:
        dataset = trained_on
        if not dataset:
            raise EvaluationError(f"{Path(path).name}: the manifest names no dataset (field dataset.name); pass one (--dataset)")
    options: dict = {}
    if isinstance(dataset, str) and dataset == trained_on and isinstance(ds_field, dict) and isinstance(ds_field.get("options"), dict):
        options.update(ds_field["options"])  # the training run's options (folder path, synthetic size, ...)
    options.update(dataset_options or {})
    if isinstance(dataset, str):
        ds_name = dataset
        if ds_name == "synthetic":
            options.setdefault("num_classes", int(kwargs.get("num_classes")))
        norm = manifest.get("normalization") or default_normalization(int(kwargs.get("in_chans", 3)))
        ds = _build_dataset(ds_name, split, data_root, norm["mean"], norm["std"], options)
        from ..paths import resolve_data_root

        root = str(resolve_data_root(data_root)) if ds_name not in ("synthetic", "folder") else None
    else:
        ds = dataset
        ds_name = str(getattr(ds, "name", type(ds).__name__))
        split = str(getattr(ds, "split", split))
        root = None
    in_chans = int(kwargs.get("in_chans", 3))
    ds_in = getattr(ds, "in_chans", None)
    if ds_in is not None and int(ds_in) != in_chans:
        raise EvaluationError(f"{Path(path).name} takes {in_chans}-channel input but dataset {ds_name!r} has {ds_in} channels")
    res = evaluate_model(
        model,
        ds,
        classes=manifest.get("classes"),
        flip=flip,
        window=window,
        stride=stride,
        scales=scales,
        limit=limit,
        device=device,
        precision=precision,
        per_image=per_image,
        progress=progress,
        ignore_index=int(getattr(ds, "ignore_index", IGNORE_INDEX)),
        desc=f"{manifest['architecture']} {ds_name}/{split}",
    )
    from .. import __version__

    if cost:
        res["cost"] = model_cost(model, in_chans, precision=checkpoint_precision(manifest, "auto", torch.device("cpu")))
    out: dict[str, Any] = {
        "checkpoint": str(Path(manifest["_path"])),
        "architecture": manifest["architecture"],
        "kwargs": kwargs,
        "num_parameters": manifest.get("num_parameters"),
        "dataset": ds_name,
        "split": split,
        "data_root": root,
        "dataset_options": options or None,
    }
    out.update(res)
    out["software"] = {"workbench": __version__, "torch": torch.__version__}
    out["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def model_cost(model: nn.Module, in_chans: int = 3, size: tuple[int, int] = (360, 480), repeats: int = 10, precision: str = "auto") -> dict[str, Any]:
    """GFLOPs and latency of one ``size`` image as the app runs it (channels_last, CPU, ``precision``:
    what :func:`~workbench.predictor.checkpoint_precision` gives the app for the checkpoint)."""
    from ..models.anatomy import count_flops
    from ..tools.bench import machine_description, time_model

    dev = torch.device("cpu")
    prec = resolve_precision(precision, dev)
    times = time_model(model, torch.zeros(1, in_chans, *size), dev, prec, warmup=2, repeats=repeats)
    model.to(memory_format=torch.contiguous_format)
    return {
        "input": list(size),
        "gflops": count_flops(model, size, in_chans) / 1e9,
        "cpu_latency_ms": statistics.median(times),
        "cpu_precision": prec,
        "machine": machine_description(),
    }


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
    from ..io.checkpoint import atomic_write_bytes, read_manifest

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
    atomic_write_bytes(path, (json.dumps(_jsonable(manifest), indent=2, allow_nan=False) + "\n").encode())
    return path


# ----------------------------------------------------------------------------- several checkpoints


def parse_dataset_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, value)``, the value parsed as JSON when it is JSON (``size=[64, 64]``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def collect_checkpoints(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Expand globs (if the shell did not) and keep the paths whose manifest reads.

    Returns:
        ``(manifests, warnings)``: de-duplicated manifest paths in the given order,
        and one message per argument that is not a checkpoint (e.g. a results JSON).
    """
    from ..io.checkpoint import CheckpointError, read_manifest

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
                manifest = read_manifest(p)
            except CheckpointError as exc:
                warnings.append(f"skipping {p}: not a checkpoint ({exc})")
                continue
            key = str(Path(manifest["_path"]).resolve())
            if key not in seen:
                seen.add(key)
                out.append(Path(manifest["_path"]))
    return out, warnings


# ----------------------------------------------------------------------------- output


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _miou_key(r: dict) -> float:
    v = r.get("metrics", {}).get("miou")
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.1f}"


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    m = n / 1e6
    return f"{m:.2f}" if m >= 0.1 else f"{m:.3g}"


def _setting(r: dict) -> str:
    o = r.get("options", {})
    parts = [f"{r.get('dataset')}/{r.get('split')}", f"{r.get('n_images')} images"]
    if o.get("flip"):
        parts.append("flip")
    if o.get("scales"):
        parts.append("scales " + " ".join(f"{f:g}" for f in o["scales"]))
    if o.get("window"):
        parts.append(f"window {o['window'][0]}x{o['window'][1]} stride {o['stride'][0]}x{o['stride'][1]}")
    parts.append(str(o.get("precision", "fp32")))
    return ", ".join(parts)


def format_leaderboard(results: list[dict]) -> str:
    """A Markdown table of ``results`` sorted by mIoU (best first); values in percent."""
    rows = sorted(results, key=_miou_key, reverse=True)
    names: list[str] = []
    for r in rows:
        for n in r.get("metrics", {}).get("class_names", []):
            if n not in names:
                names.append(n)
    settings = {_setting(r) for r in rows}
    per_row_setting = len(settings) > 1
    binary = any("binary" in r for r in rows)
    head = ["#", "architecture", "checkpoint", "mIoU", "global acc", "mean class acc"]
    if binary:
        head += ["pixel error", "fg IoU", "Rand error"]
    head += [f"IoU {n}" for n in names] + ["params (M)"]
    has_cost = any("cost" in r for r in rows)
    if has_cost:
        head += ["GFLOPs", "CPU ms"]
    if per_row_setting:
        head.append("setting")
    lines = []
    if not per_row_setting and rows:
        lines.append(f"Setting: {settings.pop()}. Values in percent; mIoU and accuracies from one confusion matrix over all images.")
        if binary:
            lines.append("Pixel error, foreground IoU and Rand error are means over images.")
        lines.append("")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| " + " | ".join(["---:" if h == "#" else "---" if h in ("architecture", "checkpoint", "setting") else "---:" for h in head]) + " |")
    for rank, r in enumerate(rows, 1):
        m = r.get("metrics", {})
        iou = dict(zip(m.get("class_names", []), m.get("per_class_iou", [])))
        nparams = r.get("num_parameters")
        cells = [str(rank), str(r.get("architecture")), Path(str(r.get("checkpoint"))).stem, _pct(m.get("miou")), _pct(m.get("pixel_accuracy")), _pct(m.get("mean_class_accuracy"))]
        if binary:
            b = r.get("binary", {})
            cells += [_pct(b.get("pixel_error")), _pct(b.get("foreground_iou")), _pct(b.get("rand_error"))]
        cells += [_pct(iou.get(n)) for n in names]
        cells.append(_params(nparams))
        if has_cost:
            c = r.get("cost") or {}
            cells += [f"{c['gflops']:.1f}" if "gflops" in c else "-", f"{c['cpu_latency_ms']:.0f}" if "cpu_latency_ms" in c else "-"]
        if per_row_setting:
            cells.append(_setting(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion(result: dict, path: str | os.PathLike) -> Path:
    """Save the row-normalised confusion matrix of ``result`` as a PNG (class names on both axes)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io.checkpoint import atomic_write_bytes

    m = result["metrics"]
    conf = np.asarray(m["confusion"], dtype=np.float64)
    names = list(m.get("class_names") or [f"class_{i}" for i in range(conf.shape[0])])
    support = conf.sum(1, keepdims=True)
    norm = np.divide(conf, support, out=np.full_like(conf, np.nan), where=support > 0)
    c = conf.shape[0]
    side = max(4.0, 0.55 * c + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{result.get('architecture')} on {result.get('dataset')}/{result.get('split')}\n(rows normalised; grey: class absent)", fontsize=9)
    if c <= 20:
        for t in range(c):
            for p in range(c):
                v = norm[t, p]
                if not np.isnan(v) and v >= 0.005:
                    ax.text(p, t, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _unique_stems(results: list[dict]) -> list[str]:
    stems, used = [], {}
    for r in results:
        stem = Path(str(r.get("checkpoint", "results"))).stem
        key = (stem, r.get("split"))
        k = used.get(key, 0)
        used[key] = k + 1
        stems.append(stem if k == 0 else f"{stem}-{k + 1}")
    return stems


def write_results(results: list[dict], out_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Write ``<stem>.<split>.json`` and ``<stem>.<split>.confusion.png`` per result and ``leaderboard_<split>.md`` per split.

    JSON files use ``null`` for undefined numbers (``nan``). Results whose
    checkpoint stems collide get ``-2``, ``-3``, ... suffixes.

    Returns:
        ``{"json": [...], "confusion": [...], "leaderboard": [...]}`` paths.
    """
    from ..io.checkpoint import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {"json": [], "confusion": [], "leaderboard": []}
    for r, stem in zip(results, _unique_stems(results)):
        split = r.get("split", "eval")
        jp = out / f"{stem}.{split}.json"
        atomic_write_bytes(jp, (json.dumps(_jsonable(r), indent=1, allow_nan=False) + "\n").encode())
        written["json"].append(jp)
        written["confusion"].append(plot_confusion(r, out / f"{stem}.{split}.confusion.png"))
    by_split: dict[str, list[dict]] = {}
    for r in results:
        by_split.setdefault(str(r.get("split", "eval")), []).append(r)
    for split, rs in by_split.items():
        lp = out / f"leaderboard_{split}.md"
        text = f"# Leaderboard: {split} split\n\n" + format_leaderboard(rs)
        atomic_write_bytes(lp, text.encode())
        written["leaderboard"].append(lp)
    return written
