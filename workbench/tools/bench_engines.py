"""``workbench bench --engines``: every shipped checkpoint through every inference engine x precision.

For each checkpoint (``checkpoints/camvid_*.json`` and ``isbi_*.json``): torch eager fp32 (the 1.00x), the
torch fast path, OpenVINO and ONNX Runtime (int8 where an int8 model exists), interleaved in one process on
the data root's validation images at 360x480 (else a synthetic image), with label agreement against fp32
eager, the parity verdict, conversion and compile times, the first call at a new size, and the engine
``auto`` picks (:mod:`workbench.inference.engines.choose`). ``workbench engines CHECKPOINT`` prints the
choice and its reason for one checkpoint.
"""

from __future__ import annotations

import copy
import io
import statistics
import time

import numpy as np
import torch

from ..inference.engines.cache import artifacts_dir, decision_key, decision_path, int8_ir_path
from ..inference.engines.choose import measurement_count, measurement_images
from ..inference.fold import optimize_for_inference
from ..inference.predictor import Predictor, autocast_context, resolve_precision
from ..inference.timing import time_model
from ..io.manifest import Manifest
from ..inference.zoo import Zoo
from ..models.registry import create_model
from ..paths import checkpoints_dir
from ..system.machine import machine_description, machine_line

__all__ = ["run_engine_bench", "engines_to_markdown", "shipped_checkpoints", "cmd_engines", "run_architecture_bench", "architecture_engines_to_markdown"]

REQUEST_ARCHS = ("fcn32s", "fcn16s", "fcn8s", "unet", "residual_unet", "tiramisu", "dilated")  # the app's classic seven


def shipped_checkpoints(names: list[str] | None = None) -> list:
    """The shipped CamVid and ISBI manifests (not the upsampling lab's), optionally only those naming ``names``."""
    folder = checkpoints_dir()
    paths = sorted(folder.glob("camvid_*.json")) + sorted(folder.glob("isbi_*.json"))
    if names:
        paths = [p for p in paths if p.stem in names or p.stem.split("_", 1)[1] in names]  # camvid_unet or unet
    return paths


def run_engine_bench(checkpoints: list[str] | None = None, *, engines: list[str] | None = None, request: bool = True, repeats: int = 5) -> dict:
    """Engine x precision for every shipped checkpoint (or those named), ratios against torch eager fp32.

    Measuring is the ``auto`` choice's own measurement (so the figures are exactly what decided), run afresh
    here: the decision cache is bypassed and rewritten (its rounds: :data:`~workbench.inference.engines.choose.ROUNDS`).
    ``repeats``: rounds of the request timing. ``request``: also time the app's seven classic
    networks on one image, everything included (decode, normalise, forward, labels), per engine.
    """
    rows = []
    for path in shipped_checkpoints(checkpoints):
        t0 = time.perf_counter()
        before = measurement_count()
        pred = _measured(path)
        record = pred.engine_record
        rows.append({
            "checkpoint": path.stem, "chosen": f"{pred.engine} {pred.engine_precision}", "reason": pred.engine_reason,
            "images": record.get("images"), "candidates": [r for r in record.get("candidates", []) if not engines or r["engine"] in ("torch eager", *engines)],
            "seconds": time.perf_counter() - t0, "measured": measurement_count() > before,
        })
    out = {"machine": machine_description(), "size": [360, 480], "rows": rows}
    if request:
        out["request"] = compare_request(engines or ["torch", "openvino", "onnxruntime"], repeats=repeats)
    return out


def _measured(path) -> Predictor:
    """A Predictor whose auto choice was measured now (the stored decision is removed first)."""
    man = Manifest.read(path)
    sha = man["weights"]["sha256"]
    decision_path(decision_key(sha, int8=int8_ir_path(path, artifacts_dir(sha)))).unlink(missing_ok=True)
    return Predictor(path, "cpu", engine="auto")


def compare_request(engines: list[str], image=None, repeats: int = 5) -> list[dict]:
    """The seven classic networks on one 360x480 image, decode to labels, per engine (median of ``repeats``)."""
    images, described = measurement_images(Manifest({"dataset": {"name": "camvid"}}), "RGB", n=1)
    out = []
    for engine in ["auto", *engines]:
        zoo = Zoo(engine=engine, device="cpu", timeout=None)
        names = [n for n in REQUEST_ARCHS if n in zoo.entries]
        for n in names:
            zoo.predictor(n)
        times = []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            for n in names:
                zoo.predict(n, images[0], shared=None, timeout=None)
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        out.append({"engine": engine, "models": names, "total_ms": times[len(times) // 2], "image": described,
                    "engines_used": {n: f"{zoo.predictor(n).engine} {zoo.predictor(n).engine_precision}" for n in names}})
    return out


def engines_to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Engines at {result['size'][0]}x{result['size'][1]}, {machine_line(m)}, ISA {m['isa']}, native bf16: {'yes' if m['bf16'] else 'no'}. "
        "Ratios against torch eager fp32 (= 1.00x), timed interleaved in one process; labels = pixels equal to fp32 eager's (mean, worst image).",
        "",
        "| checkpoint | engine | precision | p50 (ms) | ratio | labels | parity | first call at a new size | chosen |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for row in result["rows"]:
        for c in row["candidates"]:
            name = f"{c['engine']} {c['precision']}"
            if "error" in c:
                lines.append(f"| {row['checkpoint']} | {c['engine']} | {c['precision']} | - | - | - | - | {c['error'][:80]} | |")
                continue
            agree = c.get("label_agreement") or [0.0]
            new = c.get("new_size")
            new_s = f"{new['first_call_ms']:.0f} ms at {new['size'][0]}x{new['size'][1]} (then {new['second_call_ms']:.0f})" if new else ""
            chosen = "**auto**" if name == row["chosen"] else ""
            lines.append(f"| {row['checkpoint']} | {c['engine']} | {c['precision']} | {c['latency_ms']:.0f} | {c['ratio']:.2f}x | "
                         f"{100 * sum(agree) / len(agree):.2f}% / {100 * min(agree):.2f}% | {'yes' if c.get('parity') else 'no'} | {new_s} | {chosen} |")
    lines += ["", "Why each choice:", ""] + [f"- `{r['checkpoint']}`: {r['reason']}" for r in result["rows"]]
    if result.get("request"):
        lines += ["", "The app's seven classic networks on one image, in process (decode, normalise, forward, labels; median):", "",
                  "| engine | total (ms) | engines used |", "| --- | ---: | --- |"]
        for r in result["request"]:
            lines.append(f"| {r['engine']} | {r['total_ms']:.0f} | {', '.join(f'{k}: {v}' for k, v in r['engines_used'].items())} |")
    return "\n".join(lines)


def cmd_engines(args) -> int:
    """``workbench engines CHECKPOINT...``: the engine each checkpoint runs on here, and why."""
    for path in args.checkpoints:
        pred = Predictor(path, args.device, engine=args.engine)
        print(f"{path}: {pred.engine} {pred.engine_precision}\n  {pred.engine_reason}")
    return 0


def run_architecture_bench(name: str = "unet", *, size=(360, 480), repeats: int = 10) -> dict:
    """One architecture (random weights) through torch eager, the fast path, torch.compile and ONNX Runtime: the
    first engine study (benchmarks/engines_cpu.json), kept for torch.compile's compile and new-size costs.

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


def architecture_engines_to_markdown(result: dict) -> str:
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

