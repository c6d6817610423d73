"""Several checkpoints as one model: the mean of their softmax probabilities, evaluated like one checkpoint.

This is the teacher of ``workbench distill`` (which builds it with :func:`load_ensemble`), so its test
mIoU is the ceiling a distilled student is measured against::

    from workbench.evaluation.ensemble import evaluate_ensemble
    res = evaluate_ensemble(["camvid_unet", "camvid_deeplabv3plus"], split="test", flip=True)
    res["metrics"]["miou"], res["ensemble"]["members"]

or ``python -m workbench eval camvid_unet camvid_deeplabv3plus --ensemble --split test --out eval_ensemble``.

Each member sees the image normalised its own way (its manifest's ``normalization``) and runs with the
test-time augmentation asked for (``flip``, ``scales``, ``window``: :func:`workbench.evaluation.tta.predict_probs`,
exactly as ``workbench eval`` runs one checkpoint); the ensemble's probabilities are the plain mean of the
members' (equal weights). An ensemble of one checkpoint therefore scores exactly as that checkpoint does.
Metrics follow the leaderboard's protocol (one confusion matrix over every image,
:func:`workbench.evaluation.evaluate.evaluate_model`). The members must predict the same classes from the
same number of input channels and, for evaluation, have been trained on the same dataset.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from .. import __version__
from ..classes import IGNORE_INDEX, default_normalization
from ..io.checkpoint import load_checkpoint, read_manifest, sha256_file
from ..paths import checkpoints_dir, resolve_data_root
from ..system.machine import machine_description
from .evaluate import EvaluationError, _build_dataset, evaluate_model
from .tta import predict_probs

__all__ = ["ENSEMBLE_RULE", "Ensemble", "resolve_member", "load_ensemble", "evaluate_ensemble"]

ENSEMBLE_RULE = "mean of the members' softmax probabilities (equal weights), each member with its own normalisation and the test-time augmentation"
_PROB_FLOOR = 1e-30  # probabilities are clamped here before a log


def resolve_member(spec: str | os.PathLike) -> dict[str, Any]:
    """One member's provenance: its manifest path, name, architecture, classes, metrics and the sha256 of its weights file.

    ``spec`` is a manifest (``.json``), its ``.safetensors``, or the name of a checkpoint in
    ``checkpoints/`` (``camvid_unet``). The weights file is hashed here and must match the manifest.

    Raises:
        FileNotFoundError: no such checkpoint, or its weights file is missing.
        ValueError: the weights file's sha256 differs from the manifest's.
    """
    p = Path(spec)
    if not (p.suffix in (".json", ".safetensors") or p.exists()):
        cand = checkpoints_dir() / f"{spec}.json"
        if not cand.is_file():
            raise FileNotFoundError(f"checkpoint {str(spec)!r} not found: give a checkpoint's .json manifest or the name of one in {checkpoints_dir()}")
        p = cand
    manifest = read_manifest(p)
    path = Path(manifest["_path"])
    weights = path.parent / manifest["weights"].get("file", path.with_suffix(".safetensors").name)
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {str(spec)!r}: weights file {weights} does not exist")
    digest = sha256_file(weights)
    if digest != manifest["weights"]["sha256"]:
        raise ValueError(f"checkpoint {str(spec)!r}: {weights.name} has sha256 {digest[:12]}..., the manifest says {manifest['weights']['sha256'][:12]}...; the weights were modified")
    metrics = manifest.get("metrics") or {}
    return {
        "checkpoint": path.stem,
        "path": str(path),
        "architecture": manifest.get("architecture"),
        "weights_sha256": digest,
        "classes": [c.get("name") if isinstance(c, dict) else c for c in (manifest.get("classes") or [])],
        "val_miou": (metrics.get("val") or {}).get("miou"),
        "test_miou": (metrics.get("test") or {}).get("miou"),
    }


class Ensemble(nn.Module):
    """Models whose softmax probabilities are averaged; inputs are images scaled to [0, 1] (not normalised).

    Each member normalises the image with its own ``normalizations[i]`` (``{"mean", "std"}``). Use
    :meth:`predict_probs` for one image with test-time augmentation (what evaluation and distillation
    use); :meth:`forward` gives the log of the mean probabilities of a batch, so the ensemble also works
    where a model returning logits is expected (softmax of it is the mean).
    """

    def __init__(self, models: Sequence[nn.Module], normalizations: Sequence[dict], num_classes: int | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        if len(models) != len(normalizations):
            raise ValueError(f"{len(models)} models but {len(normalizations)} normalisations")
        self.members = nn.ModuleList(models)
        for i, norm in enumerate(normalizations):
            self.register_buffer(f"mean{i}", torch.tensor(norm["mean"], dtype=torch.float32)[:, None, None], persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(norm["std"], dtype=torch.float32)[:, None, None], persistent=False)
        self.workbench_config = {"architecture": "ensemble", "kwargs": {"num_classes": num_classes} if num_classes is not None else {}}

    def _normalised(self, i: int, image: torch.Tensor) -> torch.Tensor:
        mean, std = getattr(self, f"mean{i}"), getattr(self, f"std{i}")
        return (image.to(mean.device, torch.float32) - mean) / std

    @torch.inference_mode()
    def predict_probs(
        self,
        image: torch.Tensor,
        *,
        flip: bool = False,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        scales: Iterable[float] | None = None,
        precision: str = "fp32",
    ) -> torch.Tensor:
        """The mean of the members' float32 ``(C, H, W)`` probabilities of one ``(C_in, H, W)`` image in [0, 1],
        each computed by :func:`~workbench.evaluation.tta.predict_probs` with these options."""
        acc = None
        for i, model in enumerate(self.members):
            p = predict_probs(model, self._normalised(i, image), flip=flip, window=window, stride=stride, scales=scales, precision=precision).float()
            acc = p if acc is None else acc + p
        return acc / len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W)`` images in [0, 1] -> the log of the mean of the members' softmax probabilities (B, C, H, W)."""
        acc = None
        for i, model in enumerate(self.members):
            p = model(self._normalised(i, x)).float().softmax(1)
            acc = p if acc is None else acc + p
        return (acc / len(self.members)).clamp_min(_PROB_FLOOR).log()


