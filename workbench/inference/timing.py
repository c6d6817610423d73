"""Timing primitives shared by the benchmarks and the evaluation's cost figures.

Every latency is wall-clock time after warm-up, with the CUDA stream synchronised around each call,
reported as the median (p50) and 90th percentile (p90) of the repeats.
"""

from __future__ import annotations

import statistics
import time

import torch

from .predictor import autocast_context

__all__ = ["time_model", "matmul_peak_gflops", "latency_stats", "fmt_ms"]


@torch.inference_mode()
def time_model(model, x: torch.Tensor, device: torch.device, precision: str, warmup: int = 2, repeats: int = 10, channels_last: bool = True) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` forward passes after ``warmup``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(device).to(memory_format=fmt)
    x = x.to(device).contiguous(memory_format=fmt)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast_context(device, precision):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
    return times


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's practical ceiling: best GFLOP/s of an n x n matrix multiply in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def latency_stats(times: list[float]) -> dict:
    """``{"p50": median, "p90": 90th percentile}`` of ``times`` (one time counts as both)."""
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"p50": statistics.median(times), "p90": q[8]}


def fmt_ms(v: float) -> str:
    """Milliseconds with the digits that matter: ``1.34`` and ``28.8`` for GPU- and small-model-scale
    figures (whole milliseconds made every H200 row read 1-4), ``1295`` for large ones."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"

