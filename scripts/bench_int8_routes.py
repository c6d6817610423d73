"""Compare the two int8 routes on shipped checkpoints: NNCF + OpenVINO against ONNX Runtime's quantize_static.

Both are calibrated on the same CamVid train images (full 360x480, normalised as the manifest says); latency at
360x480 is measured in one process, the engines interleaved round by round, as ratios against torch eager
fp32; labels are compared with fp32 eager on a few val images.

    python scripts/bench_int8_routes.py --ckpt camvid_unet camvid_tiramisu --calib 128 --out benchmarks/int8_cpu_avx2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from workbench.inference.int8 import compile_openvino, to_openvino
from workbench.inference.quantize import calibration_files, normalised_batches, quantize_openvino
from workbench.io.checkpoint import load_checkpoint
from workbench.paths import checkpoints_dir
from workbench.system.machine import machine_description


class Reader(CalibrationDataReader):
    def __init__(self, arrays):
        self.it = iter([{"image": a} for a in arrays])

    def get_next(self):
        return next(self.it, None)


def export_onnx_plain(model, path: Path) -> None:
    x = torch.zeros(1, 3, 360, 480)
    # static 360x480: ORT's symbolic shape inference (quant_pre_process) fails on the dynamic pad arithmetic
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], opset_version=18, dynamo=False)


def ort_session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", nargs="+", default=["camvid_unet", "camvid_tiramisu"])
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--val-images", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--performance-preset", action="store_true", help="also NNCF's symmetric PERFORMANCE preset (another calibration pass)")
    ap.add_argument("--shared-cores", action="store_true", help="record that the cores were shared with other work")
    ap.add_argument("--out", default="benchmarks/int8_cpu_avx2")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": machine_description(), "calibration": {"split": "train", "images": args.calib, "seed": 0, "resolution": "360x480"},
               "protocol": f"latency: one 360x480 image, {args.rounds} rounds, each round runs every engine once in turn (interleaved, one process), median; "
                           f"agreement: labels vs torch eager fp32 on the first {args.val_images} CamVid val images",
               "shared_cores": bool(args.shared_cores), "checkpoints": {}}
    tmp = Path(tempfile.mkdtemp())
    for name in args.ckpt:
        path = checkpoints_dir() / f"{name}.json"
        model, man = load_checkpoint(path)
        model = model.float().eval()
        norm = man.normalization
        calib = list(normalised_batches(calibration_files(n=args.calib), norm["mean"], norm["std"]))
        val = list(normalised_batches(calibration_files(split="val", n=10**6)[: args.val_images], norm["mean"], norm["std"]))
        row: dict = {}
        # --- ONNX Runtime fp32 and quantize_static int8 (QDQ, per-channel)
        fp32_onnx = tmp / f"{name}.onnx"
        export_onnx_plain(model, fp32_onnx)
        pre = tmp / f"{name}.pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        q_onnx = tmp / f"{name}.int8.onnx"
        t0 = time.perf_counter()
        quantize_static(str(pre), str(q_onnx), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        row["ort_int8_quantize_s"] = round(time.perf_counter() - t0, 1)
        sessions = {"onnxruntime_fp32": ort_session(fp32_onnx, args.threads), "onnxruntime_int8": ort_session(q_onnx, args.threads)}
        # --- OpenVINO fp32 and NNCF int8 (variants)
        ov_fp32 = to_openvino(model)
        engines = {"openvino_fp32": compile_openvino(ov_fp32, threads=args.threads)}
        variants = {"nncf_mixed_fbc": dict(preset="mixed", fast_bias_correction=True)}
        if args.performance_preset:
            variants["nncf_performance_fbc"] = dict(preset="performance", fast_bias_correction=True)
        for label, opts in variants.items():
            t0 = time.perf_counter()
            q = quantize_openvino(to_openvino(model), calib, **opts)
            row[f"{label}_quantize_s"] = round(time.perf_counter() - t0, 1)
            engines[label] = compile_openvino(q, threads=args.threads)

        def run(kind, x):
            if kind == "torch_eager_fp32":
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).numpy()
            if kind in sessions:
                return sessions[kind].run(None, {"image": x})[0]
            return engines[kind]({0: x})[0]

        kinds = ["torch_eager_fp32", *engines, *sessions]
        # agreement vs eager
        agree = {k: [] for k in kinds}
        for x in val:
            ref = run("torch_eager_fp32", x).argmax(1)
            for k in kinds:
                agree[k].append(float((run(k, x).argmax(1) == ref).mean()))
        # interleaved latency
        x = val[0]
        for k in kinds:
            run(k, x)
            run(k, x)
        times = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                t0 = time.perf_counter()
                run(k, x)
                times[k].append((time.perf_counter() - t0) * 1e3)
        base = statistics.median(times["torch_eager_fp32"])
        for k in kinds:
            med = statistics.median(times[k])
            row[k] = {"ms": round(med, 1), "speedup_vs_eager": round(base / med, 2), "mean_agreement": round(statistics.fmean(agree[k]), 5),
                      "worst_agreement": round(min(agree[k]), 5)}
        results["checkpoints"][name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", out.with_suffix(".json"))


if __name__ == "__main__":
    main()
