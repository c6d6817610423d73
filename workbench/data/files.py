"""Finding a dataset's files: the data root, and images paired with their masks by file name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..paths import DATA_ROOT_ENV, PACKAGE_DIR, resolve_data_root
from .base import DatasetError, listing

__all__ = ["IMAGE_EXTS", "MASK_EXTS", "require_data_root", "pair_by_name", "check_options", "check_split"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".gif")


def require_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root (see :func:`workbench.paths.resolve_data_root`); DatasetError if it is not a folder."""
    root = resolve_data_root(data_root)
    if root.is_dir():
        return root
    if data_root:
        how = "given explicitly (data_root= / --data-root)"
    elif os.environ.get(DATA_ROOT_ENV):
        how = f"from ${DATA_ROOT_ENV}"
    else:
        looked = [Path.cwd() / ".." / "shared" / "data", PACKAGE_DIR.parent / ".." / "shared" / "data"]
        how = "the default ../shared/data; looked in " + " and ".join(str(p.resolve()) for p in looked)
    raise DatasetError(
        f"data root {root} does not exist ({how}). Point the workbench at the folder holding camvid/ and "
        f"isbi2012-membrane/ with --data-root PATH or {DATA_ROOT_ENV}=PATH."
    )


def _files(folder: Path, exts: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))


def pair_by_name(image_dir: Path, mask_dir: Path, image_exts, mask_exts) -> list[tuple[Path, Path]]:
    """Pairs matched by file stem; DatasetError for missing folders or images without a mask."""
    for d in (image_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(f"folder {d} not found; expected images in {image_dir} and masks with the same file stems in {mask_dir}")
    masks = {}
    for p in _files(mask_dir, mask_exts):
        masks.setdefault(p.stem, p)
    images = _files(image_dir, image_exts)
    orphans = [str(p) for p in images if p.stem not in masks]
    if orphans:
        raise DatasetError(
            f"{len(orphans)} image(s) in {image_dir} have no mask with the same stem in {mask_dir}:\n{listing(orphans)}\n"
            "Add the masks or move those images out."
        )
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTS)}) in {image_dir}")
    return [(p, masks[p.stem]) for p in images]


_COMMON_OPTIONS = {"cache", "border_options", "weight_cache_dir"}


def check_options(dataset: str, options: dict, allowed: set) -> None:
    unknown = set(options) - allowed - _COMMON_OPTIONS
    if unknown:
        raise DatasetError(
            f"unknown option(s) {sorted(unknown)} for dataset {dataset!r}; valid: {', '.join(sorted(allowed | _COMMON_OPTIONS))}"
        )


def check_split(dataset: str, split: str, valid: Sequence[str], extra: str = "") -> None:
    if split not in valid:
        raise DatasetError(f"unknown split {split!r} for dataset {dataset!r}; valid: {', '.join(valid)}{extra}")
