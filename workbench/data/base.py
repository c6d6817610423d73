"""What a dataset is: :class:`SegDataset` (image/mask pairs of one split), :class:`DatasetError`, decoding.

A sample before any transform is ``{"image": tv_tensors.Image uint8 (C, H, W), "mask":
tv_tensors.Mask int64 (H, W), "name": str}`` plus ``"weight"`` (a
:class:`~workbench.data.weighting.WeightMap`, i.e. a ``tv_tensors.Mask``, float32 (H, W)) with
``border_weights=True``. Every dataset maps its own void label to ``IGNORE_INDEX`` (255); the
value 255 in an index mask is also read as "ignore" everywhere.

Options for every dataset
-------------------------
``cache=True`` keeps decoded images and masks in memory (uint8: CamVid train is about 190 MB).
A ``DataLoader`` worker keeps its own cache and loses it when it exits: call ``ds.validate()`` or
``ds.preload()`` in the main process first (forked workers then share the filled cache), or use
``persistent_workers=True``.

``border_weights=True`` adds the U-Net weight map (:func:`workbench.data.weighting.unet_border_weights`)
computed once per mask and kept in memory (``preload()`` computes them all up front);
``border_options={"w0", "sigma", "object_classes",
"class_weights"}`` change its parameters (default objects: ISBI cells ``(1,)``; CamVid's "thing"
classes Pole, SignSymbol, Car, Pedestrian, Bicyclist; otherwise every class but 0).
``weight_cache_dir=`` also stores the maps as ``.npy`` files named by the sha256 of the decoded
label map and the parameters, written atomically (temp file + rename), so DataLoader workers and
later runs share them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from ..classes import IGNORE_INDEX, default_normalization
from ..io.images import ImageError, load_image
from .weighting import WeightMap, unet_border_weights

__all__ = ["DatasetError", "SegDataset", "LabelDecoder", "read_image", "read_mask"]

_MAX_LISTED = 10


class DatasetError(ValueError):
    """A dataset cannot be used as asked; the message names the file(s) and the fix."""


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    lines = [f"  - {x}" for x in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- decoding


def read_image(path: Path, in_chans: int) -> np.ndarray:
    """(H, W, C) uint8, C = in_chans (1: grayscale, 3: RGB)."""
    try:
        im = load_image(path, "L" if in_chans == 1 else "RGB")
    except ImageError as exc:
        raise DatasetError(f"{path}: {exc}; replace the file or remove the pair") from None
    arr = np.asarray(im, np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_mask(path: Path) -> np.ndarray:
    """Mask file as stored: (H, W) integers for L/P/1/16-bit PNGs, (H, W, 3) uint8 for colour PNGs."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                return np.asarray(im).astype(np.uint8)
            if mode in ("L", "P"):
                return np.array(im, np.uint8)
            if mode.startswith("I"):
                return np.array(im, np.int64)
            if mode == "LA":
                return np.array(im.getchannel(0), np.uint8)
            return np.array(im.convert("RGB"), np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file not found; restore it or remove the pair") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: mask cannot be decoded ({exc}); re-export it as PNG or remove the pair") from None


