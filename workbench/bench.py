"""``workbench bench``: parameters, FLOPs and CPU/GPU latency of every architecture.

Latency is measured on a 1 x C x H x W input (default 360x480, CamVid's size)
after warm-up, as the app runs the models: eval mode, inference mode,
channels_last, and bf16 autocast where the hardware has it (``--precision``).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from .analysis import count_flops, count_parameters
from .predictor import autocast_context, resolve_device, resolve_precision
from .registry import create_model, list_architectures

__all__ = ["time_model", "run_bench", "machine_description"]


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


@torch.inference_mode()
def time_model(model, x: torch.Tensor, device: torch.device, precision: str, warmup: int = 2, repeats: int = 10) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` forward passes after ``warmup``."""
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
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


def run_bench(names: list[str] | None = None, *, size=(360, 480), num_classes: int = 11, precision: str = "auto", device: str = "auto", repeats: int = 10, warmup: int = 2, flops: bool = True) -> dict:
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    rows = []
    for name in names or list_architectures():
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes)
        row = {"architecture": name, "params": count_parameters(model)}
        if flops:
            row["gflops"] = count_flops(model, size) / 1e9
        times = time_model(model, torch.randn(1, 3, *size), dev, prec, warmup=warmup, repeats=repeats)
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
        row.update({"latency_p50_ms": statistics.median(times), "latency_p90_ms": q[8]})
        rows.append(row)
    return {"machine": machine_description(), "device": str(dev), "precision": prec, "input": list(size), "rows": rows}


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Input 1x3x{result['input'][0]}x{result['input'][1]}, device {result['device']}, precision {result['precision']}, "
        f"{m['threads']} threads, {m['cpu']}, torch {m['torch']}",
        "",
        "| architecture | params (M) | GFLOPs | latency p50 (ms) | latency p90 (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        gf = f"{r['gflops']:.1f}" if "gflops" in r else "-"
        lines.append(f"| {r['architecture']} | {r['params'] / 1e6:.2f} | {gf} | {r['latency_p50_ms']:.0f} | {r['latency_p90_ms']:.0f} |")
    return "\n".join(lines)


def main(args) -> int:
    result = run_bench(args.arch or None, size=tuple(args.size), precision=args.precision, device=args.device, repeats=args.repeats, flops=not args.no_flops)
    md = to_markdown(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(md + "\n")
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0
