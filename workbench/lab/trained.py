"""The trained U-Net upsampling variants: which checkpoints they are, and their table
(test mIoU, checkerboard score of the probability maps, CPU latency, parameters).

``scripts/train_upsampling.sh`` trains and publishes them; ``python -m workbench.lab table`` writes
the table (:mod:`workbench.lab.__main__`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inference.predictor import Predictor
from ..io.manifest import CheckpointError, Manifest
from ..models.upsampling import canonical_upsample
from ..paths import checkpoints_dir
from .scores import checkerboard_score

__all__ = ["TRAINED_METHODS", "variant_checkpoints", "variant_table", "variant_markdown"]


# The upsampling methods of the trained U-Net variants (``--upsample`` values).
TRAINED_METHODS = ("nearest", "bilinear", "transposed_k3", "transposed_k4", "resize_conv", "pixel_shuffle", "bed_of_nails", "max_unpool")


def variant_checkpoints(folder=None) -> dict[str, Path]:
    """The trained U-Net upsampling variants: ``{method: manifest path}`` in :data:`TRAINED_METHODS` order.

    A variant is a checkpoint whose manifest says ``"upsampling_lab": true``
    (``scripts/train_upsampling.sh publish`` writes them as
    ``checkpoints/upsampling_unet_<method>``); the method is the model's ``upsample`` kwarg.
    Unreadable manifests are skipped.
    """
    folder = checkpoints_dir() if folder is None else Path(folder)
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            man = Manifest.read(path)
        except CheckpointError:
            continue
        if not man.in_upsampling_lab:
            continue
        up = man.upsample
        try:
            method = canonical_upsample(up) if up is not None else path.stem.removeprefix("upsampling_unet_")
        except ValueError:
            method = path.stem.removeprefix("upsampling_unet_")
        found.setdefault(method if isinstance(method, str) else path.stem, path)
    order = {m: i for i, m in enumerate(TRAINED_METHODS)}
    return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def variant_table(checkpoints: list, images: list, *, device: str = "auto", stride: int = 2) -> list[dict]:
    """Test mIoU and CPU latency from each manifest, and the mean checkerboard score of its
    probability maps over ``images`` (paths or arrays), one dict per checkpoint."""
    rows = []
    for path in checkpoints:
        man = Manifest.read(path)
        pred = Predictor(path, device)
        scores = [checkerboard_score(pred.predict(im).probs_work, stride) for im in images]
        up = man.upsample
        rows.append(
            {
                "name": Path(path).stem,
                "method": canonical_upsample(up) if up is not None else "?",
                "miou": man.test_miou,
                "checkerboard": float(np.mean(scores)) if scores else None,
                "cpu_latency_ms": man.cpu_latency_ms,
                "num_parameters": man.num_parameters,
            }
        )
    return rows


def variant_markdown(rows: list[dict], n_images: int) -> str:
    """The trained-variant table as Markdown."""

    def fmt(v, pattern):
        return "-" if v is None else pattern.format(v)

    lines = [
        f"| variant | upsample | test mIoU | checkerboard score (mean of {n_images} test images, stride 2) | CPU latency 360x480 (ms) | params (M) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | `{r['method']}` | {fmt(r['miou'] and 100 * r['miou'], '{:.1f}')} | {fmt(r['checkerboard'], '{:.2e}')} "
            f"| {fmt(r['cpu_latency_ms'], '{:.0f}')} | {fmt(r['num_parameters'] and r['num_parameters'] / 1e6, '{:.2f}')} |"
        )
    return "\n".join(lines) + "\n"