def load_ensemble(specs: Iterable[str | os.PathLike], device: str | torch.device = "cpu") -> tuple[Ensemble, list[dict[str, Any]], list]:
    """Load checkpoints as one :class:`Ensemble`: ``(ensemble, members, manifests)``.

    ``members`` are :func:`resolve_member` records (weights sha256-verified), in the order given. Raises
    ``EvaluationError`` when no checkpoint is named or the members predict different classes or take
    different input channels.
    """
    members = [resolve_member(s) for s in specs]
    if not members:
        raise EvaluationError("an ensemble needs at least one checkpoint")
    loaded = [load_checkpoint(m["path"], device=device) for m in members]
    first, first_manifest = members[0], loaded[0][1]
    for m, (_model, manifest) in zip(members[1:], loaded[1:]):
        if m["classes"] != first["classes"] or manifest.num_classes != first_manifest.num_classes:
            raise EvaluationError(f"{m['checkpoint']} predicts {manifest.num_classes} classes {m['classes']} but {first['checkpoint']} predicts "
                                  f"{first_manifest.num_classes} {first['classes']}: an ensemble's members must predict the same classes")
        if manifest.in_chans != first_manifest.in_chans:
            raise EvaluationError(f"{m['checkpoint']} takes {manifest.in_chans}-channel input but {first['checkpoint']} takes {first_manifest.in_chans}")
    norms = [manifest.normalization or default_normalization(manifest.in_chans) for _model, manifest in loaded]
    ensemble = Ensemble([model for model, _ in loaded], norms, num_classes=first_manifest.num_classes).to(device)
    return ensemble, members, [manifest for _model, manifest in loaded]


def evaluate_ensemble(
    checkpoints: Sequence[str | os.PathLike],
    *,
    dataset: str | None = None,
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
) -> dict[str, Any]:
    """Evaluate the mean of several checkpoints' softmax probabilities as one model on a dataset split.

    Arguments as :func:`workbench.evaluation.evaluate.evaluate_checkpoint` (``dataset`` a name: default the
    members' training dataset, whose manifest options the first member gives), with ``checkpoints`` the
    members (manifests or names in ``checkpoints/``). The result has the same fields as a checkpoint's,
    ``checkpoint`` and ``architecture`` naming the ensemble, plus ``ensemble``: the rule and each member's
    name, architecture, weights sha256 and recorded val/test mIoU; ``machine``: the CPU and ISA it ran on.

    Raises:
        EvaluationError: no or mismatched members (classes, input channels, training dataset), missing data.
        FileNotFoundError, ValueError: a member cannot be found or its weights do not match its manifest.
    """
    ensemble, members, manifests = load_ensemble(checkpoints, device="cpu")
    trained_on = [m.dataset_name for m in manifests]
    if len(set(trained_on)) > 1:
        pairs = ", ".join(f"{m['checkpoint']}: {d!r}" for m, d in zip(members, trained_on))
        raise EvaluationError(f"the members were trained on different datasets ({pairs}): an ensemble is evaluated on the dataset its members share")
    if dataset is not None and not isinstance(dataset, str):
        raise EvaluationError("an ensemble is evaluated on a dataset given by name (each member normalises the images its own way)")
    first = manifests[0]
    ds_name = dataset or trained_on[0]
    if not ds_name:
        raise EvaluationError(f"{members[0]['checkpoint']}: the manifest names no dataset (field dataset.name); pass one (--dataset)")
    options: dict = {}
    if ds_name == trained_on[0] and isinstance(first.dataset_info.get("options"), dict):
        options.update(first.dataset_info["options"])
    options.update(dataset_options or {})
    if ds_name == "synthetic":
        options.setdefault("num_classes", first.num_classes)
    in_chans = first.in_chans
    ds = _build_dataset(ds_name, split, data_root, [0.0] * in_chans, [1.0] * in_chans, options)  # [0, 1]: each member normalises
    ds_in = getattr(ds, "in_chans", None)
    if ds_in is not None and int(ds_in) != in_chans:
        raise EvaluationError(f"the members take {in_chans}-channel input but dataset {ds_name!r} has {ds_in} channels")
    name = "ensemble-" + "+".join(m["checkpoint"] for m in members)
    res = evaluate_model(
        ensemble,
        ds,
        classes=first.classes,
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
        desc=f"ensemble of {len(members)} {ds_name}/{split}",
    )
    out: dict[str, Any] = {
        "checkpoint": name,
        "architecture": "ensemble",
        "kwargs": None,
        "num_parameters": sum(p.numel() for p in ensemble.parameters()),
        "dataset": ds_name,
        "split": split,
        "data_root": str(resolve_data_root(data_root)) if ds_name not in ("synthetic", "folder") else None,
        "dataset_options": options or None,
        "ensemble": {
            "rule": ENSEMBLE_RULE,
            "members": [{k: m[k] for k in ("checkpoint", "architecture", "weights_sha256", "val_miou", "test_miou")} for m in members],
        },
    }
    out.update(res)
    out["machine"] = machine_description()
    out["software"] = {"workbench": __version__, "torch": torch.__version__}
    out["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out
