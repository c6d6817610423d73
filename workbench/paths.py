"""Where the workbench finds its plugins, checkpoints and data.

Two layouts are supported and resolved the same way:

* a source checkout: ``plugins/``, ``checkpoints/`` and ``benchmarks/`` sit next to
  the ``workbench/`` package;
* an installed wheel (``pip install .``): the build copies them into
  ``workbench/_bundled/`` (see ``pyproject.toml``).

The data root is never bundled: it is resolved from an explicit argument, then
the ``WORKBENCH_DATA_ROOT`` environment variable, then ``../shared/data``
(relative to the current directory, then to the project root).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "PACKAGE_DIR",
    "bundled_path",
    "plugins_dirs",
    "checkpoints_dir",
    "examples_dir",
    "resolve_data_root",
    "DATA_ROOT_ENV",
]

PACKAGE_DIR = Path(__file__).resolve().parent
_SOURCE_ROOT = PACKAGE_DIR.parent
_BUNDLED = PACKAGE_DIR / "_bundled"

DATA_ROOT_ENV = "WORKBENCH_DATA_ROOT"
PLUGIN_PATH_ENV = "WORKBENCH_PLUGIN_PATH"
CHECKPOINTS_ENV = "WORKBENCH_CHECKPOINTS"


def bundled_path(name: str) -> Path:
    """Path of a top-level project resource (``plugins``, ``checkpoints``, ``benchmarks``).

    Prefers the copy inside an installed wheel, falls back to the source checkout.
    """
    installed = _BUNDLED / name
    if installed.exists():
        return installed
    return _SOURCE_ROOT / name


def plugins_dirs() -> list[Path]:
    """The project's ``plugins/`` folder plus any folders in ``WORKBENCH_PLUGIN_PATH``."""
    dirs = [bundled_path("plugins")]
    extra = os.environ.get(PLUGIN_PATH_ENV, "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def checkpoints_dir() -> Path:
    """Folder with the shipped checkpoints (``WORKBENCH_CHECKPOINTS`` overrides)."""
    override = os.environ.get(CHECKPOINTS_ENV)
    return Path(override) if override else bundled_path("checkpoints")


def examples_dir() -> Path:
    """The examples shipped inside the package (``workbench/examples/``, laid out like a data root): a few
    CamVid test images and ISBI slices with their labels, for a Space or a clone without data (docs/data.md)."""
    return PACKAGE_DIR / "examples"


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: explicit argument, then ``$WORKBENCH_DATA_ROOT``, then ``../shared/data``.

    The default is tried relative to the current directory first and then to the
    project root, so running from the checkout or from elsewhere both work. The
    returned path may not exist; callers that need data check and explain.
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd() / ".." / "shared" / "data", _SOURCE_ROOT / ".." / "shared" / "data"]
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    return candidates[0]
