"""Segmentation datasets by name: CamVid, ISBI 2012 membranes, any image/mask folder, and a synthetic set.

Everything goes through :func:`build_dataset`::

    from workbench.data import build_dataset
    from workbench.data.transforms import train_transforms

    ds = build_dataset("camvid", "train", transform=train_transforms((352, 480), **norm), cache=True)
    ds.validate()               # every pair decodes, sizes match, labels in range; DatasetError otherwise
    sample = ds[0]              # {"image": ..., "mask": ..., "name": ...} (after the transform)

What a sample is and the options every dataset takes (``cache``, ``border_weights``,
``border_options``, ``weight_cache_dir``): :mod:`workbench.data.base`. The datasets and their
splits and options, one module each:

``camvid``  :mod:`workbench.data.camvid`, train / val / test = 367 / 101 / 233, 11 classes.
``isbi``  :mod:`workbench.data.isbi`, grayscale membranes, 2 classes, test = slices 24..29.
``folder``  :mod:`workbench.data.folder`, option ``path=`` to a folder with ``images/`` and ``masks/``.
``synthetic``  :mod:`workbench.data.synthetic`, shapes made in code, deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import DatasetError, LabelDecoder, SegDataset
from .camvid import build_camvid, find_ground_truth
from .files import require_data_root
from .folder import build_folder
from .isbi import build_isbi
from .synthetic import SyntheticDataset, build_synthetic, synthetic_sample

# the dataset classes and helpers are importable from here as they always were (workbench.data has them too)
__all__ = ["DatasetError", "SegDataset", "SyntheticDataset", "LabelDecoder", "build_dataset", "synthetic_sample", "require_data_root", "find_ground_truth", "DATASETS"]

DATASETS = ("camvid", "isbi", "folder", "synthetic")

_BUILDERS = {"camvid": build_camvid, "isbi": build_isbi, "folder": build_folder, "synthetic": build_synthetic}


def build_dataset(
    name: str,
    split: str,
    *,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    border_weights: bool = False,
    **options,
) -> SegDataset:
    """Build dataset ``name`` (``camvid``, ``isbi``, ``folder``, ``synthetic``), split ``split``.

    ``data_root`` defaults to ``$WORKBENCH_DATA_ROOT``, then ``../shared/data``. Options per dataset
    are described in each dataset's module, the common ``cache``, ``border_options``,
    ``weight_cache_dir`` in :mod:`workbench.data.base`. Raises DatasetError for unknown names, splits or options, a missing data root or
    dataset folder, and missing files.
    """
    builder = _BUILDERS.get(str(name).lower())
    if builder is None:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    common = {
        "transform": transform,
        "border_weights": border_weights,
        "cache": bool(options.pop("cache", False)),
        "border_options": options.pop("border_options", None),
        "weight_cache_dir": options.pop("weight_cache_dir", None),
    }
    return builder(split, data_root, common, options)