class LabelDecoder:
    """Stored mask -> (H, W) uint8 label map with classes 0..num_classes-1 and IGNORE_INDEX.

    ``binary``: values > 127 -> 1, others 0 (ISBI). Otherwise colour masks are mapped through
    ``palette`` (``void_color`` -> ignore) and index masks are taken as class ids (``void`` and 255
    -> ignore); any other value raises DatasetError naming the file.
    """

    def __init__(self, num_classes: int, *, void: int | None = None, palette: Sequence | None = None, void_color=None, binary: bool = False):
        self.num_classes = int(num_classes)
        self.void = None if void is None else int(void)
        self.binary = binary
        self.palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        self.void_color = tuple(int(v) for v in void_color) if void_color is not None else None
        if self.palette is not None:
            codes = {}
            for i, c in enumerate(self.palette):
                codes.setdefault(_rgb_code(c), i)
            if self.void_color is not None:
                codes[_rgb_code(self.void_color)] = IGNORE_INDEX
            self._codes = codes

    def params(self) -> dict:
        return {"num_classes": self.num_classes, "void": self.void, "binary": self.binary, "palette": self.palette, "void_color": self.void_color}

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 3:
            if self.palette is not None and not self.binary:
                return self._from_colours(raw, path)
            if not ((raw[..., 0] == raw[..., 1]).all() and (raw[..., 0] == raw[..., 2]).all()):
                raise DatasetError(
                    f"{path}: mask is a colour image but this dataset reads index masks; give the palette as "
                    f"classes=[{{'name', 'color'}}, ...] or classes.json, or save the mask as single-channel class ids"
                )
            raw = raw[..., 0]
        if self.binary:
            return (raw > 127).astype(np.uint8)
        lut_size = max(256, int(raw.max(initial=0)) + 1)
        lut = np.full(lut_size, -1, np.int16)
        lut[: min(self.num_classes, lut_size)] = np.arange(min(self.num_classes, lut_size))
        lut[IGNORE_INDEX] = IGNORE_INDEX
        if self.void is not None and 0 <= self.void < lut_size:
            lut[self.void] = IGNORE_INDEX
        if raw.min(initial=0) < 0:
            raise DatasetError(f"{path}: mask holds negative values; class ids must be 0..{self.num_classes - 1}")
        out = lut[raw]
        if (out < 0).any():
            bad = np.unique(raw[out < 0])
            void = f", void {self.void}" if self.void is not None else ""
            raise DatasetError(
                f"{path}: mask holds values {bad[:10].tolist()} outside the classes 0..{self.num_classes - 1}"
                f"{void} (255 = ignore); fix the mask, or set num_classes= / void= to match the labels"
            )
        return out.astype(np.uint8)

    def _from_colours(self, raw: np.ndarray, path: Path) -> np.ndarray:
        codes = (raw[..., 0].astype(np.uint32) << 16) | (raw[..., 1].astype(np.uint32) << 8) | raw[..., 2].astype(np.uint32)
        uniq, inv = np.unique(codes, return_inverse=True)
        ids = np.array([self._codes.get(int(u), -1) for u in uniq], np.int16)
        if (ids < 0).any():
            bad = [((int(u) >> 16) & 255, (int(u) >> 8) & 255, int(u) & 255) for u in uniq[ids < 0]]
            raise DatasetError(
                f"{path}: mask holds colours {bad[:10]} that are not in the palette; add them to the classes "
                f"(classes= or classes.json) or map them to ignore with void_color="
            )
        return ids[inv].reshape(codes.shape).astype(np.uint8)


def _rgb_code(c) -> int:
    r, g, b = (int(v) for v in c)
    return (r << 16) | (g << 8) | b


# --------------------------------------------------------------------------- the dataset


