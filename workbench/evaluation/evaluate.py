"""Evaluate checkpoints on a dataset split at full resolution; write JSON, a leaderboard and confusion plots.

::

    from workbench.evaluation.evaluate import evaluate_checkpoint
    from workbench.evaluation.report import write_results
    res = evaluate_checkpoint("checkpoints/unet_camvid.json", split="test")
    res["metrics"]["miou"], res["metrics"]["per_class_iou"], res["metrics"]["class_names"]
    write_results([res], "eval_results")   # unet_camvid.test.json, leaderboard_test.md, unet_camvid.test.confusion.png

or ``python -m workbench eval checkpoints/*.json --split test``.

Images are run one at a time at their full resolution (the models pad and crop
internally), so the numbers are those of the standard protocol (CamVid: 233
test images at 360x480, void excluded). Dataset metrics come from one
confusion matrix summed over every image (:func:`workbench.evaluation.validate.accumulate_confusion`,
the routine the trainer validates with), never from averaging per-image scores;
the per-image records are kept so that a CI job can re-run a few images and compare.

Options ``flip``, ``window``/``stride`` and ``scales`` (test-time augmentation and
sliding windows) are described in :mod:`workbench.evaluation.tta`. Metrics are
always computed at the label's own resolution.

Beside this module: :mod:`~workbench.evaluation.tta` (``predict_probs``,
``sliding_window_starts``, ``check_scales``), :mod:`~workbench.evaluation.report`
(``format_leaderboard``, ``plot_confusion``, ``write_results``),
:mod:`~workbench.evaluation.manifests` (``update_manifest``, ``collect_checkpoints``,
the standard protocol) and :mod:`~workbench.evaluation.ensemble` (``evaluate_ensemble``:
several checkpoints' mean probabilities as one model, ``workbench eval --ensemble``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import __version__
from ..classes import IGNORE_INDEX, default_normalization
from ..data.datasets import DatasetError, build_dataset
from ..data.transforms import eval_transforms
from ..inference.predictor import Predictor, checkpoint_precision, resolve_device, resolve_precision
from ..io.checkpoint import load_checkpoint
from ..models.anatomy import count_flops
from ..models.base import MIN_INPUT_SIZE
from ..paths import resolve_data_root
from ..system.machine import machine_description
from ..inference.timing import time_model
from .metrics import foreground_iou, pixel_error, rand_scores, segmentation_metrics
from .tta import as_pair, check_scales, predict_probs
from .validate import Scored, accumulate_confusion, plain_tensor

__all__ = [
    "EvaluationError",
    "evaluate_checkpoint",
    "evaluate_model",
    "model_cost",
    "confusion_from_entries",
    "parse_dataset_option",
    "RAND_VARIANT",
    "ENGINES",
    "engine_model",
    "EngineModule",
    "ParityProbe",
]

# Engines ``workbench eval --engine`` runs a checkpoint through; ``--precision int8`` needs openvino (the shipped int8 IR);
# ``auto`` is what the Predictor chooses on this CPU (workbench.inference.engines.choose).
ENGINES = ("torch", "openvino", "onnxruntime", "auto")

RAND_VARIANT = "ISBI 2012 foreground-restricted Rand error (1 - V_rand, N^2 normalisation, 4-connected cells, no threshold sweep or thinning)"


class EvaluationError(ValueError):
    """Evaluation cannot run (missing data, unknown split, mismatched model and dataset); the message says why."""


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


def _class_names(classes) -> list[str]:
    out = []
    for i, c in enumerate(classes or []):
        out.append(str(c.get("name", f"class_{i}")) if isinstance(c, dict) else str(c))
    return out


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
    window_hw = as_pair(window, "window") if window is not None else None
    stride_hw = as_pair(stride, "stride") if stride is not None else None
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

    model = model.eval().to(dev).to(memory_format=torch.channels_last)
    num_classes = ((getattr(model, "workbench_config", None) or {}).get("kwargs") or {}).get("num_classes")
    ds_classes = getattr(dataset, "num_classes", None)
    if num_classes is not None and ds_classes is not None and int(ds_classes) != int(num_classes):
        raise EvaluationError(f"the model predicts {num_classes} classes but the dataset has {ds_classes}")
    names = _class_names(classes)
    ds_names = _class_names(getattr(dataset, "classes", None))
    if ds_names and (not names or (names == [f"class_{k}" for k in range(len(names))] and len(ds_names) == len(names))):
        names = ds_names  # the manifest only has generic names (an untrained checkpoint): the dataset's are better

    head_out: int | None = None  # the model's output channels, read from the first prediction
    records: list[dict[str, Any]] = []
    times: list[float] = []
    binary_vals: dict[str, list[float]] = {"pixel_error": [], "foreground_iou": [], "rand_error": []}

    def predict(i: int, item: dict) -> torch.Tensor:
        nonlocal head_out
        name = str(item.get("name", i))
        image = plain_tensor(item["image"])
        mask = plain_tensor(item["mask"])
        if image.ndim != 3 or not image.is_floating_point():
            raise EvaluationError(f"{name}: expected a normalised float (C, H, W) image, got {tuple(image.shape)} {image.dtype}; is the evaluation transform applied?")
        if mask.shape != image.shape[-2:]:
            raise EvaluationError(f"{name}: mask shape {tuple(mask.shape)} does not match the image {tuple(image.shape[-2:])}")
        if min(image.shape[-2:]) < MIN_INPUT_SIZE:
            raise EvaluationError(f"{name}: image {tuple(image.shape[-2:])} is smaller than the models' minimum {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
        own = getattr(model, "predict_probs", None)  # a model that combines its own probabilities (evaluation.ensemble.Ensemble)
        run = own if callable(own) else lambda x, **tta: predict_probs(model, x, **tta)
        probs = run(image, flip=flip, window=window_hw, stride=stride_hw, scales=factors, precision=prec)  # (C, H, W)
        if head_out is None:
            head_out = probs.shape[0]
            if num_classes is not None and head_out != int(num_classes):
                raise EvaluationError(f"the model returned {head_out} channels but is configured for {num_classes} classes")
            if ds_classes is not None and head_out != int(ds_classes):
                raise EvaluationError(f"the model predicts {head_out} classes but the dataset has {ds_classes}")
        return probs

    def record(s: Scored) -> None:
        times.append(s.latency_ms)
        rec: dict[str, Any] = {}
        if per_image:
            m = segmentation_metrics(s.counts)
            image = plain_tensor(s.item["image"])
            rec = {
                "index": s.index,
                "name": str(s.item.get("name", s.index)),
                "size": [int(image.shape[-2]), int(image.shape[-1])],
                "miou": m["miou"],
                "pixel_accuracy": m["pixel_accuracy"],
                "n_pixels": m["n_pixels"],
                "confusion": _sparse_confusion(s.counts.cpu()),
                "latency_ms": s.latency_ms,
            }
        if head_out == 2:
            p_np, t_np = s.labels.cpu().numpy(), plain_tensor(s.item["mask"]).cpu().numpy()
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

    bar = tqdm(range(n), desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False)
    cm = accumulate_confusion(dataset, predict, indices=bar, ignore_index=ignore_index, device=dev, on_item=record, timed=True, errors=EvaluationError)
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


class EngineModule(nn.Module):
    """A :class:`~workbench.inference.predictor.Predictor`'s engine behind the PyTorch model's contract (normalised
    ``(B, C, H, W)`` in, float32 logits out, image by image), so the evaluation code runs ONNX Runtime or the
    engine ``auto`` chose unchanged. ``engine``, ``engine_precision`` and ``engine_reason`` say what ran."""

    def __init__(self, predictor: Predictor, workbench_config: dict | None = None) -> None:
        super().__init__()
        self.predictor = predictor
        self.workbench_config = workbench_config or {}
        self.engine = predictor.engine
        self.engine_precision = predictor.engine_precision
        self.engine_reason = getattr(predictor, "engine_reason", "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.predictor.forward_device(xi[None].float().contiguous()).float().cpu() for xi in x])


def engine_model(path, model: nn.Module, manifest, engine: str, precision: str, threads: int | None = None) -> tuple[nn.Module, str]:
    """The network ``evaluate_model`` runs for ``--engine``/``--precision``: ``(module, precision for autocast)``.

    ``torch``: the checkpoint's model at ``precision`` (autocast). ``openvino``: fp32 converted here, or
    ``int8``: the checkpoint's shipped int8 IR (sha256-verified; ``workbench quantize`` writes it).
    ``onnxruntime``: fp32 through the engine the Predictor uses. ``auto``: the engine and precision the
    Predictor chooses for this checkpoint on this CPU (measured once, cached; precision must be ``auto``).
    Every engine but torch runs on the CPU; the module records ``engine`` and ``engine_precision``.
    """
    if engine not in ENGINES:
        raise EvaluationError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        if precision == "int8":
            raise EvaluationError("int8 runs through an engine: use --engine openvino --precision int8")
        return model, precision
    config = {"architecture": manifest.get("architecture"), "kwargs": manifest.kwargs}
    if engine in ("onnxruntime", "auto"):
        if engine == "onnxruntime" and precision not in ("fp32", "auto"):
            raise EvaluationError(f"the onnxruntime engine runs fp32 here, not {precision}")
        if engine == "auto" and precision not in ("auto", "fp32"):
            raise EvaluationError(f"--engine auto chooses the precision too: use --precision auto (or fp32), not {precision}")
        try:
            predictor = Predictor(path, device="cpu", engine=engine, precision="auto" if engine == "auto" else "fp32")
        except (ValueError, RuntimeError) as exc:
            raise EvaluationError(f"{engine}: {exc}") from None
        return EngineModule(predictor, config), "fp32"
    # OpenVINO loads on first use only: importing it starts its telemetry thread and costs ~1 s (the app imports this module)
    from ..inference.int8 import OpenVINOModule, compile_openvino, load_int8, to_openvino

    if precision == "int8":
        try:
            return load_int8(path, threads=threads), "fp32"
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
    if precision not in ("fp32", "auto"):
        raise EvaluationError(f"the openvino engine runs fp32 or int8 here, not {precision}")
    return OpenVINOModule(compile_openvino(to_openvino(model, manifest.in_chans), threads=threads), config, precision="fp32"), "fp32"


class ParityProbe(nn.Module):
    """Runs ``engine`` and, on every ``every``-th call, the fp32 eager ``reference`` too, recording the share of
    pixels whose label agrees (the parity measure of :mod:`workbench.inference.parity`); returns the engine's logits."""

    def __init__(self, engine: nn.Module, reference: nn.Module, every: int = 1) -> None:
        super().__init__()
        self.engine, self.reference, self.every = engine, reference.eval().float(), max(1, int(every))
        self.workbench_config = getattr(engine, "workbench_config", None) or getattr(reference, "workbench_config", None)
        self.calls = 0
        self.agreement: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.engine(x)
        if self.calls % self.every == 0:
            with torch.autocast("cpu", enabled=False):
                ref = self.reference(x.float().contiguous())
            self.agreement.append(float((out.argmax(1) == ref.argmax(1)).float().mean()))
        self.calls += 1
        return out


