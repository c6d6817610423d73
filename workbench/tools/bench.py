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

from .allocator import active_allocator
from ..models.anatomy import count_flops, count_parameters
from ..inference.predictor import autocast_context, resolve_device, resolve_precision
from ..models.registry import create_model, list_architectures

__all__ = ["time_model", "run_bench", "smp_reference", "matmul_peak_gflops", "time_train_step", "run_train_bench", "machine_description"]


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
        "allocator": active_allocator(),
    }


def machine_line(m: dict) -> str:
    """``2 threads, AMD EPYC, torch 2.x, tcmalloc``: the machine as the tables' captions name it."""
    return f"{m['threads']} threads, {m['cpu']}, torch {m['torch']}" + (f", {m['allocator']}" if m.get("allocator") else "")


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


def _peak_memory_mb(name: str, size, batch: int, precision: str, device: str) -> float | None:
    """Peak memory of one batch, in a fresh process (CPU: peak resident memory during the forward, sampled,
    above the resident memory just before it; CUDA: max allocated)."""
    import subprocess
    import sys

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


def fmt_ms(v: float) -> str:
    """Milliseconds with the digits that matter: ``1.34`` and ``28.8`` for GPU- and small-model-scale
    figures (whole milliseconds made every H200 row read 1-4), ``1295`` for large ones."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _stats(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {"p50": statistics.median(times), "p90": q[8]}


def run_bench(names: list[str] | None = None, *, size=(360, 480), num_classes: int = 11, precision: str = "auto", device: str = "auto", repeats: int = 10, warmup: int = 2, flops: bool = True, memory: bool = True, batch: int = 8, reference: bool = True) -> dict:
    """Every architecture on the app's fast path (folded BN, channels_last, ``precision``) and in plain fp32 eager.

    Rows: parameters, FLOPs, latency p50/p90 at batch 1, throughput at batch ``batch``, peak memory,
    achieved GFLOP/s against the measured matrix-multiply peak in the same dtype; plus smp's U-Net with
    the same encoder in plain eager fp32 (the reference a user would otherwise pick).
    """
    from ..inference.fold import optimize_for_inference

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
        eager = _stats(time_model(model, x1, dev, "fp32", warmup=warmup, repeats=max(3, repeats // 2), channels_last=False))
        # time_model moved the model to the device; the fast path is built from it on the CPU
        fast_model, info = optimize_for_inference(model.cpu(), torch.randn(1, 3, 64, 64))
        fast = _stats(time_model(fast_model, x1, dev, prec, warmup=warmup, repeats=repeats))
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
    import segmentation_models_pytorch as smp

    from ..models.encoders import DEFAULT_ENCODER

    dev = resolve_device(device)
    encoder = encoder or DEFAULT_ENCODER
    torch.manual_seed(0)
    ref = smp.Unet(f"tu-{encoder}", encoder_weights=None, classes=num_classes).eval()
    padded = tuple(-(-s // 32) * 32 for s in size)
    times = time_model(ref, torch.randn(1, 3, *padded), dev, "fp32", repeats=repeats, channels_last=False)
    out = {"model": f"smp.Unet(tu-{encoder})", "precision": "fp32 eager", "input": list(padded), "params": count_parameters(ref), **{f"latency_{k}_ms": v for k, v in _stats(times).items()}}
    ours = next((r for r in rows or [] if r["architecture"] == "unet"), None)
    if ours:
        out["unet_speedup_vs_smp"] = out["latency_p50_ms"] / ours["latency_p50_ms"]
    return out


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


def run_engine_bench(name: str = "unet", *, size=(360, 480), repeats: int = 10) -> dict:
    """One architecture through every inference engine we evaluated, with label parity against fp32 eager.

    torch eager fp32 (the baseline), the app's fast path (folded BN, channels_last, bf16 autocast),
    the fast path under ``torch.compile`` (Inductor, freezing; compile time reported), and ONNX Runtime
    (fp32, CPU execution provider) when ``onnxruntime`` is installed.
    """
    import copy
    import io

    import numpy as np

    from ..inference.fold import optimize_for_inference

    dev = torch.device("cpu")
    prec = resolve_precision("auto", dev)
    torch.manual_seed(0)
    model = create_model(name, num_classes=11).eval()
    padded = tuple(-(-d // 32) * 32 for d in size)
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        ref = model(x).argmax(1)

    def agree(y) -> float:
        return float((torch.as_tensor(y).argmax(1) == ref).float().mean())

    rows = []
    t = time_model(model, x, dev, "fp32", repeats=repeats, channels_last=False)
    rows.append({"engine": "torch eager fp32", "latency_p50_ms": statistics.median(t), "label_agreement": 1.0})
    fast, _ = optimize_for_inference(copy.deepcopy(model), torch.randn(1, 3, 64, 64))
    t = time_model(fast, x, dev, prec, repeats=repeats)
    with torch.inference_mode(), autocast_context(dev, prec):
        y = fast(x.contiguous(memory_format=torch.channels_last)).float()
    rows.append({"engine": f"torch fast path (fold + channels_last + {prec})", "latency_p50_ms": statistics.median(t), "label_agreement": agree(y)})
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(fast)

        def first_call(inp):  # seconds of a call that compiles, and its output
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast_context(dev, prec):
                out = compiled(inp.contiguous(memory_format=torch.channels_last)).float()
            return time.perf_counter() - t0, out

        compile_s, y = first_call(x)
        t = time_model(compiled, x, dev, prec, warmup=1, repeats=repeats)
        # What the app would pay for every new upload size: the first call at another size recompiles
        x2 = torch.randn(1, 3, size[0] * 4 // 3, size[1] * 4 // 3)
        new_size_s, _ = first_call(x2)
        rows.append({
            "engine": f"torch.compile of the fast path ({prec})", "latency_p50_ms": statistics.median(t), "label_agreement": agree(y),
            "compile_s": compile_s, "new_size_first_call_s": new_size_s, "new_size": list(x2.shape[-2:]),
        })
    except Exception as exc:  # compile needs a C++ toolchain; report instead of failing the bench
        rows.append({"engine": "torch.compile", "error": f"{type(exc).__name__}: {exc}"[:200]})
    try:
        import onnxruntime as ort

        buf = io.BytesIO()
        plain, _ = optimize_for_inference(copy.deepcopy(model), torch.randn(1, 3, 64, 64), channels_last=False)
        xp = torch.nn.functional.pad(x, (0, padded[1] - size[1], 0, padded[0] - size[0]), mode="reflect")
        torch.onnx.export(plain, (xp,), buf, dynamo=False, opset_version=17)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: xp.numpy()}
        times = []
        for i in range(2 + repeats):
            t0 = time.perf_counter()
            y = sess.run(None, feed)[0]
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1e3)
        rows.append({"engine": "ONNX Runtime fp32 (CPU EP)", "latency_p50_ms": statistics.median(times), "label_agreement": agree(np.asarray(y)[..., : size[0], : size[1]])})
    except ImportError:
        rows.append({"engine": "ONNX Runtime", "error": "onnxruntime is not installed (pip install onnxruntime onnx)"})
    return {"machine": machine_description(), "architecture": name, "input": list(size), "rows": rows}


def engines_to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"`{result['architecture']}` on 1x3x{result['input'][0]}x{result['input'][1]}, {machine_line(m)}; "
        "label agreement = share of pixels whose argmax equals fp32 eager's (random weights: near-ties make this a lower bound).",
        "",
        "| engine | p50 (ms) | label agreement | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['engine']} | - | - | {r['error']} |")
        else:
            note = f"compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
            if "new_size_first_call_s" in r:
                note += f"; first call at {r['new_size'][0]}x{r['new_size'][1]} {r['new_size_first_call_s']:.1f} s (recompiles)"
            lines.append(f"| {r['engine']} | {r['latency_p50_ms']:.1f} | {100 * r['label_agreement']:.2f}% | {note} |")
    return "\n".join(lines)


CLASSIC = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")


def _load_app():
    import importlib.util
    import sys

    from ..paths import app_path

    if "app" in sys.modules and hasattr(sys.modules["app"], "compare"):
        return sys.modules["app"]
    spec = importlib.util.spec_from_file_location("app", app_path())
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module
    spec.loader.exec_module(module)
    return module


def _encode_outputs(outputs, components) -> float:
    """Milliseconds Gradio spends writing the returned images, each in its component's format (PNG, JPEG)."""
    import tempfile

    import gradio as gr
    import numpy as np
    from gradio import processing_utils
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:  # made and removed outside the clock: Gradio keeps its cache
        t = time.perf_counter()
        for value, comp in zip(outputs, components):
            value = value.get("value") if isinstance(value, dict) else value
            if isinstance(comp, gr.Image) and isinstance(value, np.ndarray):
                processing_utils.save_img_array_to_cache(value, tmp, format=comp.format)
            elif isinstance(comp, gr.Image) and isinstance(value, Image.Image):  # the palette masks
                processing_utils.save_pil_to_cache(value, tmp, format=comp.format)
        return (time.perf_counter() - t) * 1e3


