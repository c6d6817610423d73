"""Fine-tuning: start a run from a checkpoint's weights (``--init-from``), refusing a different network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from ..io.checkpoint import CheckpointError, load_checkpoint

__all__ = ["TRAINING_ONLY_KWARGS", "init_weights"]

# kwargs that change how a network trains but not the function it computes at inference: where the start
# weights came from, and dropout (identity in eval mode, no parameters). A fine-tune may change them.
TRAINING_ONLY_KWARGS = frozenset({"encoder_weights", "dropout"})


def _comparable_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in TRAINING_ONLY_KWARGS}


def init_weights(model: nn.Module, path: str) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (fine-tuning) and return its provenance for the new manifest.

    The checkpoint goes through :func:`load_checkpoint` (safetensors, hash check,
    shapes). Its architecture and kwargs must equal the run's (apart from
    :data:`TRAINING_ONLY_KWARGS`), so the new checkpoint is the same network
    trained further; anything else is refused with the differences named.
    """
    try:
        source, manifest = load_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"--init-from {path}: {exc}") from None
    want, have = model.workbench_config, source.workbench_config
    if want["architecture"] != have["architecture"]:
        raise ValueError(f"--init-from {path}: the checkpoint is a {have['architecture']!r}, this run trains {want['architecture']!r}")
    a, b = _comparable_kwargs(want["kwargs"]), _comparable_kwargs(have["kwargs"])
    if a != b:
        diff = ", ".join(f"{k}: run {a.get(k)!r} vs checkpoint {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
        raise ValueError(f"--init-from {path}: the checkpoint's {have['architecture']} differs from this run's ({diff}); pass the same --encoder/--upsample/--model-kwargs")
    model.load_state_dict(source.state_dict(), strict=True)
    return {
        "checkpoint": Path(manifest.path).name,
        "weights_sha256": manifest.sha256,
        "val_miou": manifest.val_miou,
        "training": manifest.training,  # the run that made the start weights: command, config, epochs, hardware
    }
