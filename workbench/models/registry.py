"""A tiny architecture registry with plugin discovery.

Plugins are plain Python modules that decorate a factory with
:func:`register_architecture`. Importing a plugin *is* registering it (as in
timm). Discovery imports every ``*.py`` file in the project's ``plugins/``
folder (and folders listed in ``WORKBENCH_PLUGIN_PATH``) and every module
declared under the ``workbench.plugins`` entry-point group of installed
packages. A plugin that fails to import is recorded in :func:`plugin_errors`
and never stops the others from loading.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import sys
import threading
import traceback
import types
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..paths import plugins_dirs
from .upsampling import canonical_upsample

__all__ = [
    "ArchitectureInfo",
    "UnknownChoiceError",
    "register_architecture",
    "list_architectures",
    "get_architecture",
    "create_model",
    "plugin_errors",
    "load_plugins",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "workbench.plugins"


class UnknownChoiceError(ValueError, KeyError):
    """An unknown name or option. Catchable as ``ValueError`` or ``KeyError``; lists the valid choices."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ArchitectureInfo:
    """What the registry knows about one architecture."""

    name: str
    factory: Callable[..., nn.Module]
    title: str = ""
    paper: str = ""  # citation, e.g. "Long, Shelhamer, Darrell. CVPR 2015"
    explanation: str = ""  # plain-words description, two short paragraphs
    default_encoder: str | None = None  # None: the architecture has no timm encoder by default
    default_upsample: str | None = None  # None: the architecture takes no `upsample=` option
    source: str = ""  # module or file it was registered from
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accepts_upsample(self) -> bool:
        return self.default_upsample is not None

    @property
    def options(self) -> list[str]:
        """Keyword options the factory accepts beyond the common ones."""
        params = inspect.signature(self.factory).parameters
        common = {"num_classes", "in_chans", "encoder", "upsample"}
        return [p for p, v in params.items() if p not in common and v.kind is not v.VAR_KEYWORD]


_REGISTRY: dict[str, ArchitectureInfo] = {}
_ERRORS: dict[str, str] = {}
_LOADED = False
_LOCK = threading.RLock()
_INFO_FIELDS = {"title", "paper", "explanation", "default_encoder", "default_upsample"}


