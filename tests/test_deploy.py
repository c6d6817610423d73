"""``workbench space deploy``: the plan (pure), the Hub's rules, and the real huggingface_hub upload against a
local fake Hub.

The fake Hub (:class:`FakeHub`) is a small threaded HTTP server that implements the routes ``create_repo`` and
``upload_folder`` call (repo creation, README validation, the tree listing, preupload, the LFS batch API, the
LFS PUT and verify, the commit) and enforces what the real Hub enforces on them: a write token, binaries and
files over 10 MiB only through LFS, an LFS file in a commit only once its bytes arrived with the announced sha256
and size. It stores what arrives, so the tests compare the Space's files byte for byte with the plan. The
Xet protocol is not faked: huggingface_hub is told to use the LFS path (``HF_HUB_DISABLE_XET``), which it also
takes where ``hf_xet`` is not installed. Nothing here reaches the network.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib.metadata
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from workbench import cli
from workbench.tools import space
from workbench.tools.space import SpaceFile, check_files, check_front_matter, lfs_tracked, plan_space, stage_space, upload_space

huggingface_hub = pytest.importorskip("huggingface_hub")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_fake_write_token"
REPO = "alice/segmentation-workbench"
MiB = 1 << 20


# ----------------------------------------------------------------------------- the fake Hub


class FakeHub:
    """The Hub routes create_repo + upload_folder use, with the Hub's checks; repositories live in ``self.repos``
    as ``{repo_id: {"type", "sdk", "private", "files": {path: bytes}, "lfs": {path}, "commits": [...]}}``."""

    def __init__(self, tmp_path: Path):
        self.repos: dict[str, dict] = {}
        self.objects: dict[str, bytes] = {}  # LFS store: sha256 -> bytes
        self.requests: list[tuple[str, str]] = []
        self.force_regular = False  # answer "regular" to every preupload (to show the commit check bites)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, payload=None):
                data = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    return True
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):
                self._route("PUT")

            def _route(self, method: str):
                url = urlparse(self.path)
                path = unquote(url.path)
                body = self._body()
                hub.requests.append((method, path))
                try:
                    status, payload = hub.handle(method, path, url.query, body, self)
                except KeyError as exc:
                    status, payload = 404, {"error": f"not found: {exc}"}
                if status is not None:
                    self._send(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # the routes
    def _signature(self, oid: str) -> str:
        return hashlib.sha256(f"{id(self)}:{oid}".encode()).hexdigest()[:16]

    def handle(self, method, path, query, body, req):
        parts = path.strip("/").split("/")
        if method == "PUT" and parts[0] == "lfs-store":  # a pre-signed storage URL, as the Hub's: no token, a signature
            oid, size = parts[1], int(parts[2])
            if query != f"sig={self._signature(oid)}":
                return 403, {"error": "bad signature"}
            if hashlib.sha256(body).hexdigest() != oid or len(body) != size:
                return 400, {"error": "content does not match the announced sha256/size"}
            self.objects[oid] = body
            return 200, {}
        if not req._authorized():
            return None, None
        if method == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else f"alice/{data['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this space repo", "url": f"{self.url}/spaces/{repo_id}"}
            if data.get("type") != "space" or data.get("sdk") not in ("gradio", "docker", "static"):
                return 400, {"error": f"bad space creation payload {data}"}
            default = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in ("*.bin", "*.safetensors", "*.onnx"))
            self.repos[repo_id] = {"type": "space", "sdk": data["sdk"], "private": data.get("visibility") == "private" or data.get("private") is True, "files": {".gitattributes": default.encode()}, "lfs": set(), "commits": []}
            return 200, {"url": f"{self.url}/spaces/{repo_id}", "name": repo_id}
        if method == "POST" and path == "/api/validate-yaml":
            data = json.loads(body)
            text = data["content"]
            if not text.startswith("---\n"):
                return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
            meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0])
            errors = [{"message": m} for m in check_front_matter(meta)[0]] if data.get("repoType") == "space" else []
            return (400 if errors else 200), {"errors": errors, "warnings": []}
        if parts[:2] == ["api", "spaces"] and len(parts) >= 5:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self.repos[repo_id]
            if revision != "main":
                return 404, {"error": f"revision {revision} not found"}
            if method == "GET" and action == "tree":
                return 200, [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()} for p, b in sorted(repo["files"].items())]
            if method == "POST" and action == "preupload":
                return 200, {"files": [self._preupload(repo, f) for f in json.loads(body)["files"]]}
            if method == "POST" and action == "commit":
                return self._commit(repo_id, repo, body)
        if method == "POST" and len(parts) == 7 and parts[0] == "spaces" and parts[2].endswith(".git") and parts[3:] == ["info", "lfs", "objects", "batch"]:
            data = json.loads(body)
            objects = []
            for obj in data["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in self.objects:
                    entry["actions"] = {
                        "upload": {"href": f"{self.url}/lfs-store/{obj['oid']}/{obj['size']}?sig={self._signature(obj['oid'])}"},
                        "verify": {"href": f"{self.url}/lfs-verify"},
                    }
                objects.append(entry)
            return 200, {"transfer": "basic", "objects": objects}
        if method == "POST" and path == "/lfs-verify":
            data = json.loads(body)
            ok = data["oid"] in self.objects and len(self.objects[data["oid"]]) == data["size"]
            return (200, {}) if ok else (404, {"error": "object not found"})
        return 404, {"error": f"no route {method} {path}"}

    def _preupload(self, repo, f) -> dict:
        sample = base64.b64decode(f["sample"])
        patterns = [ln.split()[0] for ln in repo["files"].get(".gitattributes", b"").decode().splitlines() if "filter=lfs" in ln]
        lfs = f["size"] > 10 * MiB or b"\0" in sample or lfs_tracked(f["path"], patterns)
        return {"path": f["path"], "uploadMode": "regular" if self.force_regular else ("lfs" if lfs else "regular"), "shouldIgnore": False}

    def _commit(self, repo_id, repo, body):
        lines = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "the commit payload must start with a header"}
        files, lfs, deleted = dict(repo["files"]), set(repo["lfs"]), []
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                content = base64.b64decode(value["content"])
                if len(content) > 10 * MiB or b"\0" in content[:8000]:
                    return 400, {"error": f"{value['path']}: binary files and files over 10 MiB must be stored with LFS/Xet"}
                files[value["path"]] = content
                lfs.discard(value["path"])
            elif item["key"] == "lfsFile":
                data = self.objects.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    return 400, {"error": f"{value['path']}: LFS object {value['oid']} was never uploaded"}
                files[value["path"]] = data
                lfs.add(value["path"])
            elif item["key"] == "deletedFile":
                if value["path"] not in files:
                    return 404, {"error": "A file with this name doesn't exist"}
                del files[value["path"]]
                lfs.discard(value["path"])
                deleted.append(value["path"])
            else:
                return 400, {"error": f"unknown commit operation {item['key']}"}
        repo.update(files=files, lfs=lfs)
        oid = hashlib.sha1(body).hexdigest()
        repo["commits"].append({"oid": oid, "summary": lines[0]["value"].get("summary"), "deleted": deleted})
        return 200, {"commitUrl": f"{self.url}/spaces/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS path (the Xet protocol is not faked)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(tmp_path) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # huggingface_hub reads HF_ENDPOINT once, at import
        yield hub


# ----------------------------------------------------------------------------- the plan


@pytest.fixture(scope="module")
def plan():
    return plan_space(REPO)


def test_plan_holds_everything_the_space_runs(plan):
    paths = {f.path for f in plan.files}
    for need in ("README.md", ".gitattributes", "app.py", "requirements.txt", "packages.txt", "workbench/__init__.py", "workbench/app/__init__.py", "benchmarks/camvid_class_weights.json"):
        assert need in paths
    for p in (ROOT / "plugins").glob("*.py"):
        assert f"plugins/{p.name}" in paths
    shipped = [p for p in (ROOT / "checkpoints").iterdir() if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".xml")]
    assert shipped and all(f"checkpoints/{p.name}" in paths for p in shipped)
    examples = sorted((ROOT / "workbench" / "examples").rglob("*.png"))
    assert len(examples) >= 12 and all(p.relative_to(ROOT).as_posix() in paths for p in examples)
    assert not any("__pycache__" in p or p.endswith(".pyc") or p.startswith(("checkpoints/eval/", "tests/", "docs/")) for p in paths)
    assert plan.problems == [], plan.problems


def test_every_binary_and_large_file_goes_through_lfs(plan):
    big = [f for f in plan.files if f.size > 10 * MiB]
    assert len(big) >= 8 and all(f.path.endswith(".safetensors") for f in big)  # the 8 shipped checkpoints over 10 MiB
    for f in plan.files:
        assert f.size == (len(f.content) if f.content is not None else f.source.stat().st_size)
        if f.binary or f.size > 10 * MiB:
            assert f.lfs, f.path
    assert all(f.lfs for f in plan.files if f.path.endswith((".safetensors", ".png", ".bin")))
    assert not any(f.lfs for f in plan.files if f.path.endswith((".py", ".json", ".md", ".txt")))


def test_space_readme_front_matter_is_valid_and_pins_the_installed_gradio(plan):
    text = plan.file("README.md").read().decode()
    fm, body = _split(text)
    assert fm == plan.front_matter
    assert fm["sdk"] == "gradio" and fm["sdk_version"] == importlib.metadata.version("gradio")
    assert fm["app_file"] == "app.py" and isinstance(fm["python_version"], str)
    assert fm["colorFrom"] in space.SPACE_COLOURS and fm["colorTo"] in space.SPACE_COLOURS
    assert len(fm["short_description"]) <= 60 and fm["license"] == "mit"
    assert check_front_matter(fm, gradio_version=fm["sdk_version"], files={"app.py"}) == ([], [])
    assert "CamVid" in body and "workbench space deploy" in body


def _split(text: str):
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"colorFrom": "orange"}, "colorFrom"),
        ({"short_description": "x" * 61}, "short_description"),
        ({"python_version": 3.1}, "python_version"),
        ({"emoji": "abc"}, "emoji"),
        ({"license": "my-own"}, "license"),
        ({"sdk": "streamlit"}, "sdk"),
        ({"sdk_version": 5}, "sdk_version"),
        ({"app_file": "main.py"}, "app_file"),
        ({"pinned": "yes"}, "pinned"),
        ({"tags": "segmentation"}, "tags"),
        ({"title": ""}, "title"),
    ],
)
def test_front_matter_breaking_a_hub_rule_is_a_problem(change, problem):
    good = {"title": "T", "emoji": "🧩", "colorFrom": "indigo", "colorTo": "green", "sdk": "gradio", "sdk_version": "6.31.0", "python_version": "3.11", "app_file": "app.py", "license": "mit", "short_description": "x" * 60, "tags": ["a"], "pinned": False}
    assert check_front_matter(good, gradio_version="6.31.0", files={"app.py"}) == ([], [])
    problems, _ = check_front_matter({**good, **change}, gradio_version="6.31.0", files={"app.py"})
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_front_matter_warnings():
    fm = {"title": "T", "sdk": "gradio", "sdk_version": "5.0.0", "app_file": "app.py", "colour": "red"}
    problems, warnings = check_front_matter(fm, gradio_version="6.31.0")
    assert problems == [] and any("differs from the Gradio installed" in w for w in warnings) and any(w.startswith("colour:") for w in warnings)
    assert check_front_matter({"sdk": "gradio"})[0][:2] == ["title: missing", "app_file: missing"]


def test_file_rules():
    def f(path, size, binary=False):
        return SpaceFile(path=path, size=size, lfs=lfs_tracked(path), binary=binary, content=b"")

    assert check_files([f("model.safetensors", 20 * MiB, True), f("a/b.png", 100, True), f("app.py", 100)]) == []
    problems = check_files([f("weights.dat", 11 * MiB), f("x.ico", 500, True), f("../up.py", 1), f("app.py", 1), f("app.py", 1)])
    assert any(p.startswith("weights.dat: 11.0 MiB") for p in problems)
    assert any(p.startswith("x.ico: a binary file") for p in problems)
    assert any(p.startswith("../up.py: not a plain relative path") for p in problems)
    assert any(p == "app.py: listed twice" for p in problems)
    assert lfs_tracked("saved_model/variables/v.data") and lfs_tracked("deep/folder/x.onnx") and not lfs_tracked("app.py")


def test_a_broken_checkout_is_refused_before_anything_is_uploaded(tmp_path):
    root = tmp_path / "checkout"
    for name in ("app.py", "requirements.txt", "packages.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text((ROOT / name).read_text())
    (root / "workbench").mkdir()
    (root / "workbench" / "__init__.py").write_text("")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "m.json").write_text(json.dumps({"weights": {"file": "m.safetensors"}}))
    (root / "README.md").write_text("---\ntitle: X\nsdk: gradio\ncolorFrom: orange\napp_file: app.py\nshort_description: " + "y" * 70 + "\n---\n\n# X\n\nText.\n")
    bad = plan_space(REPO, root=root)
    assert any(p.startswith("colorFrom") for p in bad.problems)
    assert any(p.startswith("short_description") for p in bad.problems)
    assert any("m.safetensors are not in the Space" in p for p in bad.problems)
    with pytest.raises(ValueError, match="nothing was uploaded"):
        upload_space(bad, tmp_path, token=TOKEN, endpoint="http://127.0.0.1:9")  # refused before any connection
    with pytest.raises(FileNotFoundError, match="not a source checkout"):
        plan_space(REPO, root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="USER/NAME"):
        plan_space("no-namespace")


def test_dry_run_lists_every_file_and_writes_nothing(capsys, tmp_path, plan):
    assert cli.main(["space", "deploy", REPO, "--dry-run"]) == 0
    out = capsys.readouterr().out
    for f in plan.files:
        assert f" {f.path}\n" in out + "\n"
    assert "checkpoints/camvid_unet.safetensors" in out and "LFS/Xet" in out and "sdk_version: " in out
    assert "checks passed" in out
    assert cli.main(["space", "deploy", "not a repo", "--dry-run"]) == 2
    assert cli.main(["space", "deploy", REPO, "--dry-run", "--staging", str(tmp_path / "staged")]) == 0
    staged = sorted(p.relative_to(tmp_path / "staged").as_posix() for p in (tmp_path / "staged").rglob("*") if p.is_file())
    assert staged == sorted(f.path for f in plan.files)


# ----------------------------------------------------------------------------- the upload, against the fake Hub


def _arrived_equals_plan(repo: dict, plan) -> None:
    assert set(repo["files"]) == {f.path for f in plan.files}
    for f in plan.files:
        assert hashlib.sha256(repo["files"][f.path]).digest() == hashlib.sha256(f.read()).digest(), f.path
    assert {f.path for f in plan.files if f.lfs} <= repo["lfs"] | {".gitattributes"}


def test_deploy_uploads_the_space_through_huggingface_hub(fake_hub, capsys, plan):
    assert cli.main(["space", "deploy", REPO, "--token", TOKEN, "--private"]) == 0
    repo = fake_hub.repos[REPO]
    assert repo["sdk"] == "gradio" and repo["private"] is True
    _arrived_equals_plan(repo, plan)
    assert {p for p in repo["lfs"] if p.endswith(".safetensors")} == {f.path for f in plan.files if f.path.endswith(".safetensors")}
    assert len(repo["commits"]) == 1  # one commit (the LFS path): the Space never builds from a half-uploaded tree
    assert ("POST", "/api/validate-yaml") in fake_hub.requests  # huggingface_hub had the README's metadata checked
    out = capsys.readouterr().out
    assert f"to the Space {REPO}" in out and fake_hub.url in out


def test_redeploy_replaces_stale_files_and_uploads_only_new_objects(fake_hub, tmp_path, plan):
    small = space.SpacePlan(repo_id=REPO, files=[f for f in plan.files if not f.path.startswith(("checkpoints/", "benchmarks/"))], front_matter=plan.front_matter)
    upload_space(small, stage_space(small, tmp_path / "one"), token=TOKEN)
    repo = fake_hub.repos[REPO]
    repo["files"]["stale_from_an_old_deploy.txt"] = b"old"
    puts = sum(1 for m, _ in fake_hub.requests if m == "PUT")
    upload_space(small, stage_space(small, tmp_path / "two"), token=TOKEN)  # the Space exists: exist_ok
    assert "stale_from_an_old_deploy.txt" not in repo["files"] and "stale_from_an_old_deploy.txt" in repo["commits"][-1]["deleted"]
    _arrived_equals_plan(repo, small)
    assert sum(1 for m, _ in fake_hub.requests if m == "PUT") == puts  # LFS objects already there are not sent again


def test_a_bad_token_is_a_plain_error(fake_hub, tmp_path, plan, capsys):
    small = space.SpacePlan(repo_id=REPO, files=[plan.file("app.py"), plan.file("README.md")], front_matter=plan.front_matter)
    with pytest.raises(ValueError, match="no valid token"):
        upload_space(small, stage_space(small, tmp_path / "s"), token="hf_wrong")
    assert REPO not in fake_hub.repos
    assert cli.main(["space", "deploy", REPO, "--token", "hf_wrong"]) == 2
    assert "no valid token" in capsys.readouterr().err


def test_the_fake_hub_refuses_a_binary_sent_as_a_plain_blob(fake_hub, tmp_path):
    """The fake enforces the Hub's rule, so the uploads above passing means the binaries really went through LFS."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=TOKEN)
    api.create_repo(REPO, repo_type="space", space_sdk="gradio")
    png = ROOT / "workbench" / "examples" / "camvid" / "test" / "0001TP_008640.png"
    fake_hub.force_regular = True
    with pytest.raises(HfHubHTTPError, match="must be stored with LFS"):
        api.upload_file(path_or_fileobj=str(png), path_in_repo="x.png", repo_id=REPO, repo_type="space")
    fake_hub.force_regular = False
    api.upload_file(path_or_fileobj=str(png), path_in_repo="x.png", repo_id=REPO, repo_type="space")
    assert fake_hub.repos[REPO]["files"]["x.png"] == png.read_bytes() and "x.png" in fake_hub.repos[REPO]["lfs"]


