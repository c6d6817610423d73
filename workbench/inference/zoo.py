"""The model zoo the app serves: one model per architecture, trained where a checkpoint exists.

For every registered architecture the zoo picks the shipped checkpoint for the
chosen dataset (``checkpoints/*.json`` whose manifest names the architecture
and dataset; a manifest with ``"default": true`` wins; the upsampling lab's
variants, ``"upsampling_lab": true``, are never picked), or else builds the
architecture with untrained weights and says so. Models are loaded lazily on
first use and cached; a broken checkpoint is reported for its architecture
only and never stops the others.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..classes import CAMVID_CLASSES
from ..io.manifest import CheckpointError, Manifest
from ..models.registry import create_model, get_architecture, list_architectures
from ..paths import checkpoints_dir
from .predictor import Prediction, Predictor

__all__ = ["Zoo", "ZooEntry", "ModelTimeout", "discover_checkpoints", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = float(os.environ.get("WORKBENCH_MODEL_TIMEOUT", "60"))


class ModelTimeout(RuntimeError):
    """A model did not answer in time (it keeps running in the background; later calls are refused until it ends)."""


@dataclass
class ZooEntry:
    name: str  # architecture name
    title: str
    checkpoint: Path | None = None  # manifest path, None = untrained
    manifest: Manifest = field(default_factory=Manifest)  # empty when untrained
    added: bool = False  # added at run time (Zoo.add: a user's checkpoint), not one of the registered architectures
    engine: str | None = None  # the engine this entry runs on (None: the zoo's)

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def test_miou(self) -> float | None:
        return self.manifest.test_miou


def discover_checkpoints(folder: Path | None = None, dataset: str | None = "camvid") -> tuple[dict[str, Path], dict[str, str]]:
    """Map architecture -> manifest path for ``dataset`` in ``folder``; also return unreadable manifests with errors."""
    folder = checkpoints_dir() if folder is None else Path(folder)
    chosen: dict[str, tuple[bool, Path]] = {}
    errors: dict[str, str] = {}
    if not folder.is_dir():
        return {}, {}
    for path in sorted(folder.glob("*.json")):
        try:
            manifest = Manifest.read(path)
        except CheckpointError as exc:
            errors[path.name] = str(exc)
            continue
        if dataset is not None and manifest.dataset_name not in (dataset, None):
            continue
        if manifest.in_upsampling_lab:  # the upsampling-lab U-Net variants live in their own tab
            continue
        arch = manifest.architecture
        is_default = manifest.is_default
        if arch not in chosen or (is_default and not chosen[arch][0]):
            chosen[arch] = (is_default, path)
    return {a: p for a, (_, p) in chosen.items()}, errors


class Zoo:
    """Lazily built, cached predictors for every architecture.

    Args:
        checkpoints: folder with checkpoints (default: the shipped ``checkpoints/``).
        dataset: which dataset's checkpoints to serve; untrained models get its classes.
        device, precision, max_side, engine: passed to :class:`~workbench.predictor.Predictor` (``engine="auto"``
            measures engines for trained checkpoints on the CPU, once per machine; untrained models run on torch).
        timeout: seconds a model may take for one image (loading included) before its card shows
            an error; ``None`` waits forever. Default ``$WORKBENCH_MODEL_TIMEOUT`` or 60.
    """

    def __init__(self, checkpoints: Path | None = None, dataset: str = "camvid", *, device: str = "auto", precision: str = "auto", max_side: int = 1024, num_classes: int = 11, timeout: float | None = DEFAULT_TIMEOUT_S, engine: str = "auto") -> None:
        self.dataset = dataset
        self.timeout = timeout
        self._running: dict[str, threading.Thread] = {}  # calls that exceeded the timeout and still run
        self.num_classes = num_classes
        self.device, self.precision, self.max_side, self.engine = device, precision, max_side, engine
        found, self.checkpoint_errors = discover_checkpoints(checkpoints, dataset)
        registered = set(list_architectures())
        for arch, path in found.items():
            if arch not in registered:
                self.checkpoint_errors[path.name] = f"names architecture {arch!r}, which is not registered (a missing or broken plugin?)"
        self.entries: dict[str, ZooEntry] = {}
        for name in list_architectures():
            info = get_architecture(name)
            path = found.get(name)
            manifest = Manifest.read(path) if path else Manifest()
            self.entries[name] = ZooEntry(name, info.title or name, path, manifest)
        self._predictors: dict[str, Predictor] = {}
        self._locks = {name: threading.Lock() for name in self.entries}
        self._preparing: set[str] = set()  # names whose predictors prepare() is building (auto: measuring) now
        self._provisional: dict[str, Predictor] = {}  # torch stand-ins served meanwhile
        self._provisional_lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.entries)

    def add(self, name: str, checkpoint: str | os.PathLike, *, title: str | None = None, engine: str | None = None) -> ZooEntry:
        """Serve one more checkpoint under ``name`` (e.g. a user's upload, for one session of the app).

        The manifest is read (and refused with :class:`~workbench.io.manifest.CheckpointError` if invalid); the
        weights load on first use, like every entry's. ``engine``: the engine it runs on (default: the zoo's;
        ``"torch"`` skips ``auto``'s once-per-checkpoint measurement). Replaces nothing: a taken name raises
        ``ValueError``. Entries are swapped in as a new dict, so a request iterating over them never sees
        the change half-made.
        """
        manifest = Manifest.read(checkpoint)
        with self._provisional_lock:
            if name in self.entries:
                raise ValueError(f"the zoo already serves {name!r}")
            entry = ZooEntry(name, title or manifest.architecture or name, Path(checkpoint), manifest, added=True, engine=engine)
            self._locks[name] = threading.Lock()
            self.entries = {**self.entries, name: entry}
        return entry

    def remove(self, name: str) -> None:
        """Stop serving an entry made by :meth:`add` (its predictor is dropped; a request running it finishes)."""
        with self._provisional_lock:
            entry = self.entries.get(name)
            if entry is None:
                return
            if not entry.added:
                raise ValueError(f"{name!r} is a registered architecture; only checkpoints added at run time can be removed")
            self.entries = {k: v for k, v in self.entries.items() if k != name}
            self._predictors.pop(name, None)
            self._provisional.pop(name, None)
            self._locks.pop(name, None)

    def predictor(self, name: str) -> Predictor:
        """The cached predictor for ``name`` (built on first use). Raises on a broken checkpoint.

        While :meth:`prepare` is still building ``name`` (under ``engine="auto"``: measuring the engines, which
        takes tens of seconds the first time on a machine), a torch predictor stands in, so a request never waits
        for the measurement; its ``engine_reason`` says so.
        """
        if name not in self.entries:
            raise KeyError(f"unknown architecture {name!r}; available: {', '.join(self.entries)}")
        pred = self._predictors.get(name)
        if pred is not None:
            return pred
        if name in self._preparing:
            return self._stand_in(name)
        return self._build(name)

    def _build(self, name: str) -> Predictor:
        lock = self._locks.get(name)
        if lock is None:  # removed meanwhile
            raise KeyError(f"{name!r} is no longer served")
        with lock:
            pred = self._predictors.get(name)
            if pred is None:
                entry = self.entries[name]
                if entry.trained:
                    pred = Predictor(entry.checkpoint, self.device, precision=self.precision, max_side=self.max_side, engine=entry.engine or self.engine)
                else:
                    torch.manual_seed(0)  # untrained, but the same untrained weights every time
                    model = create_model(name, num_classes=self.num_classes)
                    pred = Predictor(model, self.device, precision=self.precision, max_side=self.max_side, classes=CAMVID_CLASSES if self.num_classes == 11 else None, engine=self.engine)
                pred.warmup()
                if name in self.entries:  # not removed while it was being built
                    self._predictors[name] = pred
            return pred

    def _stand_in(self, name: str) -> Predictor:
        with self._provisional_lock:
            pred = self._provisional.get(name)
            if pred is None:
                entry = self.entries[name]
                pred = Predictor(entry.checkpoint, self.device, precision=self.precision, max_side=self.max_side, engine="torch")
                pred.engine_reason = f"torch {pred.precision}: standing in while this checkpoint's engines are measured (once per machine; later requests run the choice)"
                self._provisional[name] = pred
        return pred

    def prepare(self, names: list[str] | None = None, *, background: bool = True) -> threading.Thread | None:
        """Build the predictors of ``names`` (default: every trained architecture) before anyone asks.

        Under ``engine="auto"`` this is where each checkpoint's engines are measured (or their cached decision
        read), so the app calls it at launch; meanwhile :meth:`predictor` serves torch stand-ins. Errors are kept
        for the request that asks for the model (it raises them). ``background``: in a daemon thread (returned).
        """
        names = [n for n in (names if names is not None else [n for n, e in self.entries.items() if e.trained]) if n in self.entries]
        todo = [n for n in names if n not in self._predictors and self.entries[n].trained]
        self._preparing.update(todo)

        def work() -> None:
            for name in todo:
                try:
                    self._build(name)
                except Exception:  # a broken checkpoint: the request that asks for it gets the error
                    pass
                finally:
                    self._preparing.discard(name)
                    self._provisional.pop(name, None)

        if not background:
            work()
            return None
        thread = threading.Thread(target=work, name="zoo-prepare", daemon=True)
        thread.start()
        return thread

    def predict(self, name: str, image, timeout: float | None = -1.0, shared: dict | None = None) -> Prediction:
        """Segment ``image`` with ``name``, giving up after ``timeout`` seconds (default: the zoo's).

        A model that hangs cannot be stopped from Python: its call goes on in a daemon
        thread, and further requests to that model are refused until it returns, so one
        stuck model never piles up threads or blocks the others.

        ``shared``: see :meth:`Predictor.predict` (one decode and normalisation for several models).

        Raises:
            ModelTimeout: the model did not answer in time, or is still busy with such a call.
        """
        timeout = self.timeout if timeout == -1.0 else timeout
        if not timeout:
            return self.predictor(name).predict(image, shared)
        stuck = self._running.get(name)
        if stuck is not None and stuck.is_alive():
            raise ModelTimeout(f"{name} is still busy with an earlier request that took longer than {timeout:g} s; try again later")
        box: dict = {}

        def work() -> None:
            try:
                box["result"] = self.predictor(name).predict(image, shared)
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        thread = threading.Thread(target=work, name=f"predict-{name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            self._running[name] = thread
            raise ModelTimeout(f"{name} did not answer within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def num_parameters(self, name: str) -> int:
        return self.predictor(name).num_parameters
