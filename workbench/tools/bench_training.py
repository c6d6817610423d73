"""Training-side benchmarks of ``workbench bench``: ``--train`` (a training step per precision,
channels_last and torch.compile), ``--losses`` (every loss term, smp's Lovasz-softmax beside ours) and
``--allocators`` (the system allocator, tcmalloc and jemalloc, one fresh process each).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import segmentation_models_pytorch as smp
import torch

from ..classes import IGNORE_INDEX
from ..inference.fold import optimize_for_inference
from ..inference.predictor import autocast_context, resolve_device, resolve_precision
from ..models.registry import create_model
from ..training.losses import LOSSES, build_loss
from ..system.allocator import ENV, MARK, active_allocator, find_library
from ..system.machine import machine_description, machine_line
from ..inference.timing import fmt_ms, latency_stats, time_model

__all__ = [
    "ALLOCATORS",
    "time_train_step",
    "run_train_bench",
    "train_to_markdown",
    "run_loss_bench",
    "losses_to_markdown",
    "allocator_probe",
    "run_allocator_bench",
    "allocators_to_markdown",
]


def time_train_step(name: str, *, batch_size: int = 8, size=(224, 224), num_classes: int = 11, precision: str = "fp32", channels_last: bool = False, compile: bool = False, device: str = "auto", warmup: int = 2, repeats: int = 5) -> dict:
    """Images/s of forward + backward + AdamW step on random data (the model-side cost of training).

    ``compile`` runs the model under ``torch.compile`` as ``workbench train --compile`` does;
    its first step (the compilation) is reported as ``first_step_s`` and not timed.
    """
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compile else model
    x = torch.randn(batch_size, 3, *size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch_size, *size), device=dev)
    times, first = [], None
    for i in range(warmup + repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast_context(dev, precision):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i == 0:
            first = time.perf_counter() - t
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    return {"architecture": name, "precision": precision, "channels_last": channels_last, "compile": compile, "batch_size": batch_size, "size": list(size), "step_s": step, "images_per_s": batch_size / step, "first_step_s": first}


def run_train_bench(names: list[str], *, batch_size: int = 8, size=(224, 224), device: str = "auto", repeats: int = 5, compile: bool = False) -> dict:
    """fp32 against channels_last and the fast precision; with ``compile``, the fast precision under torch.compile too."""
    dev = resolve_device(device)
    fast = resolve_precision("auto", dev)
    rows = []
    for name in names:
        base = time_train_step(name, batch_size=batch_size, size=size, precision="fp32", channels_last=False, device=device, repeats=repeats)
        rows.append(base)
        variants = [("fp32", True, False), (fast, False, False), (fast, True, False)]
        if compile:
            variants += [(fast, False, True), (fast, True, True)]
        for prec, cl, comp in variants:
            if (prec, cl, comp) == ("fp32", False, False):  # no fast precision here: that is the baseline
                continue
            r = time_train_step(name, batch_size=batch_size, size=size, precision=prec, channels_last=cl, compile=comp, device=device, repeats=repeats)
            r["speedup_vs_fp32"] = r["images_per_s"] / base["images_per_s"]
            rows.append(r)
    return {"machine": machine_description(), "device": str(dev), "rows": rows}


def train_to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Training step (forward + backward + AdamW) on random data, device {result['device']}, {machine_line(m)}",
        "",
        "| architecture | batch x size | precision | channels_last | compiled (first step s) | step (s) | images/s | speed-up |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        sp = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "1.00x"
        comp = f"yes ({r['first_step_s']:.0f})" if r.get("compile") else "no"
        lines.append(f"| {r['architecture']} | {r['batch_size']} x {r['size'][0]}x{r['size'][1]} | {r['precision']} | {r['channels_last']} | {comp} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {sp} |")
    return "\n".join(lines)


def run_loss_bench(*, batch_size: int = 8, size=(224, 224), num_classes: int = 11, device: str = "auto", repeats: int = 5) -> dict:
    """Forward + backward of every loss term on random logits with 5% void pixels, and smp's Lovasz-softmax beside ours."""
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch_size, num_classes, *size, generator=g).to(dev).requires_grad_()
    target = torch.randint(0, num_classes, (batch_size, *size), generator=g)
    target[torch.rand(batch_size, *size, generator=g) < 0.05] = IGNORE_INDEX
    target = target.to(dev)
    smp_lovasz = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    losses = {name: build_loss(name) for name in LOSSES}
    losses["lovasz (smp)"] = lambda x, y: smp_lovasz(x.float(), y)
    rows = []
    for name, loss in losses.items():
        times = []
        for i in range(1 + repeats):
            logits.grad = None
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            value = loss(logits, target)
            value.backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
        rows.append({"loss": name, "batch_size": batch_size, "num_classes": num_classes, "size": list(size), "ms": 1000 * statistics.median(times), "value": float(value.detach())})
    ms = {r["loss"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_ce"] = r["ms"] / ms["ce"]
    return {"machine": machine_description(), "device": str(dev), "rows": rows, "lovasz_speedup_vs_smp": ms["lovasz (smp)"] / ms["lovasz"]}


def losses_to_markdown(result: dict) -> str:
    m, rows = result["machine"], result["rows"]
    b, (h, w) = rows[0]["batch_size"], rows[0]["size"]
    lines = [
        f"Loss forward + backward on random logits ({b} x {rows[0]['num_classes']} classes x {h}x{w}, 5% void), device {result['device']}, "
        f"{machine_line(m)}; median of the repeats",
        "",
        "| loss | ms | x cross-entropy | value |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {r['loss']} | {r['ms']:.1f} | {r['vs_ce']:.1f} | {r['value']:.6f} |" for r in rows]
    lines += ["", f"Our Lovasz-softmax against smp's: **{result['lovasz_speedup_vs_smp']:.2f}x** faster (the same value)."]
    return "\n".join(lines)


ALLOCATORS = ("system", "tcmalloc", "jemalloc")


def allocator_probe(name: str, *, batch_size: int = 8, train_size=(224, 224), size=(360, 480), repeats: int = 5) -> dict:
    """One architecture's training step and app-path inference in this process, with its allocator's cost:
    peak resident memory and the share of CPU time spent in the kernel (page faults, mmap/munmap)."""
    dev = resolve_device("cpu")
    fast = resolve_precision("auto", dev)
    train = time_train_step(name, batch_size=batch_size, size=train_size, precision=fast, channels_last=True, device="cpu", repeats=repeats)
    torch.manual_seed(0)
    model, _ = optimize_for_inference(create_model(name, num_classes=11).eval(), torch.randn(1, 3, 64, 64))
    infer = latency_stats(time_model(model, torch.randn(1, 3, *size), dev, fast, repeats=2 * repeats))
    tb = time_model(model, torch.randn(batch_size, 3, *size), dev, fast, warmup=1, repeats=max(2, repeats // 2))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "architecture": name,
        "allocator": active_allocator(),
        "precision": fast,
        "train_step_s": train["step_s"],
        "train_images_per_s": train["images_per_s"],
        "latency_p50_ms": infer["p50"],
        f"throughput_b{batch_size}_img_s": batch_size / (statistics.median(tb) / 1e3),
        "max_rss_mb": ru.ru_maxrss / 1024,
        "kernel_time_share": ru.ru_stime / max(ru.ru_stime + ru.ru_utime, 1e-9),
        "minor_page_faults": ru.ru_minflt,
    }


def run_allocator_bench(names: list[str], *, batch_size: int = 8, train_size=(224, 224), size=(360, 480), repeats: int = 5) -> dict:
    """:func:`allocator_probe` under each allocator (``WORKBENCH_ALLOCATOR``), one fresh process per
    architecture and allocator: an allocator is chosen when a process starts (see allocator.py)."""
    rows, missing = [], []
    for alloc in ALLOCATORS:
        if alloc != "system" and find_library(alloc) is None:
            missing.append(alloc)
            continue
        env = {k: v for k, v in os.environ.items() if k not in (MARK, "LD_PRELOAD")} | {ENV: alloc}
        for name in names:
            code = (
                "from workbench.system.allocator import reexec_with_allocator\n"
                "reexec_with_allocator()\n"
                "import json\n"
                "from workbench.tools.bench_training import allocator_probe\n"
                f"print(json.dumps(allocator_probe({name!r}, batch_size={batch_size}, train_size={tuple(train_size)}, size={tuple(size)}, repeats={repeats})))\n"
            )
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
            if res.returncode:
                raise RuntimeError(f"allocator {alloc}, {name}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            if row["allocator"] != alloc:
                raise RuntimeError(f"asked for {alloc}, the process ran {row['allocator']}")
            rows.append(row)
    base = {r["architecture"]: r for r in rows if r["allocator"] == "system"}
    for r in rows:
        b = base[r["architecture"]]
        r["train_speedup"] = b["train_step_s"] / r["train_step_s"]
        r["latency_speedup"] = b["latency_p50_ms"] / r["latency_p50_ms"]
    return {"machine": machine_description(), "device": "cpu", "batch_size": batch_size, "train_size": list(train_size), "input": list(size), "not_installed": missing, "rows": rows}


def allocators_to_markdown(result: dict) -> str:
    m, b = result["machine"], result["batch_size"]
    (th, tw), (h, w) = result["train_size"], result["input"]
    lines = [
        f"Allocators on the CPU ({machine_line({**m, 'allocator': None})}), one fresh process each: a training step "
        f"(batch {b} x {th}x{tw}, bf16 + channels_last, AdamW) and the app's inference path (1x3x{h}x{w}; batch {b} throughput)",
        "",
        f"| architecture | allocator | train step (s) | train x system | inference p50 (ms) | inference x system | batch {b} (img/s) | max RSS (MB) | kernel time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(result["rows"], key=lambda r: (r["architecture"], ALLOCATORS.index(r["allocator"]))):
        lines.append(
            f"| {r['architecture']} | {r['allocator']} | {r['train_step_s']:.2f} | {r['train_speedup']:.2f}x | {fmt_ms(r['latency_p50_ms'])} | "
            f"{r['latency_speedup']:.2f}x | {r[f'throughput_b{b}_img_s']:.1f} | {r['max_rss_mb']:.0f} | {100 * r['kernel_time_share']:.0f}% |"
        )
    if result["not_installed"]:
        lines += ["", f"Not installed here, so not measured: {', '.join(result['not_installed'])}."]
    return "\n".join(lines)

