"""Training: learning on the synthetic set, exact resume after SIGKILL and after SIGINT/SIGTERM, 2-process DDP, config handling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.training.config import TrainConfig, build_parser, config_from_args  # noqa: E402
from workbench.training.schedules import lr_lambda  # noqa: E402
from workbench.training.trainer import Trainer, TrainingInterrupted, train  # noqa: E402

# A tiny but real recipe: U-Net on the smallest timm encoder, synthetic shapes, fp32 for exact comparisons.
BASE = dict(
    arch="unet",
    encoder="test_resnet",
    dataset="synthetic",
    dataset_options={"length": 32, "size": [64, 64]},
    crop=[64, 64],
    scale=[0.75, 1.25],
    batch_size=4,
    lr=3e-3,
    warmup_steps=5,
    workers=0,
    precision="fp32",
    val_every=1,
    val_limit=8,
    cache=False,
)


# The same recipe through the command line (3 epochs of 8 steps), for runs in a separate process.
CLI_RUN = ["--arch", "unet", "--encoder", "test_resnet", "--dataset", "synthetic", "--dataset-options", json.dumps({"length": 32, "size": [64, 64]}),
           "--crop", "64", "64", "--batch-size", "4", "--precision", "fp32", "--epochs", "3", "--val-every", "1", "--val-limit", "4",
           "--no-cache", "--warmup-steps", "5"]
CLI_ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _cfg(tmp_path, **over) -> TrainConfig:
    kw = dict(BASE, out=str(tmp_path / "run"))
    kw.update(over)
    return TrainConfig(**kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from workbench.io.state import load_state

    return load_state(run / "resume.safetensors")["model"]


@pytest.mark.slow
def test_training_lowers_loss_and_beats_chance(tmp_path):
    cfg = _cfg(tmp_path, epochs=6, lr=5e-3)
    summary = train(cfg, command="pytest")
    run = Path(cfg.out)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert rows[-1]["train_loss"] < 0.7 * rows[0]["train_loss"]
    from workbench.data.datasets import build_dataset

    chance = 1.0 / build_dataset("synthetic", "val", length=8).num_classes
    assert summary["best_val_miou"] > 1.5 * chance
    # outputs a user relies on
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "best.json", "best.safetensors", "last.json", "summary.json", "resume.safetensors"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "best.json").read_text())
    assert manifest["architecture"] == "unet" and manifest["training"]["command"] == "pytest"
    assert manifest["metrics"]["val"]["miou"] == pytest.approx(summary["best_val_miou"])
    import workbench

    model, _ = workbench.load_checkpoint(run / "best.json")  # fp16 on disk, loads as fp32
    assert next(model.parameters()).dtype == torch.float32


def test_existing_run_is_never_overwritten_without_resume(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, max_steps=2)
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, epochs=1, max_steps=2))


def test_resume_continues_where_it_stopped(tmp_path):
    """A run stopped after 1 epoch and resumed for 2 ends bit-identical to a 2-epoch run."""
    a = _cfg(tmp_path / "a", epochs=2)
    train(a)
    from workbench.training.trainer import Trainer

    Trainer(_cfg(tmp_path / "b", epochs=2)).fit(stop_after_epoch=1)
    b2 = _cfg(tmp_path / "b", epochs=2, resume=True)
    train(b2)
    wa, wb = _weights(Path(a.out)), _weights(Path(b2.out))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows = [json.loads(line) for line in (Path(b2.out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    """Kill -9 a training process at a random moment; --resume ends in the same state as a clean run."""
    common = [*CLI_RUN, "--workers", "0", "--save-every-steps", "3"]
    env = CLI_ENV
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "workbench", "train", *common, "--out", str(clean)], check=True, env=env, cwd=ROOT, timeout=600, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", *common, "--out", str(killed)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    from workbench.io.state import load_state

    while time.time() < deadline:  # wait until a mid-run resume point exists, then kill without warning
        state_file = killed / "resume.safetensors"
        if state_file.exists():
            try:
                if load_state(state_file)["global_step"] >= 9:
                    break
            except Exception:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_state(killed / "resume.safetensors")["global_step"] < 24, "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "workbench", "train", *common, "--out", str(killed), "--resume"], check=True, env=env, cwd=ROOT, timeout=600, capture_output=True)
    a, b = load_state(clean / "resume.safetensors"), load_state(killed / "resume.safetensors")
    assert a["global_step"] == b["global_step"] == 24
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    # checkpoints on disk are complete and loadable, never truncated
    import workbench

    workbench.load_checkpoint(killed / "best.json")
    workbench.load_checkpoint(killed / "last.json")


def test_a_stop_signal_ends_the_run_after_the_step_in_progress_and_resume_loses_nothing(tmp_path):
    clean = _cfg(tmp_path, epochs=2, out=str(tmp_path / "clean"))
    train(clean)
    stopped = _cfg(tmp_path, epochs=2, out=str(tmp_path / "stopped"))
    trainer = Trainer(stopped)
    trainer.stop_signal = signal.SIGTERM  # what the handler sets
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM: stopped after epoch 1's step 1/8 \(global step 1\).*--resume") as info:
        trainer.fit()
    trainer.close()
    assert info.value.signum == signal.SIGTERM
    from workbench.io.state import load_state

    assert load_state(Path(stopped.out) / "resume.safetensors")["global_step"] == 1  # saved at once, no periodic resume point needed
    assert not (Path(stopped.out) / "metrics.jsonl").exists()  # the unfinished epoch is not logged
    train(_cfg(tmp_path, epochs=2, out=stopped.out, resume=True))
    a, b = _weights(Path(clean.out)), _weights(Path(stopped.out))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_stop_signal_at_the_last_step_lets_the_run_finish(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, max_steps=2)
    trainer = Trainer(cfg)
    trainer.global_step = trainer.total_steps - 1  # the next step is the last one
    trainer.stop_signal = signal.SIGINT
    summary = trainer.fit()  # no TrainingInterrupted: the final validation and checkpoints still happen
    trainer.close()
    assert summary["steps"] == trainer.total_steps and (Path(cfg.out) / "best.json").is_file()


@pytest.mark.slow
def test_ctrl_c_saves_the_resume_state_and_exits_130(tmp_path):
    """A real SIGINT to `workbench train` between periodic resume points: it stops, saves, says how to continue."""
    common = [*CLI_RUN, "--workers", "1", "--out", str(tmp_path / "run")]  # a worker process too: Ctrl-C must not kill it
    env = CLI_ENV
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", *common], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from workbench.io.state import load_state

    state_file = tmp_path / "run" / "resume.safetensors"
    deadline = time.time() + 300
    while time.time() < deadline and not state_file.exists():  # the end of epoch 1 writes the first resume point
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted by SIGINT: stopped after epoch" in err and "--resume continues it" in err and "Traceback" not in err
    step = load_state(state_file)["global_step"]
    assert 8 < step < 24  # saved on the signal, past the periodic resume point of epoch 1's end
    done = subprocess.run([sys.executable, "-m", "workbench", "train", *common, "--resume"], env=env, cwd=ROOT, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_state(state_file)["global_step"] == 24


_PLAIN_PLUGIN = """
import torch.nn as nn
from workbench import register_architecture
from workbench.models.base import SegmentationModel


