"""The examples shipped inside the package (``workbench/examples/``): a few real test images with labels.

A Hugging Face Space, a fresh clone or an installed wheel has no data root, yet the app should still show real
street scenes with their ground truth and per-image scores, and the ISBI view real EM slices. So the package
carries a handful of held-out test images, laid out exactly like a data root (see docs/data.md for the sources,
the selection and the licences)::

    workbench/examples/
      camvid/test/NAME.png  camvid/testannot/NAME.png        5 CamVid test images + label maps
      isbi2012-membrane/image/N.png  .../label/N.png         ISBI 2012 slices 24-26 (held out) + labels

Because the layout is a data root's, the same readers serve both: :func:`~workbench.data.camvid.find_ground_truth`
looks here after the data root, and :func:`shipped_isbi` is ``build_dataset("isbi", "test", data_root=...)``.
"""

from __future__ import annotations

from pathlib import Path

from ..paths import examples_dir
from .base import SegDataset
from .datasets import build_dataset
from .files import IMAGE_EXTS

__all__ = ["examples_root", "shipped_camvid_images", "shipped_isbi_slices", "shipped_isbi"]


def examples_root() -> Path:
    """The folder of the shipped examples (inside the package, so a wheel and a Space carry it too)."""
    return examples_dir()


def shipped_camvid_images() -> list[Path]:
    """The shipped CamVid test images that have a label map beside them, sorted by name ([] if none)."""
    base = examples_root() / "camvid"
    if not (base / "test").is_dir():
        return []
    return sorted(p for p in (base / "test").iterdir() if p.suffix.lower() in IMAGE_EXTS and (base / "testannot" / p.name).is_file())


def shipped_isbi_slices() -> list[int]:
    """The slice numbers of the shipped ISBI 2012 slices that have a label ([] if none)."""
    base = examples_root() / "isbi2012-membrane"
    if not (base / "image").is_dir():
        return []
    return sorted(int(p.stem) for p in (base / "image").glob("*.png") if p.stem.isdigit() and (base / "label" / p.name).is_file())


def shipped_isbi() -> SegDataset:
    """The shipped ISBI slices as the ``isbi`` dataset's test split (raises ``DatasetError`` if none are shipped)."""
    return build_dataset("isbi", "test", data_root=examples_root(), test_slices=shipped_isbi_slices(), val_slices=[])
