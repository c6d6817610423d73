"""The caching allocator the CLI and the app restart themselves with (``workbench.system.allocator``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.system.allocator import ENV, JEMALLOC_CONF, MARK, active_allocator, find_library, preload_env

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = {k: find_library(k) for k in ("tcmalloc", "jemalloc")}
needs_one = pytest.mark.skipif(not any(INSTALLED.values()), reason="neither tcmalloc nor jemalloc is installed (Debian: apt install libtcmalloc-minimal4 libjemalloc2; .ci/run does)")
LIBS = {"tcmalloc": Path("/x/libtcmalloc_minimal.so.4"), "jemalloc": Path("/x/libjemalloc.so.2")}


def finder(*present):
    return lambda kind: LIBS[kind] if kind in present else None


def test_auto_prefers_tcmalloc_then_jemalloc_then_nothing():
    env = preload_env({}, finder("tcmalloc", "jemalloc"))
    assert env["LD_PRELOAD"] == str(LIBS["tcmalloc"]) and env[MARK] == str(LIBS["tcmalloc"])
    assert "MALLOC_CONF" not in env and int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    env = preload_env({ENV: "auto"}, finder("jemalloc"))
    assert env["LD_PRELOAD"] == str(LIBS["jemalloc"]) and env["MALLOC_CONF"] == JEMALLOC_CONF
    assert preload_env({}, finder()) is None


@pytest.mark.parametrize("environ", [{ENV: "system"}, {ENV: "SYSTEM"}, {ENV: "off"}, {MARK: "/x/lib.so"}, {"LD_PRELOAD": "/opt/libjemalloc.so"}, {"LD_PRELOAD": "/a/libfoo.so /b/libtcmalloc.so.4"}])
def test_nothing_to_do_when_disabled_already_applied_or_preloaded(environ):
    assert preload_env(environ, finder("tcmalloc", "jemalloc")) is None


def test_explicit_choice_and_what_is_kept():
    env = preload_env({ENV: "jemalloc", "LD_PRELOAD": "/a/libfoo.so", "MALLOC_CONF": "narenas:2", "HOME": "/h"}, finder("tcmalloc", "jemalloc"))
    assert env["LD_PRELOAD"] == f"{LIBS['jemalloc']}:/a/libfoo.so"  # ours first, the user's preloads kept
    assert env["MALLOC_CONF"] == "narenas:2" and env["HOME"] == "/h"  # the user's settings win


def test_a_missing_or_unknown_choice_is_an_error_not_a_silent_fallback(tmp_path):
    with pytest.raises(ValueError, match="libjemalloc2"):
        preload_env({ENV: "jemalloc"}, finder("tcmalloc"))
    with pytest.raises(ValueError, match="expected auto, system, tcmalloc, jemalloc"):
        preload_env({ENV: "fastest"}, finder("tcmalloc"))
    lib = tmp_path / "libtcmalloc_debug.so"
    lib.write_bytes(b"")
    env = preload_env({ENV: str(lib)}, finder())  # a path: taken as given
    assert env["LD_PRELOAD"] == str(lib) and "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD" in env


def test_find_library_searches_the_given_dirs_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert find_library("jemalloc", [a, b]) is None
    (b / "libjemalloc.so.2").write_bytes(b"")
    (b / "libtcmalloc.so.4").write_bytes(b"")
    assert find_library("jemalloc", [a, b]) == b / "libjemalloc.so.2"
    (a / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert find_library("tcmalloc", [a, b]) == a / "libtcmalloc_minimal.so.4"


def test_the_package_imports_without_torch():
    """The CLI re-executes itself before torch loads; `import workbench` must not load it first."""
    code = "import sys, workbench, workbench.cli, workbench.system.allocator; assert 'torch' not in sys.modules, 'torch loaded'; workbench.create_model; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


SCRIPT = (
    "import os, sys\n"
    "print('start', os.getpid(), flush=True)\n"
    "from workbench.system.allocator import reexec_with_allocator, active_allocator\n"
    "reexec_with_allocator()\n"
    "import torch\n"
    "print('run', os.getpid(), active_allocator(), sys.argv[1:], flush=True)\n"
)


def _run(tmp_path, env_extra, *args):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in (ENV, MARK, "LD_PRELOAD")} | env_extra
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@needs_one
@pytest.mark.parametrize("kind", ["auto", "tcmalloc", "jemalloc"])
def test_reexec_loads_the_allocator_in_the_same_process(tmp_path, kind):
    if kind != "auto" and INSTALLED[kind] is None:
        pytest.skip(f"{kind} is not installed")
    res = _run(tmp_path, {ENV: kind}, "--flag", "a b")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    starts = [ln for ln in lines if ln.startswith("start")]
    assert len(starts) == 2 and starts[0] == starts[1]  # ran twice from the top, as the same pid
    expect = kind if kind != "auto" else ("tcmalloc" if INSTALLED["tcmalloc"] else "jemalloc")
    pid = starts[0].split()[1]
    assert f"run {pid} {expect} ['--flag', 'a b']" in res.stdout  # argv survives, quoting included


def test_system_choice_and_a_bad_choice(tmp_path):
    res = _run(tmp_path, {ENV: "system"})
    assert res.returncode == 0 and res.stdout.count("start") == 1 and " system " in res.stdout
    res = _run(tmp_path, {ENV: "/nonexistent/libjemalloc.so.2"})
    assert res.returncode == 2 and "error: WORKBENCH_ALLOCATOR=/nonexistent/libjemalloc.so.2: not a file" in res.stderr
    assert "Traceback" not in res.stderr and "run" not in res.stdout


@needs_one
def test_cli_heavy_commands_run_under_the_allocator_and_say_so(tmp_path):
    """`workbench bench` (a heavy command) restarts itself; its machine record names the allocator."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, MARK, "LD_PRELOAD")}
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "workbench", "bench", "--arch", "naive", "--size", "32", "32", "--repeats", "1", "--no-memory", "--no-flops", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert json.loads(out.with_suffix(".json").read_text())["machine"]["allocator"] in ("tcmalloc", "jemalloc")
    subprocess.run(cmd, check=True, capture_output=True, env=env | {ENV: "system"}, cwd=ROOT, timeout=300)
    assert json.loads(out.with_suffix(".json").read_text())["machine"]["allocator"] == "system"


