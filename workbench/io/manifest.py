"""The checkpoint manifest: a typed view of ``name.json``, and how to find and read one.

A checkpoint is ``name.safetensors`` plus ``name.json``; the JSON (the *manifest*)
names the architecture and every constructor kwarg, the classes, the input
normalisation, the sha256 of the weights and, when known, metrics, cost and the
training recipe. :class:`Manifest` is that JSON as a dataclass, in the spirit of
timm's ``PretrainedCfg``: one field per top-level key, with accessors for the
values that callers used to dig out of nested dicts::

    man = Manifest.read("checkpoints/camvid_unet.json")
    man.test_miou, man.val_miou, man.dataset_name, man.num_classes
    man.metric("test", "pixel_accuracy")

It is also a (mutable) mapping over the JSON keys, so code written for the plain
dict that :func:`workbench.load_checkpoint` used to return keeps working:
``manifest["classes"]``, ``manifest.get("metrics")``, ``dict(manifest)``. Keys
it does not know are kept in :attr:`Manifest.extra`, so
``Manifest.from_dict(d).to_dict() == d`` for every manifest, and the key order
of the file survives a rewrite.

This module needs no torch: scanning a folder of manifests stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Manifest", "CheckpointError", "checkpoint_paths", "read_manifest", "FORMAT", "FORMAT_VERSION"]

FORMAT = "workbench-checkpoint"
FORMAT_VERSION = 1
_MAX_MANIFEST_BYTES = 10 * 1024 * 1024
_PATH_KEY = "_path"  # the mapping key under which read_manifest records where the file was


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file and why."""


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, manifest)`` paths for ``x``, ``x.json`` or ``x.safetensors``."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a manifest (given the ``.json``, the ``.safetensors`` or the stem).

    Returns the JSON object as a plain dict (plus ``"_path"``: where it was read),
    the form to edit and write back; :meth:`Manifest.read` gives the typed view.
    """
    _, manifest_path = checkpoint_paths(path)
    if not manifest_path.is_file():
        raise CheckpointError(f"no manifest {manifest_path.name} beside {Path(path).name}: a checkpoint is a .safetensors file plus its .json manifest")
    if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{manifest_path}: manifest is larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{manifest_path}: not a valid JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: manifest must be a JSON object")
    for key, typ in (("architecture", str), ("kwargs", dict), ("weights", dict)):
        if not isinstance(manifest.get(key), typ):
            raise CheckpointError(f"{manifest_path}: manifest lacks a valid {key!r} field")
    if not isinstance(manifest["weights"].get("sha256"), str):
        raise CheckpointError(f"{manifest_path}: manifest lacks weights.sha256")
    manifest[_PATH_KEY] = str(manifest_path)
    return manifest


def _dict(value: Any) -> dict:
    """``value`` if it is a dict, else an empty one (a manifest written by hand may hold anything)."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A finite number, or None (missing, NaN, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


