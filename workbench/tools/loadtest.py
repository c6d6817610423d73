"""``workbench loadtest``: many concurrent clients against the served app, valid and invalid images mixed.

Every valid request must return exactly the single-user result, every invalid
one a clear error message (the app's own wording, not a bare "Error"), no
request may fail otherwise, and the server's resident memory after the run
must stay within a stated bound of the memory before it.

The app is started on a free localhost port (or ``--url`` points at a running
one; memory is then not measured). Clients are ``gradio_client.Client``
instances, one per thread, calling the ``/compare`` endpoint.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import workbench

from ..paths import resolve_data_root

__all__ = ["LoadTestConfig", "run_loadtest", "make_inputs", "rss_mb", "CLEAR_ERROR_PHRASES"]

# Phrases of the app's own error messages (workbench.imageio / app.py); a bare "Error" does not count.
CLEAR_ERROR_PHRASES = (
    "is empty",
    "not an image",
    "corrupt or truncated",
    "SVG is a vector format",
    "Upload an image first",
    "too many pixels",
    "the limit is",
)


@dataclass
class LoadTestConfig:
    clients: int = 16  # concurrent client threads
    requests: int = 320  # total requests
    invalid_fraction: float = 0.25  # share of requests that send a bad file
    archs: list[str] = field(default_factory=lambda: ["fcn8s", "unet"])  # architectures per request
    url: str | None = None  # a running app; None starts one
    timeout_s: float = 900.0  # the whole run
    memory_bound_mb: float = 300.0  # allowed RSS growth of the server over the run
    seed: int = 0


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_inputs(folder: Path, data_root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Valid images (CamVid test images when present, else synthetic streets) and invalid files."""
    folder.mkdir(parents=True, exist_ok=True)
    valid: list[Path] = []
    camvid = (data_root / "camvid" / "test") if data_root else None
    if camvid and camvid.is_dir():
        valid = sorted(camvid.glob("*.png"))[:: 40][:4]
    if not valid:
        rng = np.random.default_rng(0)
        for i in range(4):
            img = np.zeros((180, 240, 3), np.uint8)
            img[: 60 + 10 * i] = [135, 170, 220]
            img[60 + 10 * i :] = [90, 90, 95]
            img = np.clip(img + rng.integers(-15, 15, img.shape), 0, 255).astype(np.uint8)
            p = folder / f"street_{i}.png"
            Image.fromarray(img).save(p)
            valid.append(p)
    invalid = []
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is a text file, renamed")
    buf = io.BytesIO()
    Image.new("RGB", (200, 150), (120, 30, 30)).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>')
    invalid = [folder / n for n in ("empty.png", "notes.png", "truncated.png", "drawing.svg")]
    return valid, invalid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(port: int, *, timeout_s: float = 180.0, poll_s: float = 0.5, env: dict | None = None) -> subprocess.Popen:
    """The app in a fresh process on ``port``, returned once its page answers (``env``: extra variables).

    The example cache is off (``WORKBENCH_EXAMPLE_CACHE=0``): every request does, and is timed for, the real work.
    """
    env = dict(os.environ, WORKBENCH_EXAMPLE_CACHE="0", **(env or {}))
    cmd = [sys.executable, "-m", "workbench", "app", "--port", str(port)]  # as `workbench app`: allocator re-exec, then the app
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before answering")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except Exception:
            time.sleep(poll_s)
    proc.kill()
    raise TimeoutError(f"the app did not answer within {timeout_s:g} s")


def mask_positions(client) -> list[int]:
    """Where the served /compare endpoint returns each card's mask: the positions of its outputs labelled
    "Mask", one per card, in the order of the cards (the registry's, then the spare cards of a session's own
    checkpoints)."""
    returns = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]["returns"]
    return [i for i, r in enumerate(returns) if r.get("label") == "Mask"]


def _masks(result, archs: list[str], positions: list[int]) -> dict[str, np.ndarray]:
    """The mask images of ``archs`` from a /compare result (``positions``: :func:`mask_positions`)."""
    names = workbench.list_architectures()
    if len(positions) < len(names):  # the architectures' cards come first; spare cards for users' own checkpoints may follow
        raise RuntimeError(f"/compare returns {len(positions)} masks for {len(names)} registered architectures")
    out = {}
    for a in archs:
        value = result[positions[names.index(a)]]
        if isinstance(value, dict):  # an update: the client gives its value, if it sets one
            value = value.get("value")
        if not isinstance(value, (str, os.PathLike)):
            raise RuntimeError(f"/compare returned no mask for {a}: {value!r}")
        out[a] = np.asarray(Image.open(value))
    return out


