"""The training queues in scripts/ hold the recipes behind the shipped checkpoints: each queued run must be a
valid `workbench train` command (flags, values, architecture, model kwargs) and each --init-from start must
fit its run, or a queue fails hours into a CPU session. The shell queues are read through DRY_RUN=1."""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from workbench.io.checkpoint import read_manifest
from workbench.training.losses import parse_loss
from workbench.models.registry import create_model
from workbench.training.config import build_parser, config_from_args
from workbench.training.finetune import init_weights

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ["train_zoo.sh", "train_upsampling.sh", "finetune_lovasz.sh"]


def _dry_run(script: str, tmp_path: Path) -> list[list[str]]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), str(tmp_path / "runs")], env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [shlex.split(line)[1:] for line in out.splitlines() if line.startswith("train ")]


def _gpu_driver():
    spec = importlib.util.spec_from_file_location("train_zoo_gpu", ROOT / "scripts" / "train_zoo_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gpu_driver_commands() -> list[list[str]]:
    mod = _gpu_driver()
    return [[*mod.RECIPE, *job, "--epochs", "2", "--out", f"runs/gpu/camvid_{name}"] for name, job in mod.JOBS.items()]


def _check(argv: list[str]) -> None:
    args = build_parser(argparse.ArgumentParser(exit_on_error=False)).parse_args(argv)
    cfg = config_from_args(args)
    cfg.validate()
    parse_loss(cfg.loss)
    if cfg.init_from:
        manifest = read_manifest(ROOT / cfg.init_from)
        kw = manifest["kwargs"]
        model = create_model(cfg.arch, num_classes=kw["num_classes"], in_chans=kw["in_chans"], encoder=cfg.encoder, upsample=cfg.upsample, **cfg.model_kwargs)
        init_weights(model, str(ROOT / cfg.init_from))  # same architecture and kwargs, weights load strictly
    else:
        create_model(cfg.arch, num_classes=11, encoder=cfg.encoder, upsample=cfg.upsample, **cfg.model_kwargs)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.sh")))
def test_every_shell_script_parses(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", QUEUES)
def test_every_queued_run_is_a_valid_train_command(script, tmp_path):
    commands = _dry_run(script, tmp_path)
    assert commands, f"DRY_RUN=1 bash scripts/{script} listed no runs"
    for argv in commands:
        try:
            _check(argv)
        except Exception as exc:  # name the run that broke
            raise AssertionError(f"scripts/{script}: {shlex.join(argv)}: {exc}") from exc


def test_the_lovasz_round_fine_tunes_each_shipped_camvid_checkpoint_it_names(tmp_path):
    commands = _dry_run("finetune_lovasz.sh", tmp_path)
    starts = [argv[argv.index("--init-from") + 1] for argv in commands]
    assert starts and all((ROOT / s).is_file() for s in starts)
    assert len(set(starts)) == len(starts)


def test_a_dry_run_trains_nothing(tmp_path):
    _dry_run("finetune_lovasz.sh", tmp_path)
    assert not any((tmp_path / "runs").rglob("*.log"))


def test_every_gpu_driver_job_is_a_valid_train_command():
    for argv in _gpu_driver_commands():
        _check(argv)


def test_the_check_catches_a_wrong_flag_and_a_mismatched_start():
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        _check(["--arch", "unet", "--learning-rate", "1e-3"])
    with pytest.raises(ValueError, match="is a 'unet', this run trains 'fcn8s'"):
        _check(["--arch", "fcn8s", "--init-from", "checkpoints/camvid_unet.json"])


# --------------------------------------------------------------------- the GPU driver over several calls

# a synthetic job small enough to train here in seconds, through the driver's real `workbench train` calls
TINY_RECIPE = ["--dataset", "synthetic", "--dataset-options", '{"length": 16, "size": [64, 64]}', "--crop", "64", "64",
               "--batch-size", "4", "--workers", "0", "--precision", "fp32", "--val-limit", "4", "--no-cache",
               "--data-on-device", "off"]
TINY_JOB = ["--arch", "unet", "--encoder", "test_resnet", "--lr", "3e-3", "--warmup-steps", "2"]


class _FakeProcess:
    def wait(self) -> int:
        return 0


def _fake_driver(monkeypatch, epoch_s: float = 2.0):
    """The driver with `workbench train` replaced by a recorder; calibration runs leave their epoch times."""
    mod = _gpu_driver()
    calls = []

    def fake_train(name, runs, extra, threads, timeout=None):
        calls.append({"name": name, "runs": runs, "extra": extra, "timeout": timeout})
        run = runs / f"camvid_{name}"
        run.mkdir(parents=True, exist_ok=True)
        if runs.name == "_calibration":
            (run / "metrics.jsonl").write_text("".join(f'{{"epoch": {e}, "epoch_time_s": {epoch_s}}}\n' for e in (1, 2)))
            (run / "resume.safetensors").write_bytes(b"state")
        return _FakeProcess()

    monkeypatch.setattr(mod, "_train", fake_train)
    return mod, calls


def _resumable_run(run: Path, epochs: int) -> None:
    """What a call cut off mid-schedule leaves: a resume state and the run's config."""
    run.mkdir(parents=True)
    (run / "resume.safetensors").write_bytes(b"state")
    (run / "config.yaml").write_text(f"arch: tiramisu\nepochs: {epochs}\n")


def _run_driver(mod, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr("sys.argv", ["train_zoo_gpu.py", *argv])
    mod.main()


def test_the_gpu_driver_plans_epochs_for_the_plan_budget_and_drops_its_calibration(monkeypatch, tmp_path):
    mod, calls = _fake_driver(monkeypatch, epoch_s=2.0)
    _run_driver(mod, monkeypatch, "--budget", "500", "--jobs", "tiramisu_lovasz", "--runs", str(tmp_path))
    one_call = int(calls[-1]["extra"][calls[-1]["extra"].index("--epochs") + 1])
    calls.clear()
    _run_driver(mod, monkeypatch, "--budget", "500", "--plan-budget", "1500", "--jobs", "tiramisu_lovasz", "--runs", str(tmp_path / "b"))
    train = calls[-1]
    planned = int(train["extra"][train["extra"].index("--epochs") + 1])
    assert planned > 2.5 * one_call  # the epochs fill 1500 s of training, not the 500 s of this call
    assert train["timeout"] < 500 and "--resume" not in train["extra"]  # this call still ends inside --budget
    assert not (tmp_path / "b" / "_calibration").exists()  # its resume states must not travel to the next call


def test_a_later_gpu_call_resumes_each_run_with_its_planned_epochs(monkeypatch, tmp_path):
    mod, calls = _fake_driver(monkeypatch)
    _resumable_run(tmp_path / "camvid_tiramisu_lovasz", epochs=310)
    _run_driver(mod, monkeypatch, "--budget", "480", "--plan-budget", "1500", "--jobs", "tiramisu_lovasz", "--runs", str(tmp_path))
    assert len(calls) == 1  # no calibration
    extra = calls[0]["extra"]
    assert "--resume" in extra and extra[extra.index("--epochs") + 1] == "310"
    assert calls[0]["timeout"] <= 480 - 30


def test_the_gpu_driver_refuses_to_resume_only_some_of_its_jobs(monkeypatch, tmp_path):
    mod, _ = _fake_driver(monkeypatch)
    _resumable_run(tmp_path / "camvid_tiramisu_lovasz", epochs=310)
    with pytest.raises(SystemExit, match="resume state for some of the jobs only"):
        _run_driver(mod, monkeypatch, "--budget", "480", "--jobs", "tiramisu_lovasz", "unet", "--runs", str(tmp_path))


@pytest.mark.slow
def test_a_gpu_run_cut_off_by_its_call_continues_in_the_next(monkeypatch, tmp_path):
    """The real thing, on the CPU: a run stopped after its first epoch (what the call's time limit does) is
    continued by the next driver call through `workbench train --resume`, and its best checkpoint exported."""
    from workbench.training.trainer import Trainer

    mod = _gpu_driver()
    monkeypatch.setattr(mod, "RECIPE", TINY_RECIPE)
    monkeypatch.setattr(mod, "JOBS", {"tiny": TINY_JOB})
    runs = tmp_path / "runs"
    runs.mkdir()
    argv = [*TINY_RECIPE, *TINY_JOB, "--epochs", "2", "--val-every", "1", "--out", str(runs / "camvid_tiny")]
    cut = Trainer(config_from_args(build_parser().parse_args(argv)), command="first call")
    cut.fit(stop_after_epoch=1)  # the first call's time ran out here
    cut.close()
    monkeypatch.chdir(ROOT)  # the driver runs `python -m workbench` from the repository root
    _run_driver(mod, monkeypatch, "--budget", "300", "--plan-budget", "600", "--jobs", "tiny", "--runs", str(runs),
                "--val-every", "1", "--export", str(tmp_path / "ckpt"))
    log = (runs / "camvid_tiny.log").read_text()
    assert "resumed" in log and "at epoch 1" in log, log[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (runs / "camvid_tiny" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert (tmp_path / "ckpt" / "camvid_tiny.json").is_file()
