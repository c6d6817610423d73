"""The training queues in scripts/ hold the recipes behind the shipped checkpoints: each queued run must be a
valid `workbench train` command (flags, values, architecture, model kwargs) and each --init-from start must
fit its run, or a queue fails hours into a CPU session. The shell queues are read through DRY_RUN=1."""

import argparse
import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from workbench.checkpoint import read_manifest
from workbench.losses import parse_loss
from workbench.registry import create_model
from workbench.train import _init_weights, build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ["train_zoo.sh", "train_upsampling.sh", "finetune_lovasz.sh"]


def _dry_run(script: str, tmp_path: Path) -> list[list[str]]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), str(tmp_path / "runs")], env={**os.environ, "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [shlex.split(line)[1:] for line in out.splitlines() if line.startswith("train ")]


def _gpu_driver_commands() -> list[list[str]]:
    spec = importlib.util.spec_from_file_location("train_zoo_gpu", ROOT / "scripts" / "train_zoo_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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
        _init_weights(model, str(ROOT / cfg.init_from))  # same architecture and kwargs, weights load strictly
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
