"""``workbench bench``: parameters, FLOPs and CPU/GPU latency of every architecture, and the command's entry.

Latency is measured on a 1 x C x H x W input (default 360x480, CamVid's size)
after warm-up, as the app runs the models: eval mode, inference mode,
channels_last, and bf16 autocast where the hardware has it (``--precision``).

The other measurements live beside this module, each with its Markdown table:
``--train``, ``--losses`` and ``--allocators`` in :mod:`.bench_training`, ``--engines`` in
:mod:`.bench_engines`, ``--request`` in :mod:`.bench_request`; the machine description in
:mod:`.machine`, the timing primitives in :mod:`.timing`. :func:`markdown_for` renders any stored result.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from ..inference.fold import optimize_for_inference
from ..inference.predictor import resolve_device, resolve_precision
from ..models.anatomy import count_flops, count_parameters
from ..models.encoders import DEFAULT_ENCODER, TimmEncoder
from ..models.registry import create_model, list_architectures
from ..paths import resolve_data_root
from .bench_engines import architecture_engines_to_markdown, engines_to_markdown, run_engine_bench
from .bench_request import CLASSIC, end_to_end_latency, profile_request, request_to_markdown
from .bench_training import allocators_to_markdown, losses_to_markdown, run_allocator_bench, run_loss_bench, run_train_bench, train_to_markdown
from ..system.machine import machine_description, machine_line
from ..inference.timing import fmt_ms, latency_stats, matmul_peak_gflops, time_model

__all__ = ["run_bench", "smp_reference", "to_markdown", "run_encoder_bench", "encoders_to_markdown", "markdown_for", "main"]


def _peak_memory_mb(name: str, size, batch: int, precision: str, device: str) -> float | None:
    """Peak memory of one batch, in a fresh process (CPU: peak resident memory during the forward, sampled,
    above the resident memory just before it; CUDA: max allocated)."""
    code = (
        "import sys, torch, workbench\n"
        "from workbench.inference.predictor import autocast_context, resolve_device\n"
        "from workbench.inference.fold import optimize_for_inference\n"
        f"dev = resolve_device({device!r}); torch.manual_seed(0)\n"
        f"m = workbench.create_model({name!r}, num_classes=11)\n"
        "m, _ = optimize_for_inference(m, torch.randn(1, 3, 64, 64)); m = m.to(dev)\n"
        f"x = torch.randn({batch}, 3, {size[0]}, {size[1]}, device=dev).contiguous(memory_format=torch.channels_last)\n"
        "import threading, time, os\n"
        "page = os.sysconf('SC_PAGE_SIZE')\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * page\n"
        "before, peak, done = rss(), [0], [False]\n"
        "def sample():\n"
        "    while not done[0]:\n"
        "        peak[0] = max(peak[0], rss()); time.sleep(0.0005)\n"
        "th = threading.Thread(target=sample); th.start()\n"
        "if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats()\n"
        f"with torch.inference_mode(), autocast_context(dev, {precision!r}): m(x)\n"
        "done[0] = True; th.join()\n"
        "if dev.type == 'cuda': print(torch.cuda.max_memory_allocated() / 2**20)\n"
        "else: print((max(peak[0], rss()) - before) / 2**20)\n"
    )
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        return float(res.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def run_bench(names: list[str] | None = None, *, size=(360, 480), num_classes: int = 11, precision: str = "auto", device: str = "auto", repeats: int = 10, warmup: int = 2, flops: bool = True, memory: bool = True, batch: int = 8, reference: bool = True) -> dict:
    """Every architecture on the app's fast path (folded BN, channels_last, ``precision``) and in plain fp32 eager.

    Rows: parameters, FLOPs, latency p50/p90 at batch 1, throughput at batch ``batch``, peak memory,
    achieved GFLOP/s against the measured matrix-multiply peak in the same dtype; plus smp's U-Net with
    the same encoder in plain eager fp32 (the reference a user would otherwise pick).
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    peaks = {"fp32": matmul_peak_gflops(torch.float32, dev)}
    if prec != "fp32":
        peaks[prec] = matmul_peak_gflops(torch.bfloat16 if prec == "bf16" else torch.float16, dev)
    x1 = torch.randn(1, 3, *size)
    xb = torch.randn(batch, 3, *size)
    rows = []
    for name in names or list_architectures():
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes).eval()
        row = {"architecture": name, "params": count_parameters(model)}
        if flops:
            row["gflops"] = count_flops(model, size) / 1e9
        eager = latency_stats(time_model(model, x1, dev, "fp32", warmup=warmup, repeats=max(3, repeats // 2), channels_last=False))
        # time_model moved the model to the device; the fast path is built from it on the CPU
        fast_model, info = optimize_for_inference(model.cpu(), torch.randn(1, 3, 64, 64))
        fast = latency_stats(time_model(fast_model, x1, dev, prec, warmup=warmup, repeats=repeats))
        tb = time_model(fast_model, xb, dev, prec, warmup=1, repeats=max(2, repeats // 3))
        row.update(
            {
                "latency_fp32_eager_p50_ms": eager["p50"],
                "latency_p50_ms": fast["p50"],
                "latency_p90_ms": fast["p90"],
                "speedup_vs_fp32_eager": eager["p50"] / fast["p50"],
                f"throughput_b{batch}_img_s": batch / (statistics.median(tb) / 1e3),
                "conv_bn_folded": info["conv_bn_folded"],
            }
        )
        if flops:
            row["achieved_gflop_s"] = row["gflops"] / (fast["p50"] / 1e3)
            row["share_of_peak"] = row["achieved_gflop_s"] / peaks[prec]
        if memory:
            row[f"peak_memory_b{batch}_mb"] = _peak_memory_mb(name, size, batch, prec, str(dev))
        rows.append(row)
    result = {"machine": machine_description(), "device": str(dev), "precision": prec, "input": list(size), "batch": batch, "matmul_peak_gflop_s": peaks, "rows": rows}
    if reference:
        result["reference"] = smp_reference(size=size, num_classes=num_classes, device=device, repeats=repeats, rows=rows)
    return result


def smp_reference(*, encoder: str | None = None, size=(360, 480), num_classes: int = 11, device: str = "auto", repeats: int = 10, rows: list[dict] | None = None) -> dict:
    """``segmentation_models_pytorch.Unet`` with the same timm encoder, plain eager fp32, in this process.

    smp needs sizes divisible by 32: it gets the padded input our models build internally.
    """
    dev = resolve_device(device)
    encoder = encoder or DEFAULT_ENCODER
    torch.manual_seed(0)
    ref = smp.Unet(f"tu-{encoder}", encoder_weights=None, classes=num_classes).eval()
    padded = tuple(-(-s // 32) * 32 for s in size)
    times = time_model(ref, torch.randn(1, 3, *padded), dev, "fp32", repeats=repeats, channels_last=False)
    out = {"model": f"smp.Unet(tu-{encoder})", "precision": "fp32 eager", "input": list(padded), "params": count_parameters(ref), **{f"latency_{k}_ms": v for k, v in latency_stats(times).items()}}
    ours = next((r for r in rows or [] if r["architecture"] == "unet"), None)
    if ours:
        out["unet_speedup_vs_smp"] = out["latency_p50_ms"] / ours["latency_p50_ms"]
    return out


def to_markdown(result: dict) -> str:
    m = result["machine"]
    b = result.get("batch", 8)
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in result.get("matmul_peak_gflop_s", {}).items())
    lines = [
        f"Input {result['input'][0]}x{result['input'][1]}, device {result['device']}, fast path = folded BN + channels_last + {result['precision']}; "
        f"{machine_line(m)}. Matrix-multiply peak (GFLOP/s): {peaks}.",
        "",
        f"| architecture | params (M) | GFLOPs | fp32 eager p50 (ms) | fast p50 (ms) | fast p90 (ms) | speed-up | batch {b} (img/s) | peak mem batch {b} (MB) | GFLOP/s | share of peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        mem = r.get(f"peak_memory_b{b}_mb")
        lines.append(
            f"| {r['architecture']} | {r['params'] / 1e6:.2f} | {r.get('gflops', float('nan')):.1f} | {fmt_ms(r['latency_fp32_eager_p50_ms'])} | {fmt_ms(r['latency_p50_ms'])} | "
            f"{fmt_ms(r['latency_p90_ms'])} | {r['speedup_vs_fp32_eager']:.2f}x | {r[f'throughput_b{b}_img_s']:.1f} | {'-' if mem is None else f'{mem:.0f}'} | "
            f"{r.get('achieved_gflop_s', float('nan')):.0f} | {100 * r.get('share_of_peak', float('nan')):.0f}% |"
        )
    ref = result.get("reference")
    if ref:
        lines += [
            "",
            f"Reference: {ref['model']} ({ref['params'] / 1e6:.2f} M parameters), {ref['precision']}, input {ref['input'][0]}x{ref['input'][1]}: "
            f"p50 {fmt_ms(ref['latency_p50_ms'])} ms, p90 {fmt_ms(ref['latency_p90_ms'])} ms."
            + (f" Our `unet` on the fast path is **{ref['unet_speedup_vs_smp']:.2f}x** faster." if "unet_speedup_vs_smp" in ref else ""),
        ]
    return "\n".join(lines)


ENCODER_CANDIDATES = ("resnet10t", "resnet18", "resnet34", "efficientnet_b0", "mobilenetv3_large_100", "regnetx_004", "convnext_atto")


def run_encoder_bench(names=ENCODER_CANDIDATES, *, size=(384, 480), device: str = "auto", repeats: int = 10) -> dict:
    """Encoder candidates for the shared timm encoder: parameters, fp16 size, latency (fp32 and the fast precision)."""
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
        f"timm encoders (features_only) on 1x3x{result['input'][0]}x{result['input'][1]}, device {result['device']}, {machine_line(m)}",
        "",
        f"| encoder | params (M) | fp16 size (MB) | residual | fp32 ms | {fast} ms |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} | {r['params'] / 1e6:.2f} | {r['fp16_mb']:.1f} | {'yes' if r['residual'] else 'no'} | {fmt_ms(r['latency_fp32_ms'])} | {fmt_ms(r[f'latency_{fast}_ms'])} |")
    return "\n".join(lines)


def markdown_for(result: dict) -> str:
    """The Markdown table of any stored ``bench`` result (``bench --render X.json``), by its shape."""
    if "profile" in result:
        return request_to_markdown(result["profile"], result.get("end_to_end"), result.get("profile_upload"))  # in Chromium: scripts/browser_timing.py
    rows = result.get("rows") or [{}]
    if "candidates" in rows[0]:
        return engines_to_markdown(result)
    if "engine" in rows[0]:
        return architecture_engines_to_markdown(result)
    if "encoder" in rows[0]:
        return encoders_to_markdown(result)
    if "step_s" in rows[0]:
        return train_to_markdown(result)
    if "loss" in rows[0]:
        return losses_to_markdown(result)
    if "kernel_time_share" in rows[0]:
        return allocators_to_markdown(result)
    if "latency_p50_ms" in rows[0]:
        return to_markdown(result)
    raise ValueError("not a stored `workbench bench` result: expected 'profile' or rows of engines, encoders, training steps or architectures")


def _train_size(size: list[int]) -> tuple[int, int]:
    """--train and --losses measure training-sized crops: 224x224 unless --size was given."""
    return tuple(size) if size != [360, 480] else (224, 224)


def main(args) -> int:
    if args.render:  # measure nothing: the stored result is the source, only its table is rewritten
        result = json.loads(Path(args.render).read_text())
        args.out = args.out or str(Path(args.render).with_suffix(""))
    elif args.engines:
        result = run_engine_bench(args.arch or None, engines=args.engine or None, repeats=min(args.repeats, 5))
    elif args.request:
        image = args.image or next(iter(sorted((resolve_data_root() / "camvid" / "test").glob("*.png"))), None)
        if image is None:
            raise FileNotFoundError("no --image given and no CamVid test image under the data root")
        prof = profile_request(str(image), tuple(args.arch or CLASSIC), repeats=args.repeats)
        with tempfile.TemporaryDirectory() as tmp:  # the same pixels as a user's own file: no ground truth
            own = shutil.copyfile(image, Path(tmp) / f"upload{Path(image).suffix}")
            upload = profile_request(str(own), tuple(args.arch or CLASSIC), repeats=args.repeats)
        e2e = end_to_end_latency(str(image), tuple(args.arch or CLASSIC), repeats=args.repeats)
        result = {"machine": machine_description(), "profile": prof, "profile_upload": upload, "end_to_end": e2e}
    elif args.encoders:
        result = run_encoder_bench(repeats=args.repeats)
    elif args.allocators:
        result = run_allocator_bench(args.arch or ["unet", "tiramisu"], batch_size=args.batch_size, train_size=_train_size(args.size), repeats=args.repeats)
    elif args.losses:
        result = run_loss_bench(batch_size=args.batch_size, size=_train_size(args.size), device=args.device, repeats=args.repeats)
    elif args.train:
        result = run_train_bench(args.arch or ["unet"], batch_size=args.batch_size, size=_train_size(args.size), device=args.device, repeats=args.repeats, compile=args.compile)
    else:
        result = run_bench(args.arch or None, size=tuple(args.size), precision=args.precision, device=args.device, repeats=args.repeats, flops=not args.no_flops, memory=not args.no_memory)
    md = markdown_for(result)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        written = [out.with_suffix(".md")]
        if not args.render:
            out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
            written.insert(0, out.with_suffix(".json"))
        out.with_suffix(".md").write_text(md + "\n")
        print(f"wrote {' and '.join(map(str, written))}")
    return 0

