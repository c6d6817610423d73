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

__all__ = ["time_model", "run_bench", "time_train_step", "run_train_bench", "machine_description"]


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


def time_train_step(name: str, *, batch_size: int = 8, size=(224, 224), num_classes: int = 11, precision: str = "fp32", channels_last: bool = False, device: str = "auto", warmup: int = 2, repeats: int = 5) -> dict:
    """Images/s of forward + backward + AdamW step on random data (the model-side cost of training)."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, *size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size, *size), device=dev)
    times = []
    for i in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast_context(dev, precision):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"architecture": name, "precision": precision, "channels_last": channels_last, "batch_size": batch_size, "size": list(size), "step_s": step, "images_per_s": batch_size / step}


def run_train_bench(names: list[str], *, batch_size: int = 8, size=(224, 224), device: str = "auto", repeats: int = 5) -> dict:
    dev = resolve_device(device)
    fast = resolve_precision("auto", dev)
    rows = []
    for name in names:
        base = time_train_step(name, batch_size=batch_size, size=size, precision="fp32", channels_last=False, device=device, repeats=repeats)
        rows.append(base)
        for prec, cl in (("fp32", True), (fast, False), (fast, True)):
            if prec == "fp32" and not cl:
                continue
            r = time_train_step(name, batch_size=batch_size, size=size, precision=prec, channels_last=cl, device=device, repeats=repeats)
            r["speedup_vs_fp32"] = r["images_per_s"] / base["images_per_s"]
            rows.append(r)
    return {"machine": machine_description(), "device": str(dev), "rows": rows}


def train_to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Training step (forward + backward + AdamW) on random data, device {result['device']}, {m['threads']} threads, {m['cpu']}, torch {m['torch']}",
        "",
        "| architecture | batch x size | precision | channels_last | step (s) | images/s | speed-up |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        sp = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "1.00x"
        lines.append(f"| {r['architecture']} | {r['batch_size']} x {r['size'][0]}x{r['size'][1]} | {r['precision']} | {r['channels_last']} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {sp} |")
    return "\n".join(lines)


ENCODER_CANDIDATES = ("resnet10t", "resnet18", "resnet34", "efficientnet_b0", "mobilenetv3_large_100", "regnetx_004", "convnext_atto")


def run_encoder_bench(names=ENCODER_CANDIDATES, *, size=(384, 480), device: str = "auto", repeats: int = 10) -> dict:
    """Encoder candidates for the shared timm encoder: parameters, fp16 size, latency (fp32 and the fast precision)."""
    from .encoders import TimmEncoder

    dev = resolve_device(device)
    fast = resolve_precision("auto", dev)
    rows = []
    for name in names:
        torch.manual_seed(0)
        enc = TimmEncoder(name)
        params = count_parameters(enc)
        row = {"encoder": name, "params": params, "fp16_mb": params * 2 / 2**20, "residual": enc.is_residual}
        for prec in dict.fromkeys(("fp32", fast)):
            times = time_model(enc, torch.randn(1, 3, *size), dev, prec, repeats=repeats)
            row[f"latency_{prec}_ms"] = statistics.median(times)
        rows.append(row)
    return {"machine": machine_description(), "device": str(dev), "precision": fast, "input": list(size), "rows": rows}


def encoders_to_markdown(result: dict) -> str:
    m, fast = result["machine"], result["precision"]
    lines = [
        f"timm encoders (features_only) on 1x3x{result['input'][0]}x{result['input'][1]}, device {result['device']}, {m['threads']} threads, {m['cpu']}, torch {m['torch']}",
        "",
        f"| encoder | params (M) | fp16 size (MB) | residual | fp32 ms | {fast} ms |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} | {r['params'] / 1e6:.2f} | {r['fp16_mb']:.1f} | {'yes' if r['residual'] else 'no'} | {r['latency_fp32_ms']:.0f} | {r[f'latency_{fast}_ms']:.0f} |")
    return "\n".join(lines)


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
    if args.encoders:
        result = run_encoder_bench(repeats=args.repeats)
        md = encoders_to_markdown(result)
    elif args.train:
        size = tuple(args.size) if args.size != [360, 480] else (224, 224)
        result = run_train_bench(args.arch or ["unet"], batch_size=args.batch_size, size=size, device=args.device, repeats=args.repeats)
        md = train_to_markdown(result)
    else:
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
