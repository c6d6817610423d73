"""Any folder of images and masks (dataset ``folder``, option ``path=``).

A folder with ``images/`` and ``masks/`` (pairs matched by file stem). Splits: ``images/<split>/`` +
``masks/<split>/`` or ``<split>/images/`` + ``<split>/masks/`` for ``train``/``val``/``test`` where
present, else ``all``. Masks are index PNGs (values = class ids; option ``void=`` value -> 255;
``binary=True`` for 0/255 masks) or colour PNGs with a palette: option ``classes=[{"name",
"color"}]`` or ``classes.json`` in the folder (a list like that, or ``{"classes": [...], "void": 0,
"void_color": [r, g, b]}``); ``void_color=`` maps a colour to 255. ``num_classes=`` (else from the
classes, else from scanning the masks) and ``in_chans=`` (else from the first image).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ..classes import IGNORE_INDEX, palette
from .base import DatasetError, LabelDecoder, SegDataset, read_mask
from .files import IMAGE_EXTS, MASK_EXTS, check_options, check_split, pair_by_name, require_data_root

__all__ = ["build_folder"]

_FOLDER_SPLITS = ("train", "val", "test")


def build_folder(split, data_root, common, options):
    """The folder dataset's ``split`` (:func:`~workbench.data.build_dataset`; ``common``: the options every dataset takes)."""
    allowed = {"path", "classes", "num_classes", "void", "void_color", "binary", "in_chans"}
    check_options("folder", options, allowed)
    if not options.get("path"):
        raise DatasetError("dataset 'folder' needs path=: a folder with images/ and masks/")
    path = Path(options["path"]).expanduser()
    if not path.is_dir() and not path.is_absolute() and data_root is not None:
        path = require_data_root(data_root) / path
    if not path.is_dir():
        raise DatasetError(f"folder dataset {path} does not exist")
    layout = _folder_layout(path)
    check_split("folder", split, tuple(layout))
    meta: dict = {}
    meta_file = path / "classes.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{meta_file}: not valid JSON ({exc}); fix it or pass classes= instead") from None
        if isinstance(meta, list):
            meta = {"classes": meta}
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_file}: expected a list of {{'name', 'color'}} or {{'classes': [...]}}")
    classes = options.get("classes", meta.get("classes"))
    void = options.get("void", meta.get("void"))
    void_color = options.get("void_color", meta.get("void_color"))
    binary = bool(options.get("binary", meta.get("binary", False)))
    num_classes = options.get("num_classes", meta.get("num_classes"))
    source = "classes=" if "classes" in options else str(meta_file)
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, dict) and "name" in c for c in classes):
            raise DatasetError(f"{source}: classes must be a list of {{'name': ..., 'color': [r, g, b]}}")
        if num_classes is not None and int(num_classes) != len(classes):
            raise DatasetError(f"num_classes={num_classes} but {len(classes)} classes are given in {source}")
        num_classes = len(classes)
    pairs = pair_by_name(*layout[split], IMAGE_EXTS, MASK_EXTS)
    has_palette = classes is not None and all(c.get("color") is not None for c in classes)
    if binary:
        num_classes = num_classes or 2
    if num_classes is None:
        num_classes = _infer_num_classes(path, layout, void)
    num_classes = int(num_classes)
    if classes is None:
        classes = [{"name": f"class_{i}", "color": c} for i, c in enumerate(palette(num_classes))]
    else:
        fallback = palette(num_classes)
        classes = [{"name": str(c["name"]), "color": list(c.get("color") or fallback[i])} for i, c in enumerate(classes)]
    labels = LabelDecoder(
        num_classes, void=void, palette=[c["color"] for c in classes] if has_palette else None, void_color=void_color, binary=binary
    )
    in_chans = options.get("in_chans")
    if in_chans is None:
        with Image.open(pairs[0][0]) as im:
            in_chans = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    if int(in_chans) not in (1, 3):
        raise DatasetError(f"in_chans must be 1 or 3, got {in_chans}")
    return SegDataset(name="folder", split=split, classes=classes, in_chans=int(in_chans), files=pairs, labels=labels, **common)


def _folder_layout(path: Path) -> dict[str, tuple[Path, Path]]:
    """split -> (image_dir, mask_dir)."""
    layout = {}
    for s in _FOLDER_SPLITS:
        if (path / "images" / s).is_dir():
            layout[s] = (path / "images" / s, path / "masks" / s)
        elif (path / s / "images").is_dir():
            layout[s] = (path / s / "images", path / s / "masks")
    if not layout:
        if not (path / "images").is_dir():
            raise DatasetError(
                f"{path} has no images/ folder; a folder dataset needs images/ and masks/ "
                "(or images/<split>/ and masks/<split>/, or <split>/images/ and <split>/masks/)"
            )
        layout["all"] = (path / "images", path / "masks")
    return layout


def _infer_num_classes(path: Path, layout: dict, void) -> int:
    """Largest class id in the index masks of every split, plus one."""
    probe = LabelDecoder(IGNORE_INDEX, void=void)  # accepts 0..254, void/255 -> ignore
    top = -1
    for image_dir, mask_dir in layout.values():
        for _img, msk in pair_by_name(image_dir, mask_dir, IMAGE_EXTS, MASK_EXTS):
            raw = read_mask(msk)
            if raw.ndim == 3:
                raise DatasetError(f"{msk}: colour mask but no palette; give classes=[{{'name', 'color'}}, ...] or write {path}/classes.json")
            lab = probe(raw, msk)
            valid = lab[lab != IGNORE_INDEX]
            if valid.size:
                top = max(top, int(valid.max()))
    if top < 1:
        raise DatasetError(
            f"{path}: the masks hold fewer than two class ids (255 means ignore); for 0/255 binary masks pass "
            "binary=True, otherwise give num_classes= or classes="
        )
    return top + 1