def run_loadtest(cfg: LoadTestConfig, data_root: Path | None = None, progress: bool = True) -> dict:
    """Run the load test; returns the figures (see :func:`format_report`)."""
    from gradio_client import Client, handle_file  # optional: the test extra installs it

    proc = None
    url = cfg.url
    if url is None:
        port = _free_port()
        proc = _start_app(port)
        url = f"http://127.0.0.1:{port}/"
    tmp = tempfile.TemporaryDirectory(prefix="wb-loadtest-")
    try:
        valid, invalid = make_inputs(Path(tmp.name), data_root)
        single = Client(url, verbose=False)
        positions = mask_positions(single)
        reference = {}
        for p in valid:  # single-user results, which also warm every model up
            reference[p] = _masks(single.predict(handle_file(str(p)), cfg.archs, 0.5, api_name="/compare"), cfg.archs, positions)
        rss_before = rss_mb(proc.pid) if proc else None

        rng = random.Random(cfg.seed)
        n_bad = round(cfg.invalid_fraction * cfg.requests)
        plan = [True] * n_bad + [False] * (cfg.requests - n_bad)
        rng.shuffle(plan)
        jobs = [(rng.choice(invalid) if bad else rng.choice(valid), bad) for bad in plan]
        clients = [Client(url, verbose=False) for _ in range(cfg.clients)]
        outcomes: list[dict] = []
        t0 = time.perf_counter()

        def one(k: int) -> dict:
            path, bad = jobs[k]
            client = clients[k % cfg.clients]
            t = time.perf_counter()
            try:
                res = client.predict(handle_file(str(path)), cfg.archs, 0.5, api_name="/compare")
                ms = (time.perf_counter() - t) * 1e3
                if bad:
                    return {"kind": "invalid", "status": "accepted_bad_input", "ms": ms, "file": path.name}
                got = _masks(res, cfg.archs, positions)
                same = all(np.array_equal(got[a], reference[path][a]) for a in cfg.archs)
                return {"kind": "valid", "status": "ok" if same else "mismatch", "ms": ms, "file": path.name}
            except Exception as exc:
                ms = (time.perf_counter() - t) * 1e3
                msg = str(exc)
                clear = any(p in msg for p in CLEAR_ERROR_PHRASES)
                if bad:
                    return {"kind": "invalid", "status": "clear_error" if clear else "unclear_error", "ms": ms, "file": path.name, "message": msg[:200]}
                return {"kind": "valid", "status": "server_error", "ms": ms, "file": path.name, "message": msg[:200]}

        with ThreadPoolExecutor(cfg.clients) as pool:
            for i, out in enumerate(pool.map(one, range(cfg.requests))):
                outcomes.append(out)
                if progress and (i + 1) % max(1, cfg.requests // 10) == 0:
                    print(f"  {i + 1}/{cfg.requests} requests", file=sys.stderr, flush=True)
                if time.perf_counter() - t0 > cfg.timeout_s:
                    raise TimeoutError(f"load test exceeded {cfg.timeout_s:.0f} s")
        wall = time.perf_counter() - t0
        rss_after = rss_mb(proc.pid) if proc else None
    finally:
        tmp.cleanup()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    valid_ms = [o["ms"] for o in outcomes if o["kind"] == "valid" and o["status"] == "ok"]
    count = lambda kind, status: sum(1 for o in outcomes if o["kind"] == kind and o["status"] == status)  # noqa: E731
    q = statistics.quantiles(valid_ms, n=20) if len(valid_ms) >= 2 else [float("nan")] * 19
    report = {
        "clients": cfg.clients,
        "requests": cfg.requests,
        "archs": cfg.archs,
        "valid": sum(1 for o in outcomes if o["kind"] == "valid"),
        "invalid": sum(1 for o in outcomes if o["kind"] == "invalid"),
        "valid_ok": count("valid", "ok"),
        "valid_mismatch": count("valid", "mismatch"),
        "server_errors": count("valid", "server_error"),
        "invalid_clear_error": count("invalid", "clear_error"),
        "invalid_unclear_error": count("invalid", "unclear_error"),
        "invalid_accepted": count("invalid", "accepted_bad_input"),
        "latency_p50_ms": statistics.median(valid_ms) if valid_ms else float("nan"),
        "latency_p95_ms": q[18],
        "wall_s": wall,
        "throughput_rps": len(outcomes) / wall,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "memory_bound_mb": cfg.memory_bound_mb,
        "failures": [o for o in outcomes if o["status"] not in ("ok", "clear_error")][:10],
    }
    report["passed"] = (
        report["valid_ok"] == report["valid"]
        and report["invalid_clear_error"] == report["invalid"]
        and (rss_before is None or rss_after - rss_before <= cfg.memory_bound_mb)
    )
    return report


def format_report(r: dict) -> str:
    mem = "not measured (external app)" if r["rss_before_mb"] is None else (
        f"{r['rss_before_mb']:.0f} MB before, {r['rss_after_mb']:.0f} MB after (+{r['rss_after_mb'] - r['rss_before_mb']:.0f} MB; bound +{r['memory_bound_mb']:.0f} MB)"
    )
    lines = [
        f"clients {r['clients']}, requests {r['requests']} ({r['valid']} valid, {r['invalid']} invalid), architectures {', '.join(r['archs'])}",
        f"valid: {r['valid_ok']} identical to the single-user result, {r['valid_mismatch']} different, {r['server_errors']} server errors",
        f"invalid: {r['invalid_clear_error']} clear error messages, {r['invalid_unclear_error']} unclear, {r['invalid_accepted']} accepted",
        f"latency of valid requests: p50 {r['latency_p50_ms']:.0f} ms, p95 {r['latency_p95_ms']:.0f} ms; wall {r['wall_s']:.1f} s, {r['throughput_rps']:.2f} requests/s",
        f"server memory: {mem}",
        "PASSED" if r["passed"] else "FAILED",
    ]
    for f in r["failures"]:
        lines.append(f"  failure: {json.dumps(f)}")
    return "\n".join(lines)


def main(args) -> int:
    cfg = LoadTestConfig(clients=args.clients, requests=args.requests, invalid_fraction=args.invalid_fraction, archs=args.arch, url=args.url, memory_bound_mb=args.memory_bound)
    report = run_loadtest(cfg, resolve_data_root(args.data_root), progress=not args.quiet)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1