def register_architecture(name: str, **metadata: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``.

    The factory is called with keyword arguments ``num_classes``, ``in_chans``,
    ``encoder``, ``upsample`` (``None`` replaced by the defaults given here) and
    its own options, and returns an ``nn.Module`` mapping ``(B, in_chans, H, W)``
    to logits ``(B, num_classes, H, W)``.

    Args:
        name: registry name, unique.
        **metadata: optional ``title``, ``paper``, ``explanation``,
            ``default_encoder``, ``default_upsample``; anything else is kept in
            ``ArchitectureInfo.extra``.

    Raises:
        ValueError: if ``name`` is already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        with _LOCK:
            if name in _REGISTRY:
                raise ValueError(
                    f"architecture {name!r} is already registered (by {_REGISTRY[name].source}); "
                    "pick another name"
                )
            info_kwargs = {k: v for k, v in metadata.items() if k in _INFO_FIELDS}
            extra = {k: v for k, v in metadata.items() if k not in _INFO_FIELDS}
            source = getattr(factory, "__module__", "") or ""
            _REGISTRY[name] = ArchitectureInfo(name=name, factory=factory, source=source, extra=extra, **info_kwargs)
        return factory

    return decorator


def _import_file(path: Path) -> None:
    module_name = f"workbench_plugins.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise


def _record_failure(key: str, exc: BaseException) -> None:
    lines = traceback.format_exception_only(type(exc), exc)
    _ERRORS[key] = "".join(lines).strip()


def _snapshot() -> set[str]:
    return set(_REGISTRY)


def _load_one(key: str, loader: Callable[[], Any]) -> None:
    before = _snapshot()
    try:
        loader()
    except Exception as exc:  # a broken plugin must never stop the others
        # roll back half-registered architectures from the failed module
        for name in _snapshot() - before:
            _REGISTRY.pop(name, None)
        _record_failure(key, exc)


def load_plugins(*, reload: bool = False) -> None:
    """Import all plugins once (idempotent). ``reload=True`` clears the registry and rescans.

    Safe to call from several threads.
    """
    global _LOADED
    with _LOCK:
        if _LOADED and not reload:
            return
        if reload:
            _REGISTRY.clear()
            _ERRORS.clear()
            for mod in [m for m in sys.modules if m.startswith("workbench_plugins.")]:
                del sys.modules[mod]
        _LOADED = True
        if "workbench_plugins" not in sys.modules:
            pkg = types.ModuleType("workbench_plugins")
            pkg.__path__ = []  # namespace for plugin modules loaded by path
            sys.modules["workbench_plugins"] = pkg
        for folder in plugins_dirs():
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                _load_one(str(path), lambda p=path: _import_file(p))
        reloaded: set[str] = set()
        for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
            _load_one(f"entry point {ep.name} ({ep.value})", lambda ep=ep: _load_entry_point(ep, reload, reloaded))


def _load_entry_point(ep: Any, reload: bool, reloaded: set[str]) -> Any:
    """``ep.load()``; on a rescan, re-executes a module imported before so it registers again.

    (Its architectures were just cleared, and a plain import of a module already in
    ``sys.modules`` would not run its decorators a second time.)
    """
    module = ep.module
    if reload and module in sys.modules and module not in reloaded:
        reloaded.add(module)
        importlib.reload(sys.modules[module])
    return ep.load()


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to import: ``{plugin file or entry point: error message}``."""
    load_plugins()
    return dict(_ERRORS)


def list_architectures(pattern: str | None = None) -> list[str]:
    """Registered architecture names, sorted; ``pattern`` filters with fnmatch (``"fcn*"``)."""
    load_plugins()
    names = sorted(_REGISTRY)
    return fnmatch.filter(names, pattern) if pattern else names


def get_architecture(name: str) -> ArchitectureInfo:
    """Registry entry for ``name``; raises :class:`UnknownChoiceError` listing valid names."""
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = ""
        if _ERRORS:
            hint = f" ({len(_ERRORS)} plugin(s) failed to load: see workbench.plugin_errors())"
        raise UnknownChoiceError(
            f"unknown architecture {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}{hint}"
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    encoder: str | None = None,
    upsample: str | dict | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: a name from :func:`list_architectures`.
        num_classes: number of output channels (classes).
        in_chans: input channels (1 for grayscale, 3 for RGB).
        encoder: timm model name for the encoder; ``None`` keeps the architecture's default.
        upsample: upsampling method (see ``workbench.upsampling.METHODS``); ``None`` keeps the default.
        **kwargs: architecture-specific options (see ``get_architecture(name).options``).

    Returns:
        The model, with ``model.workbench_config`` holding the architecture name and
        the fully resolved constructor kwargs (what a checkpoint manifest stores).

    Raises:
        UnknownChoiceError: unknown architecture or option (lists the valid ones).
        ValueError: invalid option values.
    """
    info = get_architecture(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if in_chans not in (1, 3) and not (isinstance(in_chans, int) and in_chans > 0):
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")

    sig = inspect.signature(info.factory)
    accepts_var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if not accepts_var_kw:
        unknown = sorted(set(kwargs) - set(sig.parameters))
        if unknown:
            raise UnknownChoiceError(
                f"{name} has no option(s) {', '.join(map(repr, unknown))}; "
                f"valid options: num_classes, in_chans, encoder, upsample"
                + (", " + ", ".join(info.options) if info.options else "")
            )
    if upsample is not None and not info.accepts_upsample:
        raise ValueError(f"{name} takes no upsample= option (it does not upsample with a choosable method)")
    if encoder is None:
        encoder = info.default_encoder
    if upsample is None:
        upsample = info.default_upsample

    resolved: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "encoder": encoder}
    if upsample is not None:
        resolved["upsample"] = canonical_upsample(upsample)
    if "encoder" not in sig.parameters and not accepts_var_kw:
        if encoder is not None:
            raise ValueError(f"{name} has no encoder; leave encoder=None")
        del resolved["encoder"]
    resolved.update(kwargs)
    # record the factory's own defaults too, so a checkpoint rebuilds the same model if defaults change
    for pname, param in sig.parameters.items():
        if param.default is not param.empty and pname not in resolved:
            resolved[pname] = param.default
    model = info.factory(**resolved)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
    model.workbench_config = {"architecture": name, "kwargs": _jsonable(resolved)}
    return model


def _jsonable(value: Any) -> Any:
    """Tuples become lists (JSON); anything else must already be JSON-serialisable."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