def test_this_process_reports_its_allocator():
    assert active_allocator() in ("system", "tcmalloc", "jemalloc")


@pytest.mark.parametrize("engine", ["auto", "openvino"])
def test_a_process_that_may_run_openvino_keeps_the_system_allocator_unless_one_is_named(engine):
    # OpenVINO's CPU plugin aborts under a preloaded tcmalloc or jemalloc: "auto" must not preload for it
    assert preload_env({}, finder("tcmalloc", "jemalloc"), engine=engine) is None
    named = preload_env({ENV: "tcmalloc"}, finder("tcmalloc"), engine=engine)  # asked for explicitly: given
    assert named is not None and named["LD_PRELOAD"] == str(LIBS["tcmalloc"])
    for safe in ("torch", "onnxruntime"):
        assert preload_env({}, finder("tcmalloc"), engine=safe) is not None


def test_the_engine_a_command_line_will_run(monkeypatch):
    from workbench.cli import process_engine

    monkeypatch.delenv("WORKBENCH_ENGINE", raising=False)
    assert process_engine("app", []) == "auto"  # the app's default engine
    assert process_engine("app", ["--engine", "torch"]) == "torch"
    assert process_engine("eval", ["--engine=openvino"]) == "openvino"
    assert process_engine("eval", []) == "torch"
    assert process_engine("bench", ["--engines"]) == "auto"
    assert process_engine("bench", ["--engines", "--engine", "torch", "openvino"]) == "auto"  # a list of engines
    assert process_engine("bench", ["--request", "--repeats", "7"]) == "auto"  # the app's engine
    assert process_engine("bench", ["--train"]) == "torch"
    monkeypatch.setenv("WORKBENCH_ENGINE", "onnxruntime")
    assert process_engine("app", []) == "onnxruntime"
