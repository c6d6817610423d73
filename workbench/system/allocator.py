"""A caching memory allocator (tcmalloc or jemalloc) for the workbench's CPU-heavy processes.

PyTorch on the CPU allocates and frees its large activation buffers on every forward and backward
pass. glibc's malloc hands buffers over its mmap threshold back to the kernel when they are freed,
so the next step page-faults the same memory in again: on the 2-core development machine a
FC-DenseNet56 training step spent 31% of its CPU time in the kernel (2% under tcmalloc). tcmalloc and
jemalloc keep freed memory for reuse. ``workbench bench --allocators`` measures all three
(``benchmarks/allocators_cpu.md``).

An allocator can only be swapped before the process starts, so the CLI's heavy commands
(``train``, ``eval``, ``bench``, ``app``) and ``python app.py`` re-execute themselves once with the
library in ``LD_PRELOAD``, before torch is imported. This is what ``torch.backends.xeon.run_cpu``
does as a separate launcher; its search misses Debian's runtime packages (``libtcmalloc-minimal4``,
``libjemalloc2`` install versioned files under ``/usr/lib/<multiarch>``), which this one finds.

``WORKBENCH_ALLOCATOR`` chooses: ``auto`` (default: tcmalloc, else jemalloc, else the system's),
``system``, ``tcmalloc``, ``jemalloc``, or a path to a shared library. Nothing here imports torch.

OpenVINO's CPU plugin aborts the process ("munmap_chunk(): invalid pointer") when tcmalloc or jemalloc is
preloaded (measured with OpenVINO 2026.4), so a process that may run the ``openvino`` engine (``--engine
openvino`` or ``auto``) keeps the system allocator under ``auto``: :func:`reexec_with_allocator` takes the
engine the process will run.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["ENV", "KINDS", "PRELOAD_SAFE_ENGINES", "active_allocator", "find_library", "preload_env", "reexec_with_allocator"]

ENV = "WORKBENCH_ALLOCATOR"
MARK = "_WORKBENCH_ALLOCATOR_APPLIED"  # set on the re-executed process: never re-execute twice
KINDS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}  # Debian/Ubuntu (.ci/run installs these)
SYSTEM = ("system", "glibc", "off", "none", "0")
# inference engines that run under a preloaded allocator; "openvino" (and "auto", which may choose it) do not
PRELOAD_SAFE_ENGINES = ("torch", "onnxruntime")
# jemalloc: huge buffers from their own arenas, purged never (PyTorch's run_cpu settings plus no decay:
# returning pages to the kernel is exactly the cost being avoided).
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
# tcmalloc otherwise prints a line to stderr for every allocation over 1 GiB (a big eval batch)
TCMALLOC_ENV = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def library_dirs(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where the shared libraries are looked for: the active environment's, the user's, then the system's."""
    dirs = [Path(environ[v]) / "lib" for v in ("CONDA_PREFIX", "VIRTUAL_ENV") if environ.get(v)]
    dirs += [Path(sys.prefix) / "lib", Path.home() / ".local" / "lib", Path("/usr/local/lib"), Path("/usr/local/lib64")]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs += [Path("/usr/lib") / multiarch, Path("/lib") / multiarch]
    dirs += [Path("/usr/lib"), Path("/usr/lib64")]
    return list(dict.fromkeys(dirs))


def find_library(kind: str, dirs: list[Path] | None = None) -> Path | None:
    """The first ``kind`` library (``tcmalloc`` or ``jemalloc``) in ``dirs``, or None."""
    for d in library_dirs() if dirs is None else dirs:
        for name in KINDS[kind]:
            if (d / name).is_file():
                return d / name
    return None


def _kind_of(path: str) -> str | None:
    name = Path(path).name
    return next((k for k in KINDS if f"lib{k}" in name), None)


def preload_env(environ: Mapping[str, str], find: Callable[[str], Path | None] = find_library, engine: str = "torch") -> dict[str, str] | None:
    """The environment to re-execute with, or None when there is nothing to do (pure; ``find`` looks libraries up).

    Nothing to do: ``system`` chosen, not Linux, already re-executed once, an allocator already
    preloaded, or ``auto`` chosen for a process whose ``engine`` is not in :data:`PRELOAD_SAFE_ENGINES`
    (OpenVINO aborts under a preloaded allocator). ``tcmalloc``/``jemalloc`` chosen but not installed, or
    a path that does not exist, is an error: a run asked for an allocator it would silently not get.
    """
    choice = (environ.get(ENV) or "auto").strip()
    name = choice.lower()  # a path keeps its case in `choice`
    if name in SYSTEM or environ.get(MARK) or not sys.platform.startswith("linux"):
        return None
    if name == "auto" and engine not in PRELOAD_SAFE_ENGINES:
        return None
    preloaded = [p for p in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if any(_kind_of(p) for p in preloaded):
        return None
    if name == "auto":
        lib = next((p for p in map(find, KINDS) if p is not None), None)
        if lib is None:
            return None
    elif name in KINDS:
        lib = find(name)
        if lib is None:
            raise ValueError(f"{ENV}={choice}: no lib{name} found in {', '.join(map(str, library_dirs(environ)))} (Debian/Ubuntu: apt install {PACKAGES[name]}); unset it or use 'system'")
    else:
        lib = Path(choice).expanduser()
        if not lib.is_file():
            raise ValueError(f"{ENV}={choice}: not a file; expected auto, system, tcmalloc, jemalloc or the path of a malloc library")
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join([str(lib), *preloaded])
    env[MARK] = str(lib)
    kind = _kind_of(str(lib))
    if kind == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    elif kind == "tcmalloc":
        for k, v in TCMALLOC_ENV.items():
            env.setdefault(k, v)
    return env


def reexec_with_allocator(engine: str = "torch") -> None:
    """Replace this process by itself with the chosen allocator preloaded (same pid, argv and stdio).

    ``engine``: the inference engine the process will run (``auto``/``openvino`` keep the system allocator
    unless ``WORKBENCH_ALLOCATOR`` names one). Returns when there is nothing to do or the exec fails (the run
    goes on with the system's allocator). Call it first thing in a program's ``__main__``, never from library code.
    """
    try:
        env = preload_env(os.environ, engine=engine)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:
        print(f"warning: could not restart with {env[MARK]} preloaded ({exc}); using the system allocator", file=sys.stderr)


def active_allocator() -> str:
    """``tcmalloc``, ``jemalloc`` or ``system``: what this process allocates with (read from its memory map)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((k for k in KINDS if f"lib{k}" in maps), "system")
