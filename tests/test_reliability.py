"""A public Space under strangers: broken checkpoints and plugins stay in their own card, queues and uploads are bounded."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import workbench
from workbench.app import common, compare, patches, segment
from workbench.app.compare import CARD_FIELDS
from workbench.inference.zoo import Zoo
from workbench.io.checkpoint import sha256_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def street(tmp_path) -> str:
    arr = np.zeros((96, 128, 3), np.uint8)
    arr[:40] = [135, 170, 220]
    arr[40:] = [90, 90, 95]
    path = tmp_path / "street.png"
    Image.fromarray(arr).save(path)
    return str(path)


def _camvid_checkpoint(folder: Path, name: str, arch: str, **manifest) -> Path:
    torch.manual_seed(0)
    model = workbench.create_model(arch, num_classes=11, encoder="test_resnet") if workbench.get_architecture(arch).default_encoder else workbench.create_model(arch, num_classes=11)
    return workbench.save_checkpoint(folder / name, model, {"dataset": {"name": "camvid"}, **manifest})


def _rewrite_manifest(path: Path, **changes) -> None:
    man = json.loads(path.read_text())
    man.update(changes)
    path.write_text(json.dumps(man))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/workbench-pwned",))


def test_broken_checkpoints_are_refused_and_the_others_keep_serving(tmp_path, street, monkeypatch):
    ck = tmp_path / "checkpoints"
    _camvid_checkpoint(ck, "good_fcn8s", "fcn8s")
    # wrong hash: weights modified after saving
    p = _camvid_checkpoint(ck, "tampered_unet", "unet")
    w = ck / "tampered_unet.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    # a pickle renamed .safetensors, with a manifest that even carries its hash
    p = _camvid_checkpoint(ck, "pickled_residual", "residual_unet")
    w = ck / "pickled_residual.safetensors"
    w.write_bytes(pickle.dumps(_Payload()))
    _rewrite_manifest(p, weights={"file": w.name, "sha256": sha256_file(w), "dtype": "float32"})
    # truncated weights
    _camvid_checkpoint(ck, "truncated_dilated", "dilated")
    w = ck / "truncated_dilated.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    # class list that does not match the model
    p = _camvid_checkpoint(ck, "wrong_classes_fcn32s", "fcn32s")
    _rewrite_manifest(p, classes=[{"name": "a", "color": [0, 0, 0]}] * 5)
    # unknown architecture and a file that is no manifest at all
    p = _camvid_checkpoint(ck, "unknown_arch", "fcn16s")
    _rewrite_manifest(p, architecture="no_such_net")
    (ck / "garbage.json").write_text("{not json")

    zoo = Zoo(ck, timeout=60)
    monkeypatch.setattr(common, "_ZOO", zoo)
    assert "garbage.json" in zoo.checkpoint_errors and "unknown_arch.json" in zoo.checkpoint_errors
    assert "no_such_net" in zoo.checkpoint_errors["unknown_arch.json"]
    assert "checkpoint(s) refused" in common.status_markdown()

    archs = ["fcn8s", "unet", "residual_unet", "dilated", "fcn32s"]
    image, results, _ = segment.segment_all(street, archs)
    assert "labels" in results["fcn8s"] and zoo.entries["fcn8s"].trained
    assert "does not match the manifest" in results["unet"]["error"]
    assert "pickle" in results["residual_unet"]["error"]
    assert "truncated" in results["dilated"]["error"] or "not a valid safetensors" in results["dilated"]["error"]
    assert "5 classes listed but num_classes=11" in results["fcn32s"]["error"]
    assert not Path("/tmp/workbench-pwned").exists()
    cards = compare.render_cards(image, results, 0.5)
    header = cards["unet"]["header"]
    assert "Error" in header and "does not match" in header


BAD_PLUGINS = {
    "bad_import.py": "raise RuntimeError('this plugin is broken on purpose')\n",
    "bad_models.py": '''
import time
import torch.nn as nn
from workbench import register_architecture


class _Base(nn.Module):
    def __init__(self, num_classes, in_chans):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, num_classes, 1)


class Raises(_Base):
    def forward(self, x):
        raise RuntimeError("forward exploded on purpose")


class WrongShape(_Base):
    def forward(self, x):
        return self.conv(x)[:, :, ::2, ::2]


class Hangs(_Base):
    def forward(self, x):
        time.sleep(3600)


@register_architecture("zz_raises")
def zz_raises(*, num_classes, in_chans=3):
    return Raises(num_classes, in_chans)


@register_architecture("zz_wrong_shape")
def zz_wrong_shape(*, num_classes, in_chans=3):
    return WrongShape(num_classes, in_chans)


@register_architecture("zz_hangs")
def zz_hangs(*, num_classes, in_chans=3):
    return Hangs(num_classes, in_chans)
''',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path: Path, **env) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    full_env = dict(os.environ, **{k: str(v) for k, v in env.items()})
    log = open(tmp_path / f"app_{port}.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / f"app_{port}.log").read_text()[-3000:])
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("app did not start")


@pytest.fixture(scope="module")
def bad_plugin_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badplugins")
    plugins = tmp / "plugins"
    plugins.mkdir()
    for name, code in BAD_PLUGINS.items():
        (plugins / name).write_text(code)
    proc, url = _serve(tmp, WORKBENCH_PLUGIN_PATH=plugins, WORKBENCH_MODEL_TIMEOUT=5, WORKBENCH_MAX_UPLOAD="1mb")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.slow
def test_failing_plugins_stay_in_their_own_card(bad_plugin_app, street):
    from gradio_client import Client, handle_file

    client = Client(bad_plugin_app, verbose=False)
    names = workbench.list_architectures() + ["zz_hangs", "zz_raises", "zz_wrong_shape"]
    names = sorted(set(names))
    t = time.time()
    result = client.predict(handle_file(street), ["zz_raises", "zz_wrong_shape", "zz_hangs", "fcn8s"], 0.5, api_name="/compare")
    elapsed = time.time() - t
    fields = [f.name for f in CARD_FIELDS]  # a card's outputs in the /compare API, per architecture in registry order
    per_card = len(fields)
    header = {n: result[per_card * i + fields.index("header")] for i, n in enumerate(names)}
    mask = {n: result[per_card * i + fields.index("mask")] for i, n in enumerate(names)}
    assert "forward exploded on purpose" in header["zz_raises"]
    assert "expected logits of shape" in header["zz_wrong_shape"]
    assert "did not answer within 5 s" in header["zz_hangs"]
    assert "latency" in header["fcn8s"] and Image.open(mask["fcn8s"]).size == (128, 96)
    assert elapsed < 60  # the hung model costs its timeout, not the request
    # a second request while the hung call still runs is refused at once for that model only
    t = time.time()
    again = client.predict(handle_file(street), ["zz_hangs", "fcn8s"], 0.5, api_name="/compare")
    assert "still busy" in again[per_card * names.index("zz_hangs") + fields.index("header")]
    assert time.time() - t < 30


@pytest.mark.slow
def test_upload_size_limit_is_enforced(bad_plugin_app, tmp_path):
    from gradio_client import Client, handle_file

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1_000_000
    client = Client(bad_plugin_app, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(handle_file(str(big)), ["fcn8s"], 0.5, api_name="/compare")
    assert "exceeds the maximum file size of 1048576 bytes" in str(err.value)


@pytest.mark.slow
def test_a_full_queue_answers_busy_at_once(tmp_path, street):
    """With room for one waiting event, a burst gets "Queue is full" for the overflow, never a hang or a crash."""
    from gradio_client import Client, handle_file

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "bad_models.py").write_text(BAD_PLUGINS["bad_models.py"])
    proc, url = _serve(tmp_path, WORKBENCH_PLUGIN_PATH=plugins, WORKBENCH_MODEL_TIMEOUT=4, WORKBENCH_QUEUE_SIZE=1)
    try:
        clients = [Client(url, verbose=False) for _ in range(5)]

        def call(i):
            try:
                clients[i].predict(handle_file(street), ["zz_hangs"] if i == 0 else ["fcn8s"], 0.5, api_name="/compare")
                return "ok"
            except Exception as exc:
                return str(exc)

        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(call, 0)  # occupies the single model slot for the timeout
            time.sleep(1.0)
            rest = [pool.submit(call, i) for i in range(1, 5)]
            answers = [f.result(timeout=120) for f in rest]
        first.result(timeout=120)
        assert any("Queue is full" in a for a in answers), answers
        assert any(a == "ok" for a in answers), answers
        assert all(a == "ok" or "Queue is full" in a for a in answers), answers
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_reduced_load_test_passes():
    """The CI-sized version of `workbench loadtest`: concurrent clients, valid and invalid images, no leak."""
    from workbench.tools.loadtest import LoadTestConfig, format_report, run_loadtest
    from workbench.paths import resolve_data_root

    report = run_loadtest(LoadTestConfig(clients=6, requests=36, invalid_fraction=0.33, archs=["fcn8s"], memory_bound_mb=250), resolve_data_root(), progress=False)
    print(format_report(report))
    assert report["passed"], format_report(report)
    assert report["server_errors"] == 0 and report["valid_mismatch"] == 0
    assert report["invalid_clear_error"] == report["invalid"] > 0


def test_gradio_image_cache_writes_atomically_and_reuses_copies(tmp_path):
    """Identical output images from concurrent requests must never rewrite a file a browser is downloading."""
    import threading

    from gradio import image_utils, processing_utils as pu

    patches.install_atomic_image_cache()  # build_app() does this

    assert getattr(pu.save_pil_to_cache, "workbench_atomic", False)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 30:] = 200
    first = image_utils.save_image(img, cache_dir=str(tmp_path), format="png")
    inode, mtime = os.stat(first).st_ino, os.stat(first).st_mtime_ns
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(image_utils.save_image(img, cache_dir=str(tmp_path), format="png"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(paths) == {first}
    assert os.stat(first).st_ino == inode  # never replaced, let alone truncated
    assert np.array_equal(np.asarray(Image.open(first)), img)
    assert [p.name for p in Path(first).parent.iterdir()] == [Path(first).name]  # no temporary files left
    assert os.stat(first).st_mtime_ns >= mtime


def test_gradio_image_cache_png_is_lossless_and_keeps_the_palette(tmp_path):
    """The cache writes PNGs with fast compression: still lossless, palette masks stay palette images."""
    from gradio import processing_utils as pu

    patches.install_atomic_image_cache()  # build_app() does this

    from workbench import viz
    from workbench.classes import CAMVID_CLASSES

    labels = np.random.default_rng(0).integers(0, 12, (30, 50)).astype(np.uint8)
    mask = viz.palette_image(labels, CAMVID_CLASSES)
    back = Image.open(pu.save_pil_to_cache(mask, str(tmp_path), format="png"))
    assert back.mode == "P" and np.array_equal(np.asarray(back), labels)
    assert np.array_equal(np.asarray(back.convert("RGB")), viz.colorize(labels, CAMVID_CLASSES))
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(pu.save_pil_to_cache(Image.fromarray(rgb), str(tmp_path), format="png"))), rgb)
    jpeg = Image.open(pu.save_pil_to_cache(Image.fromarray(rgb), str(tmp_path), format="jpeg"))
    assert jpeg.format == "JPEG" and jpeg.size == (30, 20)