class SegDataset(torch.utils.data.Dataset):
    """Image/mask pairs of one split; see the module docstring for what an item is.

    Attributes: ``name``, ``split``, ``classes`` (list of ``{"name", "color"}``), ``num_classes``,
    ``in_chans`` (1 or 3), ``ignore_index`` (255), ``files`` (list of ``(image_path, mask_path)``),
    ``transform``, ``border_weights``, ``border_options``, ``normalization`` (mean/std for
    ``in_chans``), ``cache_stats`` (a Counter: ``weights_computed``, ``weights_memory``,
    ``weights_disk``).
    """

    def __init__(
        self,
        *,
        name: str,
        split: str,
        classes: list[dict],
        in_chans: int,
        files: list,
        labels: LabelDecoder | None = None,
        transform: Callable | None = None,
        border_weights: bool = False,
        border_options: dict | None = None,
        default_object_classes: Sequence[int] | None = None,
        weight_cache_dir: str | os.PathLike | None = None,
        cache: bool = False,
    ):
        self.name = name
        self.split = split
        self.classes = [dict(c) for c in classes]
        self.num_classes = len(self.classes)
        self.in_chans = int(in_chans)
        self.ignore_index = IGNORE_INDEX
        self.files = list(files)
        self.labels = labels
        self.transform = transform
        self.border_weights = bool(border_weights)
        opts = dict(border_options or {})
        unknown = set(opts) - {"w0", "sigma", "object_classes", "class_weights"}
        if unknown:
            raise DatasetError(f"unknown border_options {sorted(unknown)}; valid: w0, sigma, object_classes, class_weights")
        if "object_classes" not in opts:
            opts["object_classes"] = tuple(default_object_classes) if default_object_classes is not None else tuple(range(1, self.num_classes))
        opts["object_classes"] = tuple(int(c) for c in opts["object_classes"])
        if opts.get("class_weights") is not None:
            opts["class_weights"] = [float(w) for w in opts["class_weights"]]
        self.border_options = opts
        self.weight_cache_dir = Path(weight_cache_dir) if weight_cache_dir else None
        self.cache = bool(cache)
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._weights: dict[int, np.ndarray] = {}
        self.cache_stats: Counter = Counter()

    # ---- basic protocol
    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, classes={self.num_classes}, in_chans={self.in_chans})"

    @property
    def normalization(self) -> dict:
        return default_normalization(self.in_chans)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.classes]

    def sample_name(self, i: int) -> str:
        return Path(self.files[i][0]).stem

    # ---- reading (overridden by the synthetic set)
    def _load_mask(self, i: int) -> np.ndarray:
        """(H, W) uint8 label map of item ``i``, void mapped to 255."""
        mask_path = Path(self.files[i][1])
        return self.labels(read_mask(mask_path), mask_path)

    def _load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """((H, W, C) uint8 image, (H, W) uint8 labels), checked: both decode, sizes match, labels in range."""
        image_path, mask_path = (Path(p) for p in self.files[i])
        image = read_image(image_path, self.in_chans)
        mask = self._load_mask(i)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"{image_path}: image is {image.shape[1]}x{image.shape[0]} (W x H) but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; make the mask the image's size or remove the pair"
            )
        return image, mask

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache:
            hit = self._pairs.get(i)
            if hit is not None:
                return hit
        pair = self._load_pair(i)
        if self.cache:
            for a in pair:
                a.flags.writeable = False
            self._pairs[i] = pair
        return pair

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} with {n} items")
        return i % n

    def __getitem__(self, i: int) -> dict:
        i = self._check_index(int(i))
        image, mask = self._pair(i)
        sample = {
            "image": tv_tensors.Image(torch.from_numpy(image.transpose(2, 0, 1).copy())),
            "mask": tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))),
            "name": self.sample_name(i),
        }
        if self.border_weights:
            sample["weight"] = WeightMap(torch.from_numpy(self.weight_map(i, mask).copy()))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def masks(self) -> Iterator[np.ndarray]:
        """The split's (H, W) int64 label maps in order, without decoding images."""
        for i in range(len(self)):
            hit = self._pairs.get(i)
            mask = hit[1] if hit is not None else self._load_mask(i)
            yield mask.astype(np.int64)

    # ---- border weights
    def _weight_key(self, mask: np.ndarray) -> str:
        params = json.dumps({"v": 1, "ignore_index": self.ignore_index, **self.border_options}, sort_keys=True)
        h = hashlib.sha256(params.encode())
        h.update(str(mask.shape).encode())
        h.update(np.ascontiguousarray(mask, np.uint8).tobytes())
        return h.hexdigest()

    def weight_map(self, i: int, mask: np.ndarray | None = None) -> np.ndarray:
        """The (H, W) float32 U-Net weight map of item ``i`` (read-only), computed once and cached."""
        hit = self._weights.get(i)
        if hit is not None:
            self.cache_stats["weights_memory"] += 1
            return hit
        if mask is None:
            mask = self._pair(i)[1]
        weights = None
        path = None
        if self.weight_cache_dir is not None:
            path = self.weight_cache_dir / f"{self._weight_key(mask)}.npy"
            if path.is_file():
                try:
                    loaded = np.load(path, allow_pickle=False)
                    if loaded.shape == mask.shape and loaded.dtype == np.float32:
                        weights = loaded
                        self.cache_stats["weights_disk"] += 1
                except (OSError, ValueError):
                    weights = None  # unreadable cache file: recompute and overwrite
        if weights is None:
            weights = unet_border_weights(mask, ignore_index=self.ignore_index, **self.border_options)
            self.cache_stats["weights_computed"] += 1
            if path is not None:
                _atomic_save_npy(path, weights)
        weights.flags.writeable = False
        self._weights[i] = weights
        return weights

    def preload(self) -> SegDataset:
        """Decode every pair (with ``cache=True``) and compute every weight map (with ``border_weights``)
        now, in this process: DataLoader workers forked afterwards share the caches instead of each
        filling its own. Returns the dataset."""
        for i in range(len(self)):
            mask = self._pair(i)[1] if self.cache else None
            if self.border_weights:
                self.weight_map(i, mask)
        return self

    # ---- validation
    def validate(self, max_files: int | None = None) -> int:
        """Check the pairs (all, or ``max_files`` spread evenly over the split): image and mask decode,
        sizes match, labels are classes or void. Returns the number checked; raises DatasetError
        listing up to 10 problems."""
        n = len(self)
        if n == 0:
            raise DatasetError(f"{self.name}/{self.split} has no image/mask pairs")
        if max_files is not None and max_files < n:
            indices = sorted(set(np.linspace(0, n - 1, max(1, int(max_files))).round().astype(int).tolist()))
        else:
            indices = list(range(n))
        problems = []
        for i in indices:
            try:
                self._pair(i)  # with cache=True this also fills the cache (pairs are checked when loaded)
            except DatasetError as exc:
                problems.append(str(exc))
        if problems:
            raise DatasetError(
                f"{self.name}/{self.split}: {len(problems)} of {len(indices)} checked pairs have problems:\n"
                f"{listing(problems)}\nFix or remove these files before training."
            )
        return len(indices)


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