def profile_request(image_path: str, archs=CLASSIC, repeats: int = 5) -> dict:
    """The whole side-by-side request as the app's handler serves it, broken down by stage (median over ``repeats``)."""
    app = _load_app()
    app.compare(image_path, list(archs), 0.5)  # load and warm every model up
    runs = []
    for _ in range(repeats):
        timings: dict = {}
        t = time.perf_counter()
        outputs = app.compare(image_path, list(archs), 0.5, timings=timings)
        timings["handler total"] = (time.perf_counter() - t) * 1e3
        timings["image encoding (Gradio)"] = _encode_outputs(outputs, app.COMPARE_OUTPUTS)
        runs.append(timings)
    stages = [k for k in runs[0] if k != "per_model_forward"]
    med = {k: statistics.median(r[k] for r in runs) for k in stages}
    per_model = {n: statistics.median(r["per_model_forward"][n] for r in runs) for n in runs[0]["per_model_forward"]}
    total = med["handler total"] + med["image encoding (Gradio)"]
    return {"archs": list(archs), "image": str(image_path), "stages_ms": med, "per_model_forward_ms": per_model, "total_ms": total, "network_ms": med["network"], "overhead_share": 1 - med["network"] / total}


def end_to_end_latency(image_path: str, archs=CLASSIC, repeats: int = 5) -> dict:
    """The app started in a fresh process: time to the first answer, then the /compare latency through gradio_client."""
    from gradio_client import Client, handle_file

    from .loadtest import _free_port, _start_app

    port = _free_port()
    t0 = time.perf_counter()
    proc = _start_app(port, timeout_s=300, poll_s=0.1)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        client.predict(handle_file(image_path), ["fcn8s"], 0.5, api_name="/compare")
        first_answer = time.perf_counter() - t0
        client.predict(handle_file(image_path), list(archs), 0.5, api_name="/compare")  # loads the rest
        answer_only = Client(url, verbose=False, download_files=False)  # the server's answer, without the client fetching the images
        times, answer_times = [], []
        for _ in range(repeats):
            for c, out in ((client, times), (answer_only, answer_times)):
                t = time.perf_counter()
                c.predict(handle_file(image_path), list(archs), 0.5, api_name="/compare")
                out.append((time.perf_counter() - t) * 1e3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "start_to_first_answer_s": first_answer,
        "request_p50_ms": statistics.median(times),
        "request_max_ms": max(times),
        "answer_p50_ms": statistics.median(answer_times),
        "archs": list(archs),
    }


