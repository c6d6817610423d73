"""The shipped int8 models against PyTorch on this CPU: latency at 360x480 as ratios to torch eager fp32, measured
interleaved round by round in one process, beside each checkpoint's recorded test mIoU and label agreement
(``inference.int8`` in its manifest, written by ``workbench quantize``).

    WORKBENCH_ALLOCATOR=system python scripts/bench_int8_zoo.py --rounds 10 --out benchmarks/int8_cpu_avx512

Rows: torch eager fp32 (the reference, 1.00x), torch eager bf16 (autocast; only on CPUs with native bf16),
OpenVINO fp32 (the same graph as int8, f32 inference precision) and OpenVINO int8 (the shipped IR,
sha256-verified). Checkpoints without an int8 entry are skipped; refused ones are listed with their figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from workbench.evaluation.leaderboard import app_precision
from workbench.inference.int8 import compile_openvino, load_int8, to_openvino
from workbench.inference.quantize import calibration_files, normalised_batches
from workbench.io.checkpoint import load_checkpoint
from workbench.io.manifest import Manifest
from workbench.paths import checkpoints_dir
from workbench.system.machine import machine_description


def write_markdown(out: dict, path: Path) -> None:
    m = out["machine"]
    lines = [
        f"# Shipped int8 models on a {m.get('threads')}-thread {m.get('cpu')} {m.get('isa')} CPU (native bf16: {m.get('bf16')})",
        "",
        f"Machine: {json.dumps(m)}",
        "",
        f"Protocol: {out['protocol']}."
        + (" **The two cores were shared with other work while measuring**: absolute times are inflated; the ratios were measured interleaved." if out.get("shared_cores") else ""),
        "",
        "Accepted: test mIoU at most 0.5 points below fp32. The app runs int8 only where its labels also pass the parity bar "
        "(99.5% of pixels, 98.5% on every image, against torch eager fp32).",
        "",
        "| checkpoint | fp32 mIoU | int8 mIoU | drop | accepted | labels = fp32 (mean / worst, test) | IR MiB | eager bf16 | OpenVINO fp32 | OpenVINO int8 | app runs |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in out["checkpoints"].items():
        a = r.get("test_label_agreement") or {}
        sp = r.get("speedup_vs_eager_fp32") or {}
        fmt = lambda k: f"{sp[k]:.2f}x" if k in sp else "-"  # noqa: E731
        agree = f"{100 * a['mean']:.2f}% / {100 * a['worst']:.2f}%" if a.get("mean") is not None else "-"
        miou = lambda v: f"{100 * v:.2f}" if v is not None else "-"  # noqa: E731
        lines.append(
            f"| {name} | {miou(r.get('fp32_test_miou'))} | {miou(r.get('test_miou'))} | {r.get('miou_drop_points')} | {'yes' if r.get('accepted') else 'no'} | {agree} | "
            f"{(r.get('bytes') or 0) / 2**20:.1f} | {fmt('torch eager bf16')} | {fmt('openvino fp32')} | {fmt('openvino int8')} | {r.get('app_runs')} |"
        )
    lines += ["", "Speed-ups are against torch eager fp32 (1.00x); `-`: not timed (refused int8 models are not shipped).", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", nargs="*", default=None, help="checkpoint names (default: every camvid_*.json that is not an upsampling-lab variant)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared-cores", action="store_true", help="record that the cores were shared with other work")
    ap.add_argument("--out", default="benchmarks/int8_cpu_avx512")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_description()
    bf16 = bool(machine.get("bf16"))
    names = args.ckpt or sorted(p.stem for p in checkpoints_dir().glob("camvid_*.json") if not Manifest.read(p).get("upsampling_lab"))
    test_image = calibration_files(split="test", n=1)
    out = {"machine": machine, "shared_cores": bool(args.shared_cores), "protocol": (
        f"latency: one CamVid test image (360x480), {args.rounds} rounds, each round runs every row once in turn "
        f"(interleaved, one process, {args.threads} threads), median; ratios to torch eager fp32 of the same round set. "
        "mIoU and label agreement: the manifest's inference.int8 (workbench quantize: 233 test images; agreement with "
        "fp32 eager on every 4th or 8th)"), "checkpoints": {}}
    previous = Path(args.out + ".json")
    if previous.is_file():  # checkpoints measured by an earlier run stay (the machine and protocol must match)
        old = json.loads(previous.read_text())
        if old.get("machine", {}).get("isa") == machine.get("isa"):
            out["checkpoints"].update(old.get("checkpoints", {}))
    for name in names:
        path = checkpoints_dir() / f"{name}.json"
        man = Manifest.read(path)
        entry = (man.get("inference") or {}).get("int8")
        if not entry:
            print(f"{name}: no int8 entry, skipped", flush=True)
            continue
        row = {k: entry.get(k) for k in ("accepted", "reason", "test_miou", "fp32_test_miou", "miou_drop_points", "test_label_agreement", "bytes", "calibration", "method", "fp32_layers")}
        row["app_runs"], row["app_reason"] = app_precision(man)
        if not entry.get("accepted"):
            out["checkpoints"][name] = row
            print(f"{name}: refused ({entry.get('reason')})", flush=True)
            continue
        model, manifest = load_checkpoint(path)
        model = model.float().eval()
        norm = manifest.normalization
        x = torch.from_numpy(next(iter(normalised_batches(test_image, norm["mean"], norm["std"]))))
        ov32 = compile_openvino(to_openvino(model, manifest.in_chans), threads=args.threads)
        int8 = load_int8(path, threads=args.threads)

        def eager(x=x):
            with torch.inference_mode():
                return model(x)

        def eager_bf16(x=x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)

        runners = {"torch eager fp32": eager}
        if bf16:
            runners["torch eager bf16"] = eager_bf16
        runners["openvino fp32"] = lambda: ov32({0: x.numpy()})
        runners["openvino int8"] = lambda: int8(x)
        for f in runners.values():
            f()  # warm-up
        times = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, f in runners.items():
                t0 = time.perf_counter()
                f()
                times[k].append(1000 * (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        row["latency_ms"] = {k: round(v, 1) for k, v in med.items()}
        row["speedup_vs_eager_fp32"] = {k: round(med["torch eager fp32"] / v, 2) for k, v in med.items()}
        out["checkpoints"][name] = row
        print(name, row["speedup_vs_eager_fp32"], flush=True)
        Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    write_markdown(out, Path(args.out + ".md"))
    print("wrote", args.out + ".json and .md")


if __name__ == "__main__":
    main()
