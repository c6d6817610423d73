"""Train several zoo architectures at once on one GPU, within a wall-clock budget, with `workbench train`.

The GPU recipe: the CPU recipe of scripts/train_zoo.sh (AdamW 1e-3, poly, batch 8, median-frequency class
weights, random scale 0.5-2, flips, colour jitter) at full resolution (crops of 352x480, the largest
multiple of 32 inside CamVid's 360x480), with the training split kept on the GPU (--data-on-device).
Small models leave an H200 mostly idle, so the jobs run concurrently, one process each. The number of
epochs is chosen by measurement: every job first runs 2 epochs together with the others, the second
epoch's time gives the rate, and each job gets the epochs that fit the remaining budget (rounded down to
a multiple of the validation interval). Each run's manifest records the exact command, so a run is
reproduced with plain `workbench train` and that command, on any machine.

    python scripts/train_zoo_gpu.py --budget 540 --jobs residual_unet dilated --runs runs/gpu --export OUT

--export writes each run's best (val) checkpoint as fp16 safetensors + manifest into OUT; evaluate them on
the original test split with `workbench eval ... --split test --update-manifests` (scripts/publish_zoo.sh).

One schedule across several device calls (a call runs at most 10 minutes; a session has about 30): with
--plan-budget the epochs are planned for that many seconds of training in all, not for --budget, which then
only bounds this call. A later call with the same --runs finds each run's resume state and continues it
(`workbench train --resume`, same epochs and schedule) until --budget is spent, when the run gets SIGINT and
saves its resume state at the step it was in, so a call's end loses nothing. --plan-budget counts training only: leave
each call's start-up (about 30 s) and export out of it. scripts/gpu_session.sh carries the state between calls.

    python scripts/train_zoo_gpu.py --budget 540 --plan-budget 1000 --jobs tiramisu_lovasz --runs .gpurun   # every call
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = ["--dataset", "camvid", "--crop", "352", "480", "--scale", "0.5", "2.0", "--batch-size", "8",
          "--lr", "1e-3", "--class-weights", "median", "--workers", "1", "--data-on-device", "on",
          "--save-every-steps", "500"]
JOBS = {
    "fcn32s": ["--arch", "fcn32s"],
    "fcn16s": ["--arch", "fcn16s"],
    "fcn8s": ["--arch", "fcn8s"],
    "unet": ["--arch", "unet"],
    "residual_unet": ["--arch", "residual_unet"],
    "dilated": ["--arch", "dilated"],
    "deeplabv3plus": ["--arch", "deeplabv3plus"],
    "smp_unet": ["--arch", "smp_unet"],
    # FC-DenseNet is 4-6x slower per pixel than the others: 224x224 crops (the paper's training crops) buy it
    # ~2.5x the epochs in the same budget; it is still evaluated at full resolution
    "tiramisu": ["--arch", "tiramisu", "--model-kwargs", '{"variant": "fc_densenet56"}', "--crop", "224", "224"],
    # the recipe that took the CPU-trained Tiramisu furthest (docs/training-log.md, The Tiramisu: the fourth run): no class weights, the
    # Lovasz-softmax term and a weight average, here from scratch and at full resolution; the average warmed
    # up, so the random start does not hold it back for the first epochs (the CPU probe's val trailed the
    # trained weights by 14 points at epoch 4)
    "tiramisu_lovasz": ["--arch", "tiramisu", "--model-kwargs", '{"variant": "fc_densenet56"}', "--class-weights", "none",
                        "--loss", "ce+lovasz", "--ema-decay", "0.99", "--ema-warmup"],
}


def _train(name: str, runs: Path, extra: list[str], threads: int, timeout: float | None = None) -> subprocess.Popen:
    out = runs / f"camvid_{name}"
    cmd = [sys.executable, "-m", "workbench", "train", *RECIPE, *JOBS[name], *extra, "--out", str(out)]
    log = open(runs / f"camvid_{name}.log", "a")
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    if timeout is not None:
        cmd = ["timeout", "--signal=INT", "--kill-after=30", f"{int(timeout)}", *cmd]  # SIGINT: the run saves at its step
    # one process per job: split the host's cores between them (unsplit, every process's intra-op pool
    # takes all cores and the host side crawls)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _planned_epochs(run: Path) -> int | None:
    """The epochs of a run that can be resumed (its config.yaml), or None if ``run`` holds no resume state."""
    if not (run / "resume.safetensors").is_file():
        return None
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["epochs"])


def _epoch_times(run: Path) -> list[float]:
    if not (run / "metrics.jsonl").is_file():  # a run stopped before its first epoch ended
        return []
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r["epoch_time_s"] for r in rows if "epoch_time_s" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", nargs="+", required=True, choices=sorted(JOBS))
    p.add_argument("--budget", type=float, required=True, help="seconds for everything, calibration included")
    p.add_argument("--runs", type=Path, default=Path("runs/gpu"))
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--export", type=Path, default=None)
    p.add_argument("--plan-budget", type=float, default=None,
                   help="seconds of training to plan the epochs for, over several calls (default: --budget)")
    a = p.parse_args()
    t0 = time.monotonic()
    a.runs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(a.jobs))
    resumable = {n: _planned_epochs(a.runs / f"camvid_{n}") for n in a.jobs}
    if all(e is not None for e in resumable.values()):
        # a later call: continue every run's schedule for what this call has left
        print(f"resuming: {json.dumps(resumable)}", flush=True)
        procs = {n: _train(n, a.runs, ["--epochs", str(resumable[n]), "--val-every", str(a.val_every), "--resume"],
                           threads, timeout=a.budget - 30) for n in a.jobs}
        _finish(a, procs, t0)
        return
    if any(e is not None for e in resumable.values()):
        sys.exit(f"{a.runs} holds resume state for some of the jobs only ({resumable}): resume those alone, or use new --runs")
    calib = a.runs / "_calibration"
    calib.mkdir(exist_ok=True)
    procs = {n: _train(n, calib, ["--epochs", "2", "--val-every", "1000"], threads) for n in a.jobs}
    walls = {}
    for n, pr in procs.items():
        if pr.wait() != 0:
            sys.exit(f"calibration of {n} failed: see {calib}/camvid_{n}.log")
        walls[n] = time.monotonic() - t0
    spent = time.monotonic() - t0
    left = (a.budget if a.plan_budget is None else a.plan_budget) - spent - 60  # export, the last validation, slack
    plan = {}
    for n in a.jobs:
        times = _epoch_times(calib / f"camvid_{n}")
        # the calibration's wall time less its epochs: start-up (imports, data to the device, class
        # weights) plus one validation and the checkpoint writes; counted again for the real run, and
        # half of it again per validation (a conservative bound: the plan must end inside the budget,
        # a run stopped early never reaches the end of its learning-rate schedule)
        overhead = max(0.0, walls[n] - sum(times))
        per_epoch = times[-1] * 1.1 + 0.5 * overhead / a.val_every
        epochs = int((left - overhead) / per_epoch)
        epochs = max(a.val_every, min(a.max_epochs, epochs - epochs % a.val_every))
        plan[n] = {"epoch_s": round(times[-1], 2), "overhead_s": round(overhead, 1), "epochs": epochs}
    print(f"calibration took {spent:.0f} s; plan: {json.dumps(plan)}", flush=True)
    shutil.rmtree(calib)  # its resume states must not travel with the runs to the next call
    procs = {n: _train(n, a.runs, ["--epochs", str(plan[n]["epochs"]), "--val-every", str(a.val_every)],
                       threads, timeout=a.budget - (time.monotonic() - t0) - 30) for n in a.jobs}
    _finish(a, procs, t0)


def _finish(a: argparse.Namespace, procs: dict, t0: float) -> None:
    """Wait for the runs, report them, export each run's best checkpoint."""
    for n, pr in procs.items():
        rc = pr.wait()
        t = _epoch_times(a.runs / f"camvid_{n}")
        print(f"{n}: exit {rc}, {len(t)} epochs, {sum(t):.0f} s of epochs", flush=True)
    if a.export:
        a.export.mkdir(parents=True, exist_ok=True)
        for n in a.jobs:
            best = a.runs / f"camvid_{n}" / "best.json"
            if best.is_file():
                subprocess.run([sys.executable, "-m", "workbench", "export", str(best), str(a.export / f"camvid_{n}")])
    print(f"total {time.monotonic() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
