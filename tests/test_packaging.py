"""A plain (non-editable) install finds the plugins, the checkpoints and the app."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (whl,) = out.glob("segmentation_workbench-*.whl")
    return whl


def test_wheel_bundles_plugins_checkpoints_and_app(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    plugins = sorted(p.name for p in (ROOT / "plugins").glob("*.py") if not p.name.startswith("_"))
    for name in plugins:
        assert f"workbench/_bundled/plugins/{name}" in names
    assert "workbench/app/__init__.py" in names and "workbench/app/compare.py" in names  # the app is a package module
    shipped = sorted(p.name for p in (ROOT / "checkpoints").iterdir() if p.is_file())
    for name in shipped:
        assert f"workbench/_bundled/checkpoints/{name}" in names


@pytest.mark.slow
def test_installed_package_works_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    probe = (
        "import json, workbench, workbench.paths as p\n"
        "print(json.dumps({'file': workbench.__file__, 'archs': workbench.list_architectures(),"
        " 'errors': workbench.plugin_errors(), 'plugins': str(p.plugins_dirs()[0]),"
        " 'checkpoints': str(p.checkpoints_dir()), 'app': __import__('importlib.util').util.find_spec('workbench.app').origin}))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["file"].startswith(str(site))
    assert not info["errors"]
    import workbench

    assert info["archs"] == workbench.list_architectures()
    assert "_bundled" in info["plugins"] and "_bundled" in info["checkpoints"] and info["app"].startswith(str(site))
