"""``workbench bench --engines``: one architecture through every inference engine we evaluated.

torch eager fp32 (the baseline), the app's fast path (folded BN, channels_last, bf16 autocast), the
fast path under ``torch.compile`` and ONNX Runtime, each with its label agreement against fp32 eager.
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import numpy as np
import torch

from ..inference.fold import optimize_for_inference
from ..inference.predictor import autocast_context, resolve_precision
from ..models.registry import create_model
from ..system.machine import machine_description, machine_line
from ..inference.timing import time_model

__all__ = ["run_engine_bench", "engines_to_markdown"]


def run_engine_bench(name: str = "unet", *, size=(360, 480), repeats: int = 10) -> dict:
    """One architecture through every inference engine we evaluated, with label parity against fp32 eager.

    torch eager fp32 (the baseline), the app's fast path (folded BN, channels_last, bf16 autocast),
    the fast path under ``torch.compile`` (Inductor, freezing; compile time reported), and ONNX Runtime
    (fp32, CPU execution provider) when ``onnxruntime`` is installed.
    """
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
        import torch._inductor.config as inductor_config  # only when compiling: heavy, and needs a C++ toolchain later

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
        import onnxruntime as ort  # optional: the test extra installs it

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

