"""The machine a measurement ran on, as every benchmark, evaluation cost and training run records it.

``machine_description()`` is the dict stored in results (``"machine"`` in ``benchmarks/*.json``,
``"hardware"`` in training runs); ``machine_line()`` is the short form the tables' captions print.
The CPU's instruction set (``isa``: what PyTorch dispatches its kernels to, from
``torch.backends.cpu.get_cpu_capability()``) and whether it has native bf16 kernels (``bf16``) are
recorded because they decide which precision is fast: without AVX512-BF16 or AMX, bf16 on the CPU
is emulated and slower than fp32.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .allocator import active_allocator

__all__ = ["ISA_CAPS", "cpu_model", "cpu_supports_bf16", "isa_caps", "machine_description", "machine_line"]


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# environment variables that cap the instruction set the libraries dispatch to (a benchmark on an AVX512 machine
# run as if it had AVX2 only): PyTorch's own kernels, oneDNN (PyTorch's and OpenVINO's CPU plugin's)
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_caps() -> dict[str, str]:
    """The ISA caps set in this process's environment (:data:`ISA_CAPS`), by variable."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def machine_description() -> dict:
    """CPU model, instruction set (and caps, if any), native bf16, threads, torch, CUDA device, Python and allocator."""
    return {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512 (AMX and AVX512-BF16 show in "bf16")
        "isa_caps": isa_caps(),  # empty unless capped: then "isa" and "bf16" are what the caps leave
        "bf16": cpu_supports_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "allocator": active_allocator(),
    }


def machine_line(m: dict) -> str:
    """``2 threads, AMD EPYC, torch 2.x, tcmalloc``: the machine as the tables' captions name it."""
    return f"{m['threads']} threads, {m['cpu']}, torch {m['torch']}" + (f", {m['allocator']}" if m.get("allocator") else "")