@dataclass(eq=False)  # equality is the Mapping's: a Manifest equals a dict with the same keys and values
class Manifest(MutableMapping):
    """A checkpoint manifest (``name.json``), one field per top-level key.

    Fields are ``None`` (or empty) when the manifest lacks the key; nested values
    stay JSON (dicts and lists, shared with the dict the manifest was built from,
    not copied). Read values through the accessors (:meth:`metric`,
    :attr:`test_miou`, :attr:`dataset_name`, :attr:`num_classes`, ...): they
    tolerate missing or malformed parts and return ``None``.
    """

    # -- identity: enough to rebuild the network
    architecture: str | None = None  # registry name (workbench list); create_model(architecture, **kwargs) rebuilds it
    kwargs: dict[str, Any] = field(default_factory=dict)  # every resolved constructor kwarg, factory defaults included
    format: str | None = None  # "workbench-checkpoint": tells a manifest from any other JSON
    format_version: int | None = None  # bumped if a field ever changes meaning
    # -- what the numbers mean
    classes: list[dict[str, Any]] | None = None  # [{"name", "color": [r, g, b]}], one per output channel
    normalization: dict[str, list[float]] | None = None  # {"mean", "std"} per channel, applied to pixels / 255
    input: dict[str, Any] | None = None  # {"channels", "mode": "RGB" | "L"}: how to read an image for it
    dataset: dict[str, Any] | str | None = None  # {"name", "train_split", "val_split"} (old manifests: just the name)
    # -- the weights file
    weights: dict[str, Any] = field(default_factory=dict)  # {"file", "sha256", "bytes", "dtype"}; sha256 is checked on load
    num_parameters: int | None = None  # of the model as built (before Conv-BN folding)
    # -- how good and how costly
    metrics: dict[str, Any] | None = None  # per split: {"test": {"miou", "pixel_accuracy", "per_class_iou", "n_images", "options", ...}}
    cost: dict[str, Any] | None = None  # {"input", "gflops", "cpu_latency_ms", "cpu_precision", "machine"} from workbench eval
    inference: dict[str, Any] | None = None  # {"precision": "fp32" pins fp32 when bf16 misses the parity bar, agreements, thresholds}
    # -- where it came from
    training: dict[str, Any] | None = None  # {"command", "config", "epochs_completed", "hardware", "precision", "init_from", ...}
    training_data: str | None = None  # the provenance in words (which runs, which splits), for the README and the card
    created_utc: str | None = None  # when save_checkpoint wrote it
    software: dict[str, str] | None = None  # {"workbench", "torch"} versions that wrote it
    license: str | None = None  # the Hub card's license (default "other")
    # -- how the app picks it
    default: bool | None = None  # true: the zoo serves this one when several checkpoints share an architecture and dataset
    upsampling_lab: bool | None = None  # true: a variant of the upsampling lab, never served in Compare
    strawman: bool | None = None  # true: shipped to show how far it falls short (the naive stack), held to no quality bar
    # -- not part of the JSON
    extra: dict[str, Any] = field(default_factory=dict)  # keys this class does not know, kept so a rewrite loses nothing
    path: Path | None = field(default=None, compare=False)  # the file it was read from (the mapping's "_path")
    _order: list[str] = field(default_factory=list, repr=False, compare=False)  # the file's key order, kept on rewrite

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """The manifest of a JSON object (unknown keys go to :attr:`extra`; ``"_path"`` to :attr:`path`)."""
        data = dict(data)
        known = {f.name for f in _json_fields()}
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != _PATH_KEY}
        path = data.get(_PATH_KEY)
        return cls(**values, extra=extra, path=Path(path) if path else None, _order=[k for k in data if k != _PATH_KEY])

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> Manifest:
        """``data`` itself if it is a Manifest, else the Manifest of the dict (``None``: an empty one)."""
        return data if isinstance(data, Manifest) else cls.from_dict(data or {})

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        """Read and validate ``path`` (the ``.json``, the ``.safetensors`` or the stem); see :func:`read_manifest`."""
        return cls.from_dict(read_manifest(path))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, as written to ``name.json`` (the file's key order; no ``"_path"``)."""
        return {k: self[k] for k in self._keys()}

    # ------------------------------------------------------------------ the mapping over JSON keys

    def _present(self, f: dataclasses.Field) -> bool:
        return f.name in self._order or getattr(self, f.name) != _default(f)

    def _keys(self) -> list[str]:
        present = [f.name for f in _json_fields() if self._present(f)] + list(self.extra)
        seen = set(present)
        ordered = [k for k in self._order if k in seen]
        return ordered + [k for k in present if k not in set(ordered)]

    def __getitem__(self, key: str) -> Any:
        if key == _PATH_KEY and self.path is not None:
            return str(self.path)
        f = _FIELDS.get(key)
        if f is not None:
            if not self._present(f):
                raise KeyError(key)
            return getattr(self, key)
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == _PATH_KEY:
            self.path = Path(value) if value else None
        elif key in _FIELDS:
            setattr(self, key, value)
        else:
            self.extra[key] = value
        if key != _PATH_KEY and key not in self._order:
            self._order.append(key)

    def __delitem__(self, key: str) -> None:
        if key == _PATH_KEY and self.path is not None:
            self.path = None
            return
        f = _FIELDS.get(key)
        if f is not None:
            if not self._present(f):
                raise KeyError(key)
            setattr(self, key, _default(f))
        else:
            del self.extra[key]
        if key in self._order:
            self._order.remove(key)

    def __iter__(self) -> Iterator[str]:
        yield from self._keys()
        if self.path is not None:
            yield _PATH_KEY

    def __len__(self) -> int:
        return len(self._keys()) + (self.path is not None)

    def __repr__(self) -> str:
        return f"Manifest(architecture={self.architecture!r}, dataset={self.dataset_name!r}, test_miou={self.test_miou!r}, path={self.path!r})"

    # ------------------------------------------------------------------ accessors

    def metric(self, split: str, key: str = "miou") -> Any:
        """``metrics[split][key]`` (e.g. ``metric("test", "pixel_accuracy")``), or None when absent."""
        return _dict(_dict(self.metrics).get(split)).get(key)

    def metric_splits(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(split, entry)]`` of the metrics, ``test`` first, then ``val``, then the rest by name."""
        rows = [(str(k), v) for k, v in _dict(self.metrics).items() if isinstance(v, dict)]
        order = {"test": 0, "val": 1}
        return sorted(rows, key=lambda kv: (order.get(kv[0], 2), kv[0]))

    @property
    def test_miou(self) -> float | None:
        """Mean IoU on the test split (what the leaderboard ranks by)."""
        return self.metric("test", "miou")

    @property
    def val_miou(self) -> float | None:
        """Mean IoU on the validation split (what training selected the weights by)."""
        return self.metric("val", "miou")

    @property
    def dataset_name(self) -> str | None:
        """``dataset.name`` (or ``dataset`` itself in manifests that store only the name)."""
        return self.dataset.get("name") if isinstance(self.dataset, dict) else self.dataset

    @property
    def dataset_info(self) -> dict[str, Any]:
        """``dataset`` as a dict (``{"name": ...}`` for a bare name, ``{}`` when absent)."""
        if isinstance(self.dataset, dict):
            return self.dataset
        return {"name": self.dataset} if isinstance(self.dataset, str) else {}

    @property
    def num_classes(self) -> int | None:
        """Output channels: ``kwargs.num_classes``, else the number of classes listed."""
        n = self.kwargs.get("num_classes") if isinstance(self.kwargs, dict) else None
        if n is not None:
            return int(n)
        return len(self.classes) if isinstance(self.classes, list) else None

    @property
    def in_chans(self) -> int:
        """Input channels: ``kwargs.in_chans``, else ``input.channels``, else 3."""
        n = _dict(self.kwargs).get("in_chans", _dict(self.input).get("channels", 3))
        return int(n)

    def class_names(self, split: str | None = None) -> list[str]:
        """Class names: ``metrics[split].class_names`` when given and recorded (non-empty) there, else from ``classes``."""
        if split is not None:
            names = _dict(_dict(self.metrics).get(split)).get("class_names")
            if isinstance(names, list) and names:
                return [str(n) for n in names]
        if not isinstance(self.classes, list):
            return []
        return [str(c.get("name", f"class_{i}")) if isinstance(c, dict) else str(c) for i, c in enumerate(self.classes)]

    @property
    def encoder(self) -> str | None:
        return _dict(self.kwargs).get("encoder")

    @property
    def upsample(self) -> Any:
        """The upsampling method recorded in the kwargs (a name, or a dict with options), or None."""
        return _dict(self.kwargs).get("upsample")

    @property
    def sha256(self) -> str | None:
        """The weights' sha256, checked by :func:`workbench.load_checkpoint`."""
        return _dict(self.weights).get("sha256")

    @property
    def pinned_precision(self) -> str | None:
        """``inference.precision``: ``"fp32"`` when bf16 missed the parity bar (then ``precision="auto"`` runs fp32)."""
        return _dict(self.inference).get("precision")

    @property
    def gflops(self) -> float | None:
        return _number(_dict(self.cost).get("gflops"))

    @property
    def cpu_latency_ms(self) -> float | None:
        """Measured CPU latency per image at ``cost.input`` (``workbench eval``), or None."""
        return _number(_dict(self.cost).get("cpu_latency_ms"))

    @property
    def epochs(self) -> int | None:
        """Epochs of the run that made these weights (not counting the runs it was fine-tuned from)."""
        return _dict(self.training).get("epochs_completed")

    @property
    def training_config(self) -> dict[str, Any]:
        """``training.config``: every option of the run (``border_weights``, ``crop``, ``loss``, ...), or ``{}``."""
        return _dict(_dict(self.training).get("config"))

    @property
    def init_epochs(self) -> list[int]:
        """Epochs of every run in the ``--init-from`` chain, the first run first (empty if trained in one run)."""
        chain: list[int] = []
        training = _dict(self.training)
        while isinstance(training.get("init_from"), dict):
            training = _dict(training["init_from"].get("training"))
            if not training.get("epochs_completed"):
                break
            chain.append(int(training["epochs_completed"]))
        return chain[::-1]

    @property
    def is_default(self) -> bool:
        return bool(self.default)

    @property
    def in_upsampling_lab(self) -> bool:
        return bool(self.upsampling_lab)

    @property
    def is_strawman(self) -> bool:
        return bool(self.strawman)


def _json_fields() -> tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(Manifest) if f.name not in ("extra", "path", "_order"))


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_FIELDS = {f.name: f for f in _json_fields()}
