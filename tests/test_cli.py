"""The command line, run as a user would: ``python -m workbench ...`` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import workbench

from conftest import REPO_ROOT


def run_cli(*args, env_extra=None, timeout=120):
    env = dict(os.environ)
    env.pop("WORKBENCH_PLUGIN_PATH", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_list_shows_every_architecture():
    res = run_cli("list")
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    assert listed == workbench.list_architectures()
    assert re.search(r"^unet\s+U-Net\s+encoder=resnet10t upsample=transposed_k2$", res.stdout, re.M)
    assert re.search(r"^naive\s+.*encoder=None upsample=None$", res.stdout, re.M)
    assert "failed to load" not in res.stderr


def test_list_pattern():
    res = run_cli("list", "fcn*")
    assert res.returncode == 0, res.stderr
    assert [line.split()[0] for line in res.stdout.splitlines() if line.strip()] == ["fcn16s", "fcn32s", "fcn8s"]


@pytest.mark.slow
def test_list_reports_broken_plugins(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('deliberately broken')\n")
    res = run_cli("list", env_extra={"WORKBENCH_PLUGIN_PATH": str(tmp_path)})
    assert res.returncode == 0
    assert "1 plugin(s) failed to load" in res.stderr and "deliberately broken" in res.stderr
    assert "unet" in res.stdout
    strict = run_cli("list", "--strict", env_extra={"WORKBENCH_PLUGIN_PATH": str(tmp_path)})
    assert strict.returncode == 1


def test_info_unet():
    res = run_cli("info", "unet", "--size", "64", "64")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("U-Net (unet)")
    m = re.search(r"^parameters: ([\d,]+)$", out, re.M)
    assert m
    n_params = int(m.group(1).replace(",", ""))
    from workbench.models.anatomy import count_parameters

    assert n_params == count_parameters(workbench.create_model("unet", num_classes=11))
    assert re.search(r"^GFLOPs at 64x64: \d+\.\d\d$", out, re.M)
    assert "options: decoder_channels, encoder_weights" in out
    rows = dict(
        (m.group(1), (int(m.group(2)), m.group(3), float(m.group(4))))
        for m in re.finditer(r"^(\S+)\s+(\d+)\s+(\d+x\d+)\s+([\d.]+)$", out, re.M)
    )
    assert rows["encoder[0]"][1:] == ("32x32", 2.0)
    assert rows["encoder[4]"][1:] == ("2x2", 32.0)
    assert rows["head"] == (11, "64x64", 1.0)
    assert sum(name.startswith("decoder.stages.") for name in rows) == 5


def test_errors_exit_2_with_a_message():
    res = run_cli("info", "no_such_net")
    assert res.returncode == 2
    assert "unknown architecture 'no_such_net'" in res.stderr and "unet" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_main_in_process(capsys):
    from workbench.cli import main

    assert main(["list", "tiramisu"]) == 0
    assert capsys.readouterr().out.startswith("tiramisu")
    with pytest.raises(SystemExit):
        main([])


def test_every_command_handler_resolves():
    """Handlers are named as "module:function" strings (imported only when their command runs): each must exist."""
    from workbench.cli import _resolve, build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        func = sub.get_default("func")
        assert callable(_resolve(func) if isinstance(func, str) else func), name
