"""Training runs lose nothing: kills at any moment (also while checkpoints are written) and a full disk."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMON = [
    "--arch", "unet", "--encoder", "test_resnet", "--dataset", "synthetic",
    "--dataset-options", json.dumps({"length": 16, "size": [64, 64]}),
    "--crop", "64", "64", "--batch-size", "4", "--workers", "0", "--precision", "fp32",
    "--val-every", "1", "--val-limit", "2", "--no-cache", "--warmup-steps", "2",
]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _train(out: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", "train", *COMMON, "--out", str(out), *extra], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def _all_outputs_loadable(out: Path) -> None:
    """Every checkpoint and state file in the run folder is complete: no truncated file ever replaces a good one."""
    import workbench
    from workbench.io.state import load_state

    if (out / "resume.safetensors").exists():
        load_state(out / "resume.safetensors")
    for name in ("best", "last"):
        if (out / f"{name}.json").exists():
            workbench.load_checkpoint(out / f"{name}.json")
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers or all(p.startswith(".") for p in leftovers)  # only in-flight temp files, never in place of a real one


def _wait_for_progress(proc: subprocess.Popen, state: Path, timeout: float = 120.0) -> bool:
    """Block until the run writes a new resume state (it is importing, loading and training before that).

    Kills are timed from observed progress, not from wall-clock guesses, so the test means the same on a slow laptop
    and a fast CI machine. Returns False when the process exited first."""
    before = state.stat().st_mtime_ns if state.exists() else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if state.exists() and state.stat().st_mtime_ns != before:
            return True
        time.sleep(0.01)
    raise AssertionError("the training run made no progress within the timeout")


@pytest.mark.slow
def test_random_sigkills_including_during_checkpoint_writes_never_corrupt_a_run(tmp_path):
    out = tmp_path / "run"
    rng = random.Random(0)
    epochs = "8"
    kills = 0
    for attempt in range(6):  # saving every step, so many kills land inside a write
        args = [sys.executable, "-m", "workbench", "train", *COMMON, "--epochs", epochs, "--save-every-steps", "1", "--out", str(out)]
        if (out / "resume.safetensors").exists():
            args.append("--resume")
        proc = subprocess.Popen(args, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not _wait_for_progress(proc, out / "resume.safetensors"):
            break
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in the next step or its checkpoint write
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        _all_outputs_loadable(out)
    assert kills >= 3, "the run finished too quickly to be killed"
    res = _train(out, "--epochs", epochs, "--save-every-steps", "1", "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    _all_outputs_loadable(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 8 and summary["steps"] == 32  # 16 images / batch 4 = 4 steps per epoch
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))  # each epoch logged once, however often it was interrupted


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_full_disk_fails_clearly_and_keeps_the_last_good_state(tmp_path):
    """Simulated disk full (RLIMIT_FSIZE): the run stops with a clear message; the previous state stays intact and resumable."""
    from workbench.io.state import load_state

    out = tmp_path / "run"
    first = _train(out, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "resume.safetensors").read_bytes()
    size = len(before)
    full = _train(out, "--epochs", "2", "--resume", preexec_fn=_limit_file_size(size // 2))
    assert full.returncode != 0
    assert "error:" in full.stderr and ("File too large" in full.stderr or "No space" in full.stderr), full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert (out / "resume.safetensors").read_bytes() == before  # the good state was not replaced by a partial one
    assert load_state(out / "resume.safetensors")["epoch"] == 1
    _all_outputs_loadable(out)
    again = _train(out, "--epochs", "2", "--resume")  # space is back: the run continues
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_state(out / "resume.safetensors")["epoch"] == 2
