"""Which NNCF options keep int8 labels closest to fp32: each variant quantizes a shipped checkpoint on the same
CamVid train images, then its labels are compared with torch eager fp32 on CamVid val images (not test: the
test split judges the shipped models, so the options are chosen without it) and its latency is measured
against OpenVINO fp32, interleaved round by round in one process.

    WORKBENCH_ALLOCATOR=system python scripts/bench_int8_options.py --ckpt camvid_unet camvid_tiramisu \\
        --variants default head head_first fbc_off performance --calib 32 --out benchmarks/int8_options_cpu_avx512

The variants (see workbench/inference/quantize.py, ``QUANTIZE_VARIANTS``) are NNCF's own options; "head" keeps
the layers that write the logits (and the upsampling after them) in fp32 through ``nncf.IgnoredScope``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from workbench.inference.int8 import compile_openvino, to_openvino
from workbench.inference.quantize import QUANTIZE_VARIANTS, calibration_files, float_layers, fp32_scope, normalised_batches, quantize_openvino
from workbench.io.checkpoint import load_checkpoint
from workbench.paths import checkpoints_dir
from workbench.system.machine import machine_description


def agreement(compiled, inputs, refs) -> list[float]:
    req = compiled.create_infer_request()
    out = []
    for x, ref in zip(inputs, refs):
        req.infer({0: x})
        out.append(float((req.get_output_tensor(0).data[0].argmax(0) == ref).mean()))
    return out


def latency(fns: dict, x, rounds: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            times[k].append(1000 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def write_markdown(results: dict, path: Path) -> None:
    """The JSON as a table per checkpoint (the .md beside it)."""
    m = results["machine"]
    lines = [
        f"# NNCF options for int8 label agreement, {m.get('cpu')} {m.get('isa')} (bf16 {m.get('bf16')}, {m.get('threads')} threads)",
        "",
        f"Machine: {json.dumps(m)}",
        "",
        f"Protocol: {results['protocol']}. **The two cores were shared with other work**: the latency ratios are noisy "
        "(int8 vs OpenVINO fp32 measured back to back in each round); the agreement figures are exact. Parity: mean "
        ">= 99.5% and worst image >= 98.5% (workbench/inference/parity_rule.py).",
        "",
        "Variants (workbench/inference/quantize.py, `QUANTIZE_VARIANTS`): `default` NNCF's MIXED preset with fast bias "
        "correction; `first` keeps the layers reading the image in fp32 (`nncf.IgnoredScope`); `head` the layers writing "
        "the logits; `head_first` both; `fbc_off` full bias correction; `performance` the symmetric preset; `overflow_off` "
        "8-bit weights in the first layer too (VNNI CPUs); `smoothquant` SmoothQuant alpha 0.15 on convolutions; "
        "`accuracy_control` `nncf.quantize_with_accuracy_control`, reverting layers to fp32 until the labels agree with "
        "fp32 eager on 8 other val images within 0.3 points of the parity bar.",
        "",
    ]
    for name, rows in results["checkpoints"].items():
        lines += [f"## {name}", "", "| variant @ calibration images | layers kept fp32 | labels = fp32 eager, mean | worst image | parity | int8 speed-up vs OpenVINO fp32 | quantize s |", "| --- | ---: | ---: | ---: | --- | ---: | ---: |"]
        for key, r in rows.items():
            if key == "openvino_fp32":
                continue
            if "error" in r:
                lines.append(f"| {key} | - | - | - | error: {r['error'][:80]} | - | - |")
                continue
            kept = r.get("float_layers", r["fp32_layers"] if r.get("variant") != "accuracy_control" else "chosen by NNCF")
            lines.append(f"| {key} | {kept} | {100 * r['agreement_mean']:.2f}% | {100 * r['agreement_worst']:.2f}% | {'yes' if r['parity'] else 'no'} | {r['speedup_vs_openvino_fp32']:.2f}x | {r['quantize_s']:.0f} |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", nargs="+", default=["camvid_unet", "camvid_tiramisu"])
    ap.add_argument("--variants", nargs="+", default=list(QUANTIZE_VARIANTS))
    ap.add_argument("--calib", type=int, nargs="+", default=[32], help="calibration image counts to try (each variant at each)")
    ap.add_argument("--val-images", type=int, default=12, help="CamVid val images, evenly spaced over the split")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/int8_options_cpu_avx512")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out_json = Path(args.out + ".json")
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results.update({"machine": machine_description(), "protocol": (
        f"labels vs torch eager fp32 on {args.val_images} CamVid val images (evenly spaced, full 360x480); latency: one 360x480 "
        f"image, {args.rounds} rounds interleaved with OpenVINO fp32 in one process ({args.threads} threads), median; "
        "calibration: CamVid train images drawn with seed 0, full resolution"), "shared_cores": True})
    results.setdefault("checkpoints", {})
    for name in args.ckpt:
        model, man = load_checkpoint(checkpoints_dir() / f"{name}.json")
        model = model.float().eval()
        norm = man.normalization
        val_files = calibration_files(split="val", n=10**6)
        step = max(1, len(val_files) // args.val_images)
        val = list(normalised_batches(val_files[::step][: args.val_images], norm["mean"], norm["std"]))
        with torch.inference_mode():
            refs = [model(torch.from_numpy(x))[0].argmax(0).numpy() for x in val]
            # accuracy control validates on other val images (half a step further) than those measured here
            ac_val = list(normalised_batches(val_files[step // 2 :: step][:8], norm["mean"], norm["std"]))
            ac_pairs = [(x, model(torch.from_numpy(x))[0].argmax(0).numpy()) for x in ac_val]
        fp32 = to_openvino(model)
        fp32_c = compile_openvino(fp32, threads=args.threads)
        rows = results["checkpoints"].setdefault(name, {})
        rows["openvino_fp32"] = {"agreement_mean": float(np.mean(agreement(fp32_c, val, refs)))}
        for n in args.calib:
            calib = list(normalised_batches(calibration_files(n=n), norm["mean"], norm["std"]))
            for variant in args.variants:
                key = f"{variant}@{n}"
                t0 = time.perf_counter()
                try:
                    q = quantize_openvino(to_openvino(model), calib, variant=variant, validation=ac_pairs)
                except Exception as exc:  # noqa: BLE001 - a variant NNCF refuses is a result too
                    rows[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                    print(name, key, rows[key], flush=True)
                    continue
                qs = time.perf_counter() - t0
                qc = compile_openvino(q, threads=args.threads)
                agree = agreement(qc, val, refs)
                lat = latency({"fp32": lambda x: fp32_c({0: x}), "int8": lambda x: qc({0: x})}, val[0], args.rounds)
                rows[key] = {
                    "variant": variant, "calib_images": n, "options": QUANTIZE_VARIANTS[variant],
                    "fp32_layers": len(fp32_scope(to_openvino(model), QUANTIZE_VARIANTS[variant].get("fp32_layers", ()))),
                    "float_layers": len(float_layers(q)),
                    "agreement_mean": float(np.mean(agree)), "agreement_worst": float(np.min(agree)),
                    "parity": bool(np.mean(agree) >= 0.995 and np.min(agree) >= 0.985),
                    "speedup_vs_openvino_fp32": lat["fp32"] / lat["int8"], "int8_ms": lat["int8"], "fp32_ms": lat["fp32"],
                    "quantize_s": round(qs, 1),
                }
                print(name, key, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[key].items() if k != "options"}, flush=True)
                out_json.write_text(json.dumps(results, indent=1) + "\n")
    out_json.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, out_json.with_suffix(".md"))
    print("wrote", out_json, "and", out_json.with_suffix(".md"))


if __name__ == "__main__":
    main()