class Stack(nn.Module):
    def __init__(self, in_chans):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU())
        self.channels, self.reductions = [8], [1]

    def forward(self, x):
        return [self.net(x)]


class Last(nn.Module):
    def forward(self, feats, image):
        return feats[-1]


@register_architecture("plain_ddp_probe")
def plain_ddp_probe(*, num_classes, in_chans=3):
    return SegmentationModel(Stack(in_chans), Last(), nn.Conv2d(8, num_classes, 1), size_divisor=1)
"""


@pytest.mark.slow
def test_two_process_ddp_stays_in_sync_and_matches_single_process(tmp_path, isolated_registry, monkeypatch):
    """torchrun --nproc_per_node 2 on gloo: both ranks hold identical weights, equal to a 1-process run with the same global batch.

    The probe model has no BatchNorm (per-process batch statistics are the one thing
    that legitimately differs without SyncBatchNorm, which needs CUDA) and crops need
    no padding, so the two runs must agree to float rounding.
    """
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plain_ddp_probe.py").write_text(_PLAIN_PLUGIN)
    monkeypatch.setenv("WORKBENCH_PLUGIN_PATH", str(plugins))
    isolated_registry.load_plugins(reload=True)
    script = tmp_path / "ddp_probe.py"
    script.write_text(
        "import sys, json, torch, torch.distributed as dist\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from workbench.training.config import TrainConfig\n"
        "from workbench.training.trainer import Trainer\n"
        "cfg = TrainConfig(**json.loads(sys.argv[1]))\n"
        "t = Trainer(cfg)\n"
        "t.fit()\n"
        "flat = torch.cat([p.detach().flatten() for p in t.model.module.parameters()])\n"
        "gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]\n"
        "dist.all_gather(gathered, flat)\n"
        "if dist.get_rank() == 0:\n"
        "    open(sys.argv[2], 'w').write(json.dumps({'max_rank_diff': max((g - gathered[0]).abs().max().item() for g in gathered)}))\n"
        "t.close(); del t\n"  # as workbench.training.trainer.train does; without it 3 of 55 runs aborted at exit
        "from workbench.training.runtime import shutdown_distributed\n"
        "shutdown_distributed()\n"
    )
    recipe = dict(BASE, arch="plain_ddp_probe", encoder=None, scale=[1.0, 1.0], epochs=1, max_steps=6, optimizer="sgd", lr=0.05, warmup_steps=0, scheduler="constant", val_limit=2)
    ddp_cfg = dict(recipe, batch_size=2, out=str(tmp_path / "ddp"))
    env = dict(os.environ, OMP_NUM_THREADS="1", WORKBENCH_PLUGIN_PATH=str(plugins))
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), json.dumps(ddp_cfg), str(tmp_path / "probe.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["max_rank_diff"] == 0.0  # DDP keeps the replicas identical

    single = _cfg(tmp_path / "single", **dict(recipe, batch_size=4))
    train(single)
    w_ddp, w_single = _weights(Path(ddp_cfg["out"])), _weights(Path(single.out))
    from workbench import create_model

    torch.manual_seed(0)
    init = create_model("plain_ddp_probe", num_classes=w_single["head.weight"].shape[0]).state_dict()
    moved = sum(((w_single[k] - init[k]) ** 2).sum() for k in w_single).sqrt()
    diff = sum(((w_single[k] - w_ddp[k]) ** 2).sum() for k in w_single).sqrt()
    assert moved > 1e-3  # training really changed the weights
    assert diff < 1e-4 * moved, (float(diff), float(moved))  # same samples, order and augmentation: same result


def test_init_from_starts_from_a_checkpoint_and_records_it(tmp_path):
    from workbench.training.trainer import Trainer

    parent = _cfg(tmp_path / "parent", epochs=1, max_steps=3)
    train(parent, command="parent-command")
    start = tmp_path / "parent" / "run" / "best.json"
    child = Trainer(_cfg(tmp_path / "child", epochs=1, max_steps=2, init_from=str(start)), command="child-command")
    import workbench

    source, _ = workbench.load_checkpoint(start)
    got = child.model.state_dict()
    for k, v in source.state_dict().items():
        assert torch.equal(got[k].float(), v.float()), k  # the run starts from the checkpoint's weights
    fresh = Trainer(_cfg(tmp_path / "fresh", epochs=1, max_steps=2)).model.state_dict()
    assert any(not torch.equal(fresh[k], got[k]) for k in got if got[k].is_floating_point())
    child.fit()
    manifest = json.loads((tmp_path / "child" / "run" / "best.json").read_text())
    init = manifest["training"]["init_from"]
    assert init["checkpoint"] == "best.json" and init["training"]["command"] == "parent-command"
    assert init["weights_sha256"] == json.loads(start.read_text())["weights"]["sha256"]
    assert manifest["training"]["command"] == "child-command"


@pytest.mark.slow
def test_resumed_fine_tune_keeps_its_start_even_when_the_start_file_changed(tmp_path):
    """--resume takes weights and provenance from resume.safetensors, not from the --init-from file.

    The file may have been overwritten since (an export of this very run into checkpoints/) or removed;
    the resumed run must neither fail nor record the wrong start.
    """
    import shutil

    from workbench.training.trainer import Trainer

    train(_cfg(tmp_path / "parent", epochs=1, max_steps=3), command="parent-command")
    shutil.copytree(tmp_path / "parent" / "run", tmp_path / "start")
    start = tmp_path / "start" / "best.json"
    want_sha = json.loads(start.read_text())["weights"]["sha256"]
    Trainer(_cfg(tmp_path / "child", epochs=2, init_from=str(start)), command="child-command").fit(stop_after_epoch=1)
    shutil.rmtree(tmp_path / "start")  # the start checkpoint is gone (or replaced) before the resume
    train(_cfg(tmp_path / "child", epochs=2, init_from=str(start), resume=True), command="child-command")
    init = json.loads((tmp_path / "child" / "run" / "last.json").read_text())["training"]["init_from"]
    assert init["weights_sha256"] == want_sha and init["training"]["command"] == "parent-command"


def test_init_from_refuses_a_different_network(tmp_path):
    train(_cfg(tmp_path / "parent", epochs=1, max_steps=1))
    start = str(tmp_path / "parent" / "run" / "best.json")
    with pytest.raises(ValueError, match="is a 'unet', this run trains 'fcn8s'"):
        train(_cfg(tmp_path / "a", arch="fcn8s", init_from=start, max_steps=1))
    with pytest.raises(ValueError, match="upsample: run 'nearest' vs checkpoint 'transposed_k2'"):
        train(_cfg(tmp_path / "b", upsample="nearest", init_from=start, max_steps=1))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="--init-from"):
        train(_cfg(tmp_path / "c", init_from=str(tmp_path / "junk.json"), max_steps=1))


def test_init_from_lets_a_fine_tune_change_training_only_kwargs(tmp_path):
    """Dropout has no parameters and is the identity at inference: a fine-tune may turn it off, and says so."""
    from workbench.training.finetune import TRAINING_ONLY_KWARGS

    assert "dropout" in TRAINING_ONLY_KWARGS and "upsample" not in TRAINING_ONLY_KWARGS
    train(_cfg(tmp_path / "parent", arch="fcn8s", epochs=1, max_steps=1))  # the plugin's default dropout, 0.1
    start = str(tmp_path / "parent" / "run" / "best.json")
    assert json.loads(Path(start).read_text())["kwargs"]["dropout"] == 0.1
    train(_cfg(tmp_path / "child", arch="fcn8s", model_kwargs={"dropout": 0.0}, init_from=start, max_steps=1))
    child = json.loads((tmp_path / "child" / "run" / "best.json").read_text())
    assert child["kwargs"]["dropout"] == 0.0 and child["training"]["init_from"]["checkpoint"] == "best.json"


def test_config_file_and_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("arch: fcn8s\nepochs: 7\ncrop: [128, 160]\nmodel_kwargs: {dropout: 0.2}\n")
    args = build_parser().parse_args(["--config", str(cfg_file), "--epochs", "9", "--no-hflip", "--loss", "ce+0.5*dice"])
    cfg = config_from_args(args)
    assert (cfg.arch, cfg.epochs, cfg.crop, cfg.hflip, cfg.loss, cfg.model_kwargs) == ("fcn8s", 9, [128, 160], False, "ce+0.5*dice", {"dropout": 0.2})
    toml = tmp_path / "c.toml"
    toml.write_text('arch = "unet"\nbatch_size = 3\n')
    assert config_from_args(build_parser().parse_args(["--config", str(toml)])).batch_size == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown config field"):
        config_from_args(build_parser().parse_args(["--config", str(bad)]))
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()


def test_written_config_reproduces_the_run(tmp_path):
    cfg = _cfg(tmp_path, epochs=1, max_steps=1)
    train(cfg, command="workbench train ...")
    again = config_from_args(build_parser().parse_args(["--config", str(Path(cfg.out) / "config.yaml")]))
    assert again == cfg


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(TrainConfig(warmup_steps=10, scheduler="poly"), 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(50) < 1.0 and f(99) < f(50)
    g = lr_lambda(TrainConfig(warmup_steps=0, scheduler="cosine"), 100)
    assert g(0) == pytest.approx(1.0) and g(100) == pytest.approx(0.0, abs=1e-9)


def _ema_by_hand(cfg, decay_at, steps=3):
    """Three training steps, and the average worked by hand: e_1 = w_1, e_t = g_t e_(t-1) + (1 - g_t) w_t."""
    import copy

    from workbench.training.runtime import unwrap
    from workbench.training.trainer import Trainer

    trainer = Trainer(cfg)
    seen = []
    for batch in trainer.loader:
        trainer.train_step(batch)
        trainer.global_step += 1
        seen.append(copy.deepcopy(unwrap(trainer.model).state_dict()))
        if len(seen) == steps:
            break
    expected = {k: v.clone() for k, v in seen[0].items()}
    for t, w in enumerate(seen[1:], start=2):
        for k, v in w.items():
            if v.is_floating_point():
                expected[k] = decay_at(t) * expected[k] + (1 - decay_at(t)) * v
            else:
                expected[k] = v.clone()  # num_batches_tracked: copied, not averaged
    return trainer, seen, expected


def test_ema_warmup_is_timms_schedule_capped_by_the_decay(tmp_path):
    """--ema-warmup: the t-th update averages with min(d, 1 - t^(-2/3)) (0.37, 0.52, ...), not d = 0.99."""
    d = 0.99
    trainer, seen, expected = _ema_by_hand(_cfg(tmp_path / "w", epochs=1, ema_decay=d, ema_warmup=True), lambda t: min(d, 1 - t ** (-2 / 3)))
    got = trainer.ema.module.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)
    _, _, plain = _ema_by_hand(_cfg(tmp_path / "p", epochs=1, ema_decay=d), lambda t: d)
    w = [k for k in expected if expected[k].is_floating_point() and not torch.equal(seen[0][k], seen[-1][k])]
    # warmed up, the average has moved most of the way to the last weights; without, it is still the first step's
    assert sum((expected[k] - seen[-1][k]).abs().sum() for k in w) < 0.6 * sum((plain[k] - seen[-1][k]).abs().sum() for k in w)
    with pytest.raises(ValueError, match="needs ema_decay"):
        TrainConfig(ema_warmup=True).validate()


def test_ema_averages_the_steps_and_is_what_gets_validated_saved_and_resumed(tmp_path):
    """--ema-decay: the average follows e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t over optimizer steps
    (parameters and BatchNorm statistics); checkpoints hold it, and a resumed run continues it exactly."""
    from workbench.training.trainer import Trainer

    d = 0.6
    trainer, seen, expected = _ema_by_hand(_cfg(tmp_path / "manual", epochs=1, ema_decay=d), lambda t: d)
    got = trainer.ema.module.state_dict()
    assert any(not torch.equal(seen[-1][k], expected[k]) for k in expected)  # the average is not the last weights
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)

    # a run stopped after one epoch and resumed ends where the uninterrupted run ends, average included
    a = _cfg(tmp_path / "a", epochs=2, ema_decay=d)
    train(a)
    Trainer(_cfg(tmp_path / "b", epochs=2, ema_decay=d)).fit(stop_after_epoch=1)
    train(_cfg(tmp_path / "b", epochs=2, ema_decay=d, resume=True))
    from workbench.io.state import load_state

    sa, sb = load_state(Path(a.out) / "resume.safetensors"), load_state(tmp_path / "b" / "run" / "resume.safetensors")
    for k in sa["ema"]:
        assert torch.equal(sa["ema"][k], sb["ema"][k]), k
    rows = [json.loads(line) for line in (Path(a.out) / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r["val_raw"]) == {"miou", "pixel_accuracy", "mean_class_accuracy"} for r in rows)  # both weights validated
    summary = json.loads((Path(a.out) / "summary.json").read_text())
    assert summary["ema"]["evaluations"] == 2 and summary["ema"]["best_average"] == pytest.approx(100 * summary["best_val_miou"])
    # the checkpoints are the average (fp16-rounded), not the raw weights, and say so
    import workbench

    model, manifest = workbench.load_checkpoint(Path(a.out) / "last.json")
    saved = model.state_dict()
    raw_diff = max((saved[k] - sa["model"][k]).abs().max().item() for k in saved if saved[k].is_floating_point())
    ema_diff = max((saved[k] - sa["ema"][k]).abs().max().item() for k in saved if saved[k].is_floating_point())
    assert ema_diff < 1e-2 < raw_diff
    assert manifest["training"]["weights"] == f"exponential moving average, decay {d}"
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0).validate()


def test_ema_comparison_of_average_and_trained_weights():
    from workbench.training.curves import ema_comparison

    def rec(avg, raw):
        return {"epoch": 1, "val": {"miou": avg}, "val_raw": {"miou": raw}}

    c = ema_comparison([{"epoch": 1}, rec(0.60, 0.58), rec(0.62, 0.65), {"epoch": 3, "val": {"miou": 0.7}}, rec(0.61, 0.60)])
    assert c["evaluations"] == 3  # records without both are skipped
    assert c["best_average"] == pytest.approx(62) and c["best_trained"] == pytest.approx(65)
    assert c["average_minus_trained_mean"] == pytest.approx((2 - 3 + 1) / 3)
    assert c["average_minus_trained_range"] == pytest.approx([-3, 2])
    assert c["spread_average"] == pytest.approx(2) and c["spread_trained"] == pytest.approx(7)
    assert ema_comparison([{"epoch": 1, "val": {"miou": 0.5}}]) is None


@pytest.mark.slow
def test_compile_matches_eager_and_saves_plain_parameter_names(tmp_path, isolated_registry, monkeypatch):
    """--compile runs the training step through torch.compile; the run's weights and checkpoint are the eager run's.

    A small BatchNorm-free model in fp32 with no augmentation randomness beyond the shared seed:
    three SGD steps compiled and eager must agree to float rounding, and the checkpoint holds the
    plain module's names (no ``_orig_mod.`` prefix), so it loads like any other.
    """
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plain_ddp_probe.py").write_text(_PLAIN_PLUGIN)
    monkeypatch.setenv("WORKBENCH_PLUGIN_PATH", str(plugins))
    isolated_registry.load_plugins(reload=True)
    recipe = dict(BASE, arch="plain_ddp_probe", encoder=None, scale=[1.0, 1.0], epochs=1, max_steps=3, optimizer="sgd", lr=0.05, warmup_steps=0, scheduler="constant", val_limit=2, channels_last=False)
    train(_cfg(tmp_path / "eager", **recipe))
    compiled = _cfg(tmp_path / "compiled", **dict(recipe, compile=True))
    assert compiled.compile
    train(compiled)
    w_eager, w_comp = _weights(tmp_path / "eager" / "run"), _weights(tmp_path / "compiled" / "run")
    assert w_eager.keys() == w_comp.keys() and not any("_orig_mod" in k for k in w_comp)
    for k in w_eager:
        torch.testing.assert_close(w_comp[k], w_eager[k], rtol=1e-4, atol=1e-5)
    import workbench

    model, manifest = workbench.load_checkpoint(tmp_path / "compiled" / "run" / "best.json")
    assert manifest["training"]["config"]["compile"] is True
    assert set(model.state_dict()) == set(w_comp)