def request_to_markdown(prof: dict, e2e: dict | None, upload: dict | None = None) -> str:
    """The stage table: the CamVid example (ground truth: scores and error maps too) and, if given, the
    same pixels as a user's own upload (no ground truth, so no scores or error maps)."""
    profs = [("CamVid example", prof)] + ([("own upload", upload)] if upload else [])
    head = " | ".join(f"{name} ms | share" for name, _ in profs)
    lines = [
        f"Whole Compare request for {len(prof['archs'])} architectures ({', '.join(prof['archs'])}) on {Path(prof['image']).name}, median of repeats"
        + ("; 'own upload' is the same pixels under another file name, so no ground truth is found:" if upload else ":"),
        "",
        f"| stage | {head} |",
        "| --- |" + " ---: | ---: |" * len(profs),
    ]
    stages = list(dict.fromkeys(k for _, p in profs for k in p["stages_ms"] if k != "handler total"))
    for k in stages:
        cells = [(f"{p['stages_ms'][k]:.1f} | {100 * p['stages_ms'][k] / p['total_ms']:.1f}%" if k in p["stages_ms"] else "- | -") for _, p in profs]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **total (handler + encoding)** | " + " | ".join(f"**{p['total_ms']:.0f}** | " for _, p in profs) + "|")
    lines.append("")
    lines.append("Network time per model (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in prof["per_model_forward_ms"].items()))
    lines.append("App overhead (everything but the networks): " + "; ".join(f"{name} **{100 * p['overhead_share']:.1f}%**" for name, p in profs) + " of the request.")
    if e2e:
        lines.append(
            f"Served app through gradio_client: start to first answered request {e2e['start_to_first_answer_s']:.1f} s; "
            f"whole request p50 {e2e['request_p50_ms']:.0f} ms (max {e2e['request_max_ms']:.0f} ms)"
            + (
                f", of which the answer without the client downloading the result images one by one is {e2e['answer_p50_ms']:.0f} ms (p50)."
                if "answer_p50_ms" in e2e
                else "."
            )
        )
    return "\n".join(lines)


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
    import segmentation_models_pytorch as smp

    from ..classes import IGNORE_INDEX
    from ..training.losses import LOSSES, build_loss

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
    import resource

    from ..inference.fold import optimize_for_inference

    dev = resolve_device("cpu")
    fast = resolve_precision("auto", dev)
    train = time_train_step(name, batch_size=batch_size, size=train_size, precision=fast, channels_last=True, device="cpu", repeats=repeats)
    torch.manual_seed(0)
    model, _ = optimize_for_inference(create_model(name, num_classes=11).eval(), torch.randn(1, 3, 64, 64))
    infer = _stats(time_model(model, torch.randn(1, 3, *size), dev, fast, repeats=2 * repeats))
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
    import os
    import subprocess
    import sys

    from .allocator import ENV, MARK, find_library

    rows, missing = [], []
    for alloc in ALLOCATORS:
        if alloc != "system" and find_library(alloc) is None:
            missing.append(alloc)
            continue
        env = {k: v for k, v in os.environ.items() if k not in (MARK, "LD_PRELOAD")} | {ENV: alloc}
        for name in names:
            code = (
                "from workbench.tools.allocator import reexec_with_allocator\n"
                "reexec_with_allocator()\n"
                "import json\n"
                "from workbench.tools.bench import allocator_probe\n"
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


ENCODER_CANDIDATES = ("resnet10t", "resnet18", "resnet34", "efficientnet_b0", "mobilenetv3_large_100", "regnetx_004", "convnext_atto")


def run_encoder_bench(names=ENCODER_CANDIDATES, *, size=(384, 480), device: str = "auto", repeats: int = 10) -> dict:
    """Encoder candidates for the shared timm encoder: parameters, fp16 size, latency (fp32 and the fast precision)."""
    from ..models.encoders import TimmEncoder

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


def markdown_for(result: dict) -> str:
    """The Markdown table of any stored ``bench`` result (``bench --render X.json``), by its shape."""
    if "profile" in result:
        return request_to_markdown(result["profile"], result.get("end_to_end"), result.get("profile_upload"))
    rows = result.get("rows") or [{}]
    if "engine" in rows[0]:
        return engines_to_markdown(result)
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
        result = run_engine_bench((args.arch or ["unet"])[0], size=tuple(args.size), repeats=args.repeats)
    elif args.request:
        from ..paths import resolve_data_root

        image = args.image or next(iter(sorted((resolve_data_root() / "camvid" / "test").glob("*.png"))), None)
        if image is None:
            raise FileNotFoundError("no --image given and no CamVid test image under the data root")
        import shutil
        import tempfile

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
