"""CamVid (``<root>/camvid``): 367 / 101 / 233 street scenes for train / val / test, 11 classes, void 11 -> 255.

Pairs are read from ``train.txt`` etc. (the ``/SegNet/CamVid/`` prefix stripped), else matched by
file name in ``train/`` and ``trainannot/``. :func:`find_ground_truth` gives the app the label map
of a CamVid image it is shown.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..classes import CAMVID_CLASSES, CAMVID_VOID
from ..paths import DATA_ROOT_ENV, examples_dir, resolve_data_root
from .base import DatasetError, LabelDecoder, SegDataset, listing, read_image, read_mask
from .files import IMAGE_EXTS, MASK_EXTS, check_options, check_split, pair_by_name, require_data_root

__all__ = ["build_camvid", "find_ground_truth", "CAMVID_THING_CLASSES"]

# CamVid classes whose connected components are separate objects (for border weights).
CAMVID_THING_CLASSES = (2, 6, 8, 9, 10)


def build_camvid(split, data_root, common, options):
    """The CamVid dataset's ``split`` (:func:`~workbench.data.build_dataset`; ``common``: the options every dataset takes)."""
    check_options("camvid", options, set())
    check_split("camvid", split, ("train", "val", "test"))
    root = require_data_root(data_root)
    base = root / "camvid"
    if not base.is_dir():
        raise DatasetError(
            f"CamVid not found: {base} does not exist (expected camvid/train/, trainannot/, train.txt, ...). "
            f"Point --data-root or {DATA_ROOT_ENV} at the folder that contains camvid/."
        )
    return SegDataset(
        name="camvid", split=split, classes=CAMVID_CLASSES, in_chans=3, files=_camvid_pairs(base, split),
        labels=LabelDecoder(len(CAMVID_CLASSES), void=CAMVID_VOID), default_object_classes=CAMVID_THING_CLASSES, **common,
    )


def _camvid_pairs(base: Path, split: str) -> list[tuple[Path, Path]]:
    list_file = base / f"{split}.txt"
    if list_file.is_file():
        pairs = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{list_file}:{lineno}: expected 'IMAGE MASK', got {line!r}; fix the line")
            pairs.append(tuple(base / _camvid_rel(p) for p in parts))
        missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} file(s) listed in {list_file} are missing:\n{listing(missing)}\n"
                f"Restore them, or delete {list_file.name} to pair the files found in {split}/ and {split}annot/ by name."
            )
        return pairs
    return pair_by_name(base / split, base / f"{split}annot", IMAGE_EXTS, MASK_EXTS)


def _camvid_rel(p: str) -> str:
    prefix = "/SegNet/CamVid/"
    if p.startswith(prefix):
        return p[len(prefix) :]
    if os.path.isabs(p):
        return "/".join(Path(p).parts[-2:])
    return p


def _same_file_bytes(a, b, limit: int = 64 << 20) -> bool:
    """Whether two files hold the same bytes (files over ``limit`` bytes are never called equal)."""
    try:
        sa, sb = os.stat(a).st_size, os.stat(b).st_size
        if sa != sb or sa > limit:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def find_ground_truth(path: str | os.PathLike | None, image: np.ndarray, data_root=None) -> np.ndarray | None:
    """The CamVid label map of ``image`` if it is a CamVid image under the data root or one of the examples
    shipped with the package (``workbench/examples/camvid``), else ``None``.

    Matched by file name (uploads keep it) *and* content (the same bytes, else the same decoded pixels), so a
    user's own file that happens to share a name never gets someone else's labels. Void is 255.
    """
    if not path:
        return None
    name = Path(path).name
    bases = []
    try:
        bases.append(resolve_data_root(data_root) / "camvid")
    except Exception:
        pass
    bases.append(examples_dir() / "camvid")
    for base in bases:
        for split in ("test", "val", "train"):
            img_path, mask_path = base / split / name, base / f"{split}annot" / name
            if not (img_path.is_file() and mask_path.is_file()):
                continue
            try:
                if not _same_file_bytes(path, img_path):  # an upload keeps the bytes; else compare decoded pixels
                    ref = read_image(img_path, 3)
                    if ref.shape != np.asarray(image).shape or not np.array_equal(ref, np.asarray(image)):
                        continue
                raw = read_mask(mask_path)
            except Exception:
                return None
            return LabelDecoder(len(CAMVID_CLASSES), void=CAMVID_VOID)(raw, mask_path)
    return None
