"""The teacher's soft labels on disk: one compressed file per training image, computed once, verified on every read.

``workbench distill`` trains a student on a teacher ensemble's per-pixel class distribution. The
teachers never change during a run, so their outputs on the (untransformed) training images are
computed once, at the image's own resolution, and cached; the training augmentation (scale, crop,
flips) is applied to the cached map together with the label mask
(:class:`workbench.data.transforms.TeacherMap`), so every epoch sees the teacher's map of exactly the
pixels it trains on without running the teacher again.

Layout::

    <root>/<key digest[:16]>/key.json                 what the entries were computed with (below)
    <root>/<key digest[:16]>/<image name>-<H>x<W>.npz one image

The key is the JSON of the cache format, the teachers' weights sha256 (in order) and names, the
test-time augmentation (flip, scales), the teacher precision and the class names; its sha256 names the
folder, so another teacher, augmentation or label set never reads these entries. Each ``.npz`` (zlib,
``numpy.savez_compressed``) holds ``q``, the ensemble's log-probabilities quantised to uint8 (C, H, W):
``log p = -q / 16``, so log-probabilities from 0 down to -15.94 (p >= 1.2e-7, smaller ones are stored as
that) in steps of 1/16 nat, i.e. every probability within 3.2 % of the teacher's (a temperature is
applied later, ``softmax(log p / T)``, which also renormalises); and ``meta``, a JSON string with the key
digest, the image name, the sha256 of the decoded image, the shape and the sha256 of the ``q`` bytes. An
entry is used only if all of them match: a truncated or altered file, an entry of another image content
(the same name, new pixels) or of another resolution is reported and recomputed, never trusted.

Size on CamVid train (11 classes, 360x480; raw: 3.8 MB per image as float16, 1.9 MB as uint8): the
first layout, float16 log-probabilities, took 2.6 MB per image after zlib (camvid_unet + camvid_dilated,
the first 69 images); the uint8 levels take 742 kB per image, 272 MB for the 367 images (camvid_dilated +
camvid_fcn8s, bf16).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.checkpoint import atomic_write_bytes

__all__ = ["CACHE_FORMAT", "LOGP_STEP", "TeacherCache", "image_digest", "key_digest", "quantize_logp", "dequantize_logp"]

CACHE_FORMAT = 2  # bump when the entry layout changes: older folders are then never read (1: float16 log-probabilities)
LOGP_STEP = 1.0 / 16.0  # nat per uint8 level: log p = -q * LOGP_STEP, q in 0..255
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a cache key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def quantize_logp(logp) -> np.ndarray:
    """Log-probabilities (C, H, W) -> uint8 levels ``q = round(-logp / LOGP_STEP)``, clipped to 0..255."""
    return np.clip(np.rint(-np.asarray(logp, dtype=np.float32) / LOGP_STEP), 0, 255).astype(np.uint8)


def dequantize_logp(q):
    """uint8 levels (numpy or torch) -> float32 log-probabilities ``-q * LOGP_STEP``."""
    if isinstance(q, np.ndarray):
        return q.astype(np.float32) * np.float32(-LOGP_STEP)
    return q.float() * -LOGP_STEP


def image_digest(image: np.ndarray) -> str:
    """sha256 of a decoded image's shape, dtype and pixels (the same picture gives the same digest wherever it is stored)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{a.shape}|{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class TeacherCache:
    """The cache folder of one key under ``root``; :meth:`load` and :meth:`store` one image at a time.

    ``stats`` counts what happened: entries ``hit`` (verified and used), ``missing``, ``rejected``
    (present but corrupt or stale: the reason is kept in ``problems``) and ``stored``.
    """

    root: Path
    key: dict[str, Any]
    stats: dict[str, int] = field(default_factory=lambda: {"hit": 0, "missing": 0, "rejected": 0, "stored": 0})
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.key = {"format": CACHE_FORMAT, **self.key}
        self.digest = key_digest(self.key)
        self.dir = self.root / self.digest[:16]

    def prepare(self) -> None:
        """Create the folder and write ``key.json`` (what its entries mean) if it is not there yet."""
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        text = json.dumps({"digest": self.digest, **self.key}, indent=2, sort_keys=True) + "\n"
        if not key_file.is_file() or key_file.read_text() != text:
            atomic_write_bytes(key_file, text.encode(), durable=False)

    def path(self, name: str, height: int, width: int) -> Path:
        """The entry of image ``name`` at ``height`` x ``width``; names with other characters get a hash suffix."""
        safe = _SAFE.sub("_", name)
        if safe != name:
            safe = f"{safe}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        return self.dir / f"{safe}-{height}x{width}.npz"

    def load(self, name: str, image_sha256: str, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The verified uint8 ``(C, H, W)`` levels of ``name`` (:func:`dequantize_logp`), or ``None`` if absent, corrupt or stale."""
        path = self.path(name, shape[1], shape[2])
        if not path.is_file():
            self.stats["missing"] += 1
            return None
        problem = None
        try:
            with np.load(path, allow_pickle=False) as f:
                q = f["q"]
                meta = json.loads(str(f["meta"]))
        except Exception as exc:  # noqa: BLE001 - a damaged zip fails in many ways (BadZipFile, zlib.error, EOFError, ValueError, ...): never trusted

            problem = f"unreadable ({type(exc).__name__}: {exc})"
        else:
            expected = {"key": self.digest, "name": name, "image_sha256": image_sha256, "shape": list(shape)}
            wrong = [k for k, v in expected.items() if meta.get(k) != v]
            if wrong:
                problem = f"stale ({', '.join(wrong)} differ)"
            elif q.dtype != np.uint8 or tuple(q.shape) != tuple(shape):
                problem = f"wrong array ({q.dtype} {tuple(q.shape)}, expected uint8 {tuple(shape)})"
            elif hashlib.sha256(np.ascontiguousarray(q).tobytes()).hexdigest() != meta.get("data_sha256"):
                problem = "data hash mismatch"
        if problem is not None:
            self.stats["rejected"] += 1
            self.problems.append(f"{path.name}: {problem}")
            return None
        self.stats["hit"] += 1
        return q

    def store(self, name: str, image_sha256: str, logp: np.ndarray) -> Path:
        """Write one entry atomically (compressed); ``logp`` (C, H, W) log-probabilities are stored quantised (:func:`quantize_logp`)."""
        arr = quantize_logp(logp)
        if arr.ndim != 3:
            raise ValueError(f"teacher map of {name} must be (C, H, W), got shape {arr.shape}")
        meta = {"key": self.digest, "name": name, "image_sha256": image_sha256, "shape": list(arr.shape), "data_sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        buf = io.BytesIO()
        np.savez_compressed(buf, q=arr, meta=np.array(json.dumps(meta, sort_keys=True)))
        path = self.path(name, arr.shape[1], arr.shape[2])
        atomic_write_bytes(path, buf.getvalue(), durable=False)  # a torn file fails the checks above and is recomputed
        self.stats["stored"] += 1
        return path

    def size_bytes(self) -> int:
        """Bytes of every entry in this key's folder."""
        return sum(p.stat().st_size for p in self.dir.glob("*.npz")) if self.dir.is_dir() else 0