def test_gitattributes_in_the_space_and_the_checkout_agree():
    """The checkout's .gitattributes marks the same files binary as the Space's LFS rules (it adds no LFS filter:
    the GitHub repository keeps plain blobs; only the Space stores them through LFS/Xet)."""
    rules = [ln.split()[0] for ln in (ROOT / ".gitattributes").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for pattern in ("*.safetensors", "*.bin", "*.onnx", "*.png"):
        assert pattern in rules and pattern in space.LFS_PATTERNS
    assert all(fnmatch.fnmatch(f"x{p.lstrip('*')}", p) for p in rules if p.startswith("*."))


STAGED_PROBE = """
import os, socket, sys
def refuse(self, address):
    raise OSError(f"network is down in this probe: {address}")
socket.socket.connect = refuse  # as a Space whose network is down: everything must come from its own files
import workbench
assert workbench.__file__.startswith(os.getcwd()), workbench.__file__  # the staged package, not the checkout
from workbench.app import build_app, common, compare, weights
examples = common.example_images()
assert examples and all(p.startswith(os.getcwd()) for p in examples), examples
build_app(examples=examples, selection=["fcn8s", "unet"])
out = compare.compare(examples[0], ["fcn8s", "unet"], 0.5)
assert out.ground_truth["visible"] and all("on this image: mIoU" in out.cards[a]["header"] and "trained" in out.cards[a]["header"] for a in ("fcn8s", "unet"))
assert weights.isbi_view(24)[-1].count("pixel error") == 2
print("staged space ok", len(examples))
"""


@pytest.mark.slow
def test_the_staged_space_runs_on_its_own_files_with_the_network_down(tmp_path, plan):
    """The staged folder is the whole Space: with the checkout out of the path, no data root and sockets refused,
    the app builds, the trained checkpoints run on the shipped examples with their ground truth, and the ISBI view works."""
    import os
    import subprocess
    import sys

    staged = stage_space(plan, tmp_path / "space")
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "WORKBENCH_"))}
    env.update(WORKBENCH_DATA_ROOT=str(empty), WORKBENCH_ENGINE="torch", HF_HUB_OFFLINE="1", HOME=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", STAGED_PROBE], cwd=staged, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "staged space ok" in res.stdout, res.stderr[-3000:]