def _build_dataset(name: str, split: str, data_root, mean, std, options: dict) -> Any:
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
    engine: str = "torch",
    agreement_every: int | None = None,
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
        engine: ``"torch"``, ``"openvino"`` (with ``precision="int8"`` the checkpoint's shipped int8 model),
            ``"onnxruntime"`` or ``"auto"`` (what the Predictor chooses on this CPU); see :func:`engine_model`.
        agreement_every: with an engine: also run fp32 eager on every ``agreement_every``-th image and record
            ``label_agreement`` (mean, worst, images) against it.

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
    model, manifest = load_checkpoint(path)
    trained_on = manifest.dataset_name
    if dataset is None:
        dataset = trained_on
        if not dataset:
            raise EvaluationError(f"{Path(path).name}: the manifest names no dataset (field dataset.name); pass one (--dataset)")
    options: dict = {}
    if isinstance(dataset, str) and dataset == trained_on and isinstance(manifest.dataset_info.get("options"), dict):
        options.update(manifest.dataset_info["options"])  # the training run's options (folder path, synthetic size, ...)
    options.update(dataset_options or {})
    if isinstance(dataset, str):
        ds_name = dataset
        if ds_name == "synthetic":
            options.setdefault("num_classes", manifest.num_classes)
        norm = manifest.normalization or default_normalization(manifest.in_chans)
        ds = _build_dataset(ds_name, split, data_root, norm["mean"], norm["std"], options)
        root = str(resolve_data_root(data_root)) if ds_name not in ("synthetic", "folder") else None
    else:
        ds = dataset
        ds_name = str(getattr(ds, "name", type(ds).__name__))
        split = str(getattr(ds, "split", split))
        root = None
    in_chans = manifest.in_chans
    ds_in = getattr(ds, "in_chans", None)
    if ds_in is not None and int(ds_in) != in_chans:
        raise EvaluationError(f"{Path(path).name} takes {in_chans}-channel input but dataset {ds_name!r} has {ds_in} channels")
    net, run_precision = engine_model(path, model, manifest, engine, precision)
    probe = ParityProbe(net, model, agreement_every) if agreement_every and engine != "torch" else None
    res = evaluate_model(
        probe or net,
        ds,
        classes=manifest.classes,
        flip=flip,
        window=window,
        stride=stride,
        scales=scales,
        limit=limit,
        device=device if engine == "torch" else "cpu",
        precision=run_precision,
        per_image=per_image,
        progress=progress,
        ignore_index=int(getattr(ds, "ignore_index", IGNORE_INDEX)),
        desc=f"{manifest['architecture']} {ds_name}/{split}",
    )
    if engine != "torch":
        res["options"]["engine"] = getattr(net, "engine", engine)
        res["options"]["precision"] = getattr(net, "engine_precision", None) or (precision if precision != "auto" else "fp32")
        if engine == "auto":
            res["options"]["engine_reason"] = getattr(net, "engine_reason", "")
    if probe is not None:
        a = probe.agreement
        res["label_agreement"] = {
            "reference": "torch eager fp32",
            "images": len(a),
            "every": probe.every,
            "mean": float(statistics.fmean(a)) if a else None,
            "worst": float(min(a)) if a else None,
        }
    if cost and engine == "torch":
        res["cost"] = model_cost(model, in_chans, precision=checkpoint_precision(manifest, "auto", torch.device("cpu")))
    out: dict[str, Any] = {
        "checkpoint": str(manifest.path),
        "architecture": manifest["architecture"],
        "kwargs": manifest.kwargs,
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
    what :func:`~workbench.inference.predictor.checkpoint_precision` gives the app for the checkpoint)."""
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


def parse_dataset_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, value)``, the value parsed as JSON when it is JSON (``size=[64, 64]``), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value
