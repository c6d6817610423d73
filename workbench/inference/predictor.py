"""Inference on one image: load, preprocess, forward, postprocess.

``Predictor`` wraps a model or a checkpoint path. Large images are resized to a
working size (``max_side``) for the network and the label map is brought back
to the original size, so memory stays bounded whatever the upload. The forward
pass runs on an engine (:mod:`workbench.inference.engines`): PyTorch, OpenVINO or
ONNX Runtime, chosen per checkpoint and machine with ``engine="auto"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..classes import default_classes, default_normalization
from ..io.checkpoint import load_checkpoint
from ..io.images import load_image
from ..io.manifest import Manifest
from ..models.base import MIN_INPUT_SIZE
from ..system.machine import cpu_supports_bf16
from .engines import CPU_ENGINES, Engine, check_engine, engine_class
from .engines.cache import artifacts_dir
from .engines.choose import choose_engine
from .engines.pytorch import TorchEngine, autocast_context
from .fold import optimize_for_inference

__all__ = ["Predictor", "Prediction", "upsample_argmax", "resolve_device", "resolve_precision", "checkpoint_precision", "autocast_context"]

DEFAULT_MAX_SIDE = 1024  # working size: the longer side is resized down to this


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA and on CPUs with native bf16, else ``"fp32"``."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def checkpoint_precision(manifest: Mapping[str, Any], precision: str, device: torch.device) -> str:
    """``resolve_precision``, except that ``"auto"`` gives fp32 for a checkpoint whose manifest pins
    ``"inference": {"precision": "fp32"}`` (its bf16 labels miss the parity bar of
    :func:`workbench.inference.parity.parity_holds`: scripts/check_bf16_parity.py). An explicit precision always wins."""
    if precision == "auto" and Manifest.of(manifest).pinned_precision == "fp32":
        return "fp32"
    return resolve_precision(precision, device)


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], band_pixels: int = 1 << 20) -> torch.Tensor:
    """``argmax`` of bilinearly upsampled ``logits`` (1, C, h, w) at ``size``, in row bands.

    Same result as ``F.interpolate(logits, size, mode="bilinear").argmax(1)`` but the
    full-size (C, H, W) tensor is never materialised, so a 6000x4000 upload costs
    a few tens of MB instead of a gigabyte.
    """
    h, w = size
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1  # align_corners=False sample positions
    rows = max(1, band_pixels // max(w, 1))
    out = torch.empty((h, w), dtype=torch.int64)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5) / h * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]  # (1, band, W, 2) as (x, y)
        band = F.grid_sample(logits.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[r0:r1] = band[0].argmax(0)
    return out


@dataclass
class Prediction:
    """The result of :meth:`Predictor.predict`.

    Attributes:
        labels: (H, W) integer class map at the original image size (display orientation).
        logits_work: (C, h, w) float32 logits at the working size.
        probs_work: (C, h, w) float32 softmax probabilities at the working size (computed on first access).
        latency_ms: wall time of the whole predict call.
        timings: milliseconds per stage (``load``, ``preprocess``, ``forward``, ``postprocess``).
        image: the input as decoded (display orientation), at the original size.
        classes: ``[{"name", "color"}]`` per class.
        engine, engine_precision: what ran the forward pass (``"torch"``, ``"openvino"``, ``"onnxruntime"``;
            ``"fp32"``, ``"bf16"``, ``"int8"``, ...).
        batch: how many images shared the forward pass (:meth:`Predictor.predict_batch`; 1 for :meth:`Predictor.predict`).
    """

    labels: np.ndarray
    logits_work: np.ndarray
    latency_ms: float
    timings: dict[str, float]
    image: Image.Image
    classes: list[dict[str, Any]] = field(default_factory=list)
    engine: str = "torch"
    engine_precision: str = "fp32"
    batch: int = 1  # images that shared the forward pass (Predictor.predict_batch)

    @cached_property
    def probs_work(self) -> np.ndarray:
        return torch.from_numpy(self.logits_work).softmax(0).numpy()

    @cached_property
    def probs(self) -> np.ndarray:
        """(C, H, W) float32 per-class probabilities at the original image size (computed on first access)."""
        h, w = self.labels.shape
        if self.probs_work.shape[1:] == (h, w):
            return self.probs_work
        t = torch.from_numpy(self.probs_work)[None]
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()


class Predictor:
    """Run a segmentation model on single images.

    Args:
        model_or_checkpoint: an ``nn.Module`` (e.g. from :func:`workbench.create_model`) or
            the path of a checkpoint (``.json`` manifest or ``.safetensors`` weights).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        precision: ``"auto"`` (bf16 autocast where the hardware has it), ``"fp32"``, ``"bf16"``, ``"fp16"``.
        max_side: images whose longer side exceeds this are resized down for the network;
            the labels come back at the original size.
        classes, normalization: override what the checkpoint manifest says.
        optimize: fold BatchNorms into convolutions (checked against the unfolded model; see
            :mod:`workbench.inference.fold`). The model you pass is not modified.
        engine: ``"torch"``, ``"openvino"``, ``"onnxruntime"`` (CPU only) or ``"auto"``. On CUDA only torch
            runs (``"auto"`` is torch; a CPU engine raises ValueError). On the CPU, ``"auto"`` picks for a
            checkpoint path (precision ``"auto"``, ``optimize=True``) the fastest engine and precision whose
            labels pass the parity rule, measured once per checkpoint and machine and cached on disk
            (:mod:`workbench.inference.engines.choose`). An ``nn.Module`` gets torch under ``"auto"``: without
            a checkpoint there is no weights hash to key a cached measurement on, and hashing the state dict
            of every module (tests, the app's untrained models) would cost more than it saves.
            ``engine``, ``engine_precision`` and ``engine_reason`` say what was chosen and why. The environment
            variable ``WORKBENCH_ENGINE`` (an engine name) replaces ``"auto"`` everywhere (the test suite: torch).
    """

    def __init__(
        self,
        model_or_checkpoint: nn.Module | str | os.PathLike,
        device: str | torch.device = "auto",
        *,
        precision: str = "auto",
        max_side: int = DEFAULT_MAX_SIDE,
        classes: list[dict] | None = None,
        normalization: dict | None = None,
        optimize: bool = True,
        engine: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if engine == "auto" and os.environ.get("WORKBENCH_ENGINE", "auto") != "auto":
            engine = os.environ["WORKBENCH_ENGINE"]  # a fixed engine for every Predictor (the test suite: torch)
        check_engine(engine)
        if self.device.type != "cpu" and engine in CPU_ENGINES:
            raise ValueError(f"engine {engine!r} runs on the CPU only; on {self.device} use engine='torch' (or 'auto')")
        manifest_path = weights_sha = None
        if isinstance(model_or_checkpoint, nn.Module):
            model = model_or_checkpoint
            manifest = dict(getattr(model, "workbench_manifest", {}) or {})
            if not manifest:
                manifest = dict(getattr(model, "workbench_config", {}) or {})
        else:
            model, manifest = load_checkpoint(Path(model_or_checkpoint))
            manifest_path = manifest.get("_path") or Path(model_or_checkpoint)
            weights_sha = (manifest.get("weights") or {}).get("sha256")  # verified by load_checkpoint
        manifest = Manifest.of(manifest)
        kwargs = manifest.kwargs
        self.in_chans = int(kwargs.get("in_chans", 3))
        num_classes = kwargs.get("num_classes")
        self.manifest = manifest
        self.classes = classes or manifest.get("classes") or default_classes(int(num_classes or 0))
        self.num_classes = int(num_classes) if num_classes else (len(self.classes) or None)  # None: unknown, not checked
        norm = normalization or manifest.get("normalization") or default_normalization(self.in_chans)
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32).view(-1, 1, 1)
        if precision == "int8":  # an engine precision (OpenVINO's quantized model); torch keeps fp32
            if engine not in ("auto", "openvino"):
                raise ValueError(f"precision 'int8' runs on the openvino engine, not {engine!r}")
            engine = "openvino"
        self.precision = checkpoint_precision(manifest, "fp32" if precision == "int8" else precision, self.device)
        self.max_side = int(max_side)
        self.num_parameters = int(sum(p.numel() for p in model.parameters()))  # of the model as built, before folding
        reference = model.eval()
        if optimize:
            model, self.optimizations = optimize_for_inference(model, torch.randn(1, self.in_chans, 64, 64))
        else:
            self.optimizations = {}
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self._engine = self._build_engine(engine, precision, reference, manifest_path, weights_sha, optimize)
        self.engine: str = self._engine.name
        self.engine_precision: str = self._engine.precision

    def _build_engine(self, engine: str, precision: str, reference: nn.Module, manifest_path, weights_sha: str | None, optimize: bool) -> Engine:
        """The engine ``engine`` asks for (``"auto"``: see the class docstring); sets ``engine_reason``."""
        artifacts = artifacts_dir(weights_sha) if weights_sha and self.device.type == "cpu" else None
        self.engine_record: dict = {}  # auto's measurement (candidates, images, key), when auto measured or read one
        if engine == "auto":
            why_torch = (
                f"torch {self.precision}: on {self.device.type}" if self.device.type != "cpu"
                else f"torch {self.precision}: an nn.Module (auto measures engines for checkpoint paths only)" if weights_sha is None
                else f"torch {self.precision}: precision {precision!r} was asked for (auto measures engines under precision 'auto')" if precision != "auto"
                else f"torch {self.precision}: optimize=False (the unoptimised model was asked for)" if not optimize
                else None
            )
            if why_torch is not None:
                self.engine_reason = why_torch
                return TorchEngine(self.model, in_chans=self.in_chans, precision=self.precision, device=self.device)
            choice = choose_engine(
                reference, self.model, weights_sha256=weights_sha, manifest=self.manifest, preprocess=self.preprocess, mode=self.mode,
                in_chans=self.in_chans, artifacts=artifacts, manifest_path=manifest_path, max_side=self.max_side,
            )
            self.engine_reason, self.engine_record = choice.reason, choice.record
            if choice.built is not None:
                return choice.built
            engine, precision = choice.engine, choice.precision
        else:
            self.engine_reason = f"{engine}: asked for"
        if engine == "torch":
            if precision != "auto":
                self.precision = precision  # an explicit one, or what auto measured
            return TorchEngine(self.model, in_chans=self.in_chans, precision=self.precision, device=self.device)
        # the CPU runtimes load their library (OpenVINO's import alone takes most of a second) only when used
        return engine_class(engine)(self.model, in_chans=self.in_chans, precision="fp32" if precision == "auto" else precision, device=self.device, artifacts=artifacts, manifest_path=manifest_path)

    @property
    def mode(self) -> str:
        return "L" if self.in_chans == 1 else "RGB"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """PIL image (in ``self.mode``) -> normalised (1, C, h, w) tensor at the working size."""
        w, h = image.size
        scale = min(1.0, self.max_side / max(w, h))
        if scale < 1.0:
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        arr = np.array(image, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only)
        t = torch.from_numpy(arr).float()  # (h, w[, C]) contiguous float
        if t.ndim == 2:
            t = t[..., None]
        t.sub_(self.mean.view(-1) * 255).div_(self.std.view(-1) * 255)  # (x / 255 - mean) / std, in place, per channel
        t = t.permute(2, 0, 1)[None]  # (1, C, h, w) in channels_last memory, the layout the model wants
        h2, w2 = t.shape[-2:]
        if min(h2, w2) < MIN_INPUT_SIZE:  # tiny or very thin images: upscale the short side to the minimum
            f = MIN_INPUT_SIZE / min(h2, w2)
            t = F.interpolate(t, size=(max(MIN_INPUT_SIZE, round(h2 * f)), max(MIN_INPUT_SIZE, round(w2 * f))), mode="bilinear", align_corners=False)
        return t

    @torch.inference_mode()
    def forward_device(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on a preprocessed batch; the logits stay on the model's device (no host sync)."""
        y = self._engine(x)
        expected = (x.shape[0], self.num_classes or (y.shape[1] if isinstance(y, torch.Tensor) and y.ndim == 4 else -1), *x.shape[-2:])
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"the model returned {got}, expected logits of shape {expected}")
        return y

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass on a preprocessed batch (float32 logits on the CPU)."""
        return self.forward_device(x).float().cpu()

    def warmup(self, size: tuple[int, int] = (360, 480)) -> None:
        """One forward pass on a blank input so the first real request does not pay for kernel setup."""
        self.logits(torch.zeros(1, self.in_chans, *size))

    def predict(self, image, shared: dict | None = None) -> Prediction:
        """Segment one image (PIL image, numpy array, path or bytes).

        Args:
            shared: a dict reused across several predictors on the same image (the app's side-by-side run):
                the decoded image and the normalised input tensor are made once per (mode, normalisation,
                working size) and shared, instead of once per model. The tensor is never modified.

        Returns:
            :class:`Prediction` with labels at the original size.
        """
        t0 = time.perf_counter()
        im, x, t1 = self._prepare(image, shared)
        t2 = time.perf_counter()
        logits = self.logits(x)  # (1, C, h, w)
        t3 = time.perf_counter()
        return self._finish(im, logits, {"load": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3, "forward": (t3 - t2) * 1e3}, t0)

    @property
    def max_batch(self) -> int | None:
        """How many images one forward pass of this engine may hold: None (any) for torch and ONNX Runtime,
        1 for OpenVINO (its graph's input is [1, C, ?, ?])."""
        return self._engine.max_batch

    def predict_batch(self, images: Sequence, batch_size: int | None = None) -> list[Prediction]:
        """Segment several images, in as few forward passes as the engine allows.

        Images whose network inputs have the same size (same-size images, whatever their source) go through one
        forward pass, at most ``batch_size`` (default: all) and :attr:`max_batch` at a time; the others run in
        passes of their own. Each result is what :meth:`predict` gives for that image, up to the engine's
        floating-point differences between batch sizes.

        Args:
            images: PIL images, arrays, paths or bytes, as for :meth:`predict`; they are all decoded first, so
                pass a bounded number (a folder streams through in chunks: ``workbench predict``).
            batch_size: the most images per forward pass.

        Returns:
            One :class:`Prediction` per image, in order. ``timings["forward"]`` is the image's share of its pass
            (the pass's time over its images) and ``batch`` the number of images in it.

        Raises:
            ImageError: an image cannot be decoded (decode them first with :func:`workbench.io.images.load_image`
                to skip bad ones).
        """
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        prepared = []
        for image in images:
            t0 = time.perf_counter()
            im, x, t1 = self._prepare(image, None)
            prepared.append((im, x, {"load": (t1 - t0) * 1e3, "preprocess": (time.perf_counter() - t1) * 1e3}, t0))
        limit = max(1, min(int(batch_size or len(prepared)), self.max_batch or len(prepared)))
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_im, x, _t, _t0) in enumerate(prepared):
            groups.setdefault(tuple(x.shape), []).append(i)
        results: list[Prediction | None] = [None] * len(prepared)
        for idx in groups.values():
            for start in range(0, len(idx), limit):
                chunk = idx[start : start + limit]
                t2 = time.perf_counter()
                logits = self.logits(torch.cat([prepared[i][1] for i in chunk]) if len(chunk) > 1 else prepared[chunk[0]][1])
                share = (time.perf_counter() - t2) * 1e3 / len(chunk)
                for j, i in enumerate(chunk):
                    im, _x, timings, t0 = prepared[i]
                    pred = self._finish(im, logits[j : j + 1], {**timings, "forward": share}, t0)
                    pred.batch = len(chunk)
                    results[i] = pred
        return results  # type: ignore[return-value]

    def _prepare(self, image, shared: dict | None) -> tuple[Image.Image, torch.Tensor, float]:
        """Decoded image, normalised input, and the time decoding ended."""
        if shared is None:
            im = load_image(image, self.mode)
            t1 = time.perf_counter()
            return im, self.preprocess(im), t1
        im = shared.get(("image", self.mode))
        if im is None:
            im = shared[("image", self.mode)] = load_image(image, self.mode)
        t1 = time.perf_counter()
        key = ("input", self.mode, tuple(self.mean.view(-1).tolist()), tuple(self.std.view(-1).tolist()), self.max_side)
        x = shared.get(key)
        if x is None:
            x = shared[key] = self.preprocess(im)
        return im, x, t1

    def _finish(self, im: Image.Image, logits: torch.Tensor, timings: dict, t0: float) -> Prediction:
        """Labels at the original size from CPU float32 logits (1, C, h, w)."""
        t3 = time.perf_counter()
        w, h = im.size
        # the argmax of the logits is the argmax of the probabilities: the softmax waits until someone asks
        dtype = np.uint8 if logits.shape[1] <= 256 else np.int32
        if logits.shape[-2:] != (h, w):
            labels_np = upsample_argmax(logits, (h, w)).numpy().astype(dtype)
        else:  # numpy's argmax over the class axis: 4x torch's on (11, 360, 480) (same first-maximum rule)
            labels_np = logits[0].float().numpy().argmax(0).astype(dtype)
        # (C, h, w) in C order: a channels-last result is reordered here by torch (multi-threaded), faster than
        # numpy would for the consumers that read it planar (the checkerboard score, probability maps)
        logits_work = logits[0].contiguous().numpy()
        t4 = time.perf_counter()
        timings = {**timings, "postprocess": (t4 - t3) * 1e3}
        # the sum of this model's own stages (in predict_many, other models' passes run between them)
        return Prediction(labels=labels_np, logits_work=logits_work, latency_ms=sum(timings.values()), timings=timings, image=im, classes=self.classes, engine=self.engine, engine_precision=self.engine_precision)


def predict_many(predictors: list[Predictor], image, shared: dict | None = None) -> list[Prediction | Exception]:
    """Several predictors on one image, their forward passes issued back to back.

    Every model's forward pass is queued before any result is copied back, so on a GPU the device runs them
    one after another with no host synchronisation in between (the copies and argmaxes follow); on the CPU
    the same code simply runs them in turn. The image is decoded and normalised once (``shared``).

    Returns:
        One :class:`Prediction` per predictor, in order, or the exception that model raised (one failing
        model does not stop the others). ``timings["forward"]`` is the time to queue the pass plus, on a GPU,
        the wait for its result.
    """
    shared = {} if shared is None else shared
    queued: list = []
    for pred in predictors:
        try:
            t0 = time.perf_counter()
            im, x, t1 = pred._prepare(image, shared)
            t2 = time.perf_counter()
            y = pred.forward_device(x)
            queued.append((pred, im, y, {"load": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3}, t0, time.perf_counter() - t2))
        except Exception as exc:
            queued.append(exc)
    results: list[Prediction | Exception] = []
    for item in queued:
        if isinstance(item, Exception):
            results.append(item)
            continue
        pred, im, y, timings, t0, launch_s = item
        try:
            t = time.perf_counter()
            logits = y.float().cpu()  # the first host sync
            timings["forward"] = (launch_s + time.perf_counter() - t) * 1e3
            results.append(pred._finish(im, logits, timings, t0))
        except Exception as exc:
            results.append(exc)
    return results
