"""ISBI 2012 membranes (``<root>/isbi2012-membrane``): 30 grayscale EM slices, 2 classes.

Grayscale (``in_chans=1``), 0 membrane, 1 cell (label PNG values > 127 -> 1, others 0). ``test`` =
the held-out slices 24..29 (option ``test_slices=``), never trained or selected on; ``val`` = slices
20..23 for model selection (option ``val_slices=``); ``train`` = the rest (0..19); ``all`` = 30.
"""

from __future__ import annotations

from ..classes import ISBI_CLASSES
from ..paths import DATA_ROOT_ENV
from .base import DatasetError, LabelDecoder, SegDataset
from .files import IMAGE_EXTS, MASK_EXTS, check_options, check_split, pair_by_name, require_data_root

__all__ = ["build_isbi", "ISBI_TEST_SLICES", "ISBI_VAL_SLICES"]

ISBI_TEST_SLICES = tuple(range(24, 30))  # held out for evaluation, never trained or selected on
ISBI_VAL_SLICES = tuple(range(20, 24))  # model selection; training uses the rest (0..19)


def build_isbi(split, data_root, common, options):
    """The ISBI 2012 dataset's ``split`` (:func:`~workbench.data.build_dataset`; ``common``: the options every dataset takes)."""
    check_options("isbi", options, {"test_slices", "val_slices"})
    check_split("isbi", split, ("train", "val", "test", "all"))
    root = require_data_root(data_root)
    base = root / "isbi2012-membrane"
    if not (base / "image").is_dir() or not (base / "label").is_dir():
        raise DatasetError(
            f"ISBI 2012 membranes not found: expected {base}/image/N.png and {base}/label/N.png. "
            f"Point --data-root or {DATA_ROOT_ENV} at the folder that contains isbi2012-membrane/."
        )
    pairs = pair_by_name(base / "image", base / "label", IMAGE_EXTS, MASK_EXTS)
    try:
        by_slice = {int(img.stem): (img, msk) for img, msk in pairs}
    except ValueError:
        raise DatasetError(f"{base}/image: file names must be slice numbers (0.png, 1.png, ...)") from None
    held: dict[str, list[int]] = {}
    for key, default in (("test_slices", ISBI_TEST_SLICES), ("val_slices", ISBI_VAL_SLICES)):
        held[key] = sorted({int(s) for s in options.get(key, default)})
        missing = [s for s in held[key] if s not in by_slice]
        if missing:
            raise DatasetError(f"{key} {missing} not in {base}/image (slices {min(by_slice)}..{max(by_slice)})")
    test, val = held["test_slices"], [s for s in held["val_slices"] if s not in held["test_slices"]]
    if split == "test":
        chosen = test
    elif split == "val":
        chosen = val
    elif split == "train":
        chosen = [s for s in sorted(by_slice) if s not in test and s not in val]
    else:
        chosen = sorted(by_slice)
    if not chosen:
        raise DatasetError(f"isbi split {split!r} is empty with test_slices={test} and val_slices={val}")
    return SegDataset(
        name="isbi", split=split, classes=ISBI_CLASSES, in_chans=1, files=[by_slice[s] for s in chosen],
        labels=LabelDecoder(2, binary=True), default_object_classes=(1,), **common,
    )
