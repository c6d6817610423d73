"""Time the served app's Compare in headless Chromium: from the click on Segment to the first card and the last.

Usage:
    python scripts/browser_timing.py [--image IMG] [--engine torch auto] [--allocator system] [--repeats 5]
                                     [--out benchmarks/browser_timing_cpu_avx512]

Each engine gets a fresh app process started as a user starts it (``python app.py --port P --engine E``; ``--allocator``
sets ``WORKBENCH_ALLOCATOR``, which OpenVINO needs to be ``system``). The example cache is off unless
``--example-cache`` (a CamVid test image is one of the app's examples: cached, it would answer from memory).
Per request, in the page: the click, every selected card saying it runs, the first card with its mask loaded, the
last (with the agreement sentence). Every figure is the median over ``--repeats`` requests made after warm-up
requests that load the models (under ``auto``, until no card says PyTorch is standing in while engines are
measured). ``--out`` writes ``OUT.json`` and ``OUT.md`` with the machine's description (ISA included).
Playwright drives Debian's /usr/bin/chromium; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.paths import resolve_data_root  # noqa: E402
from workbench.system.machine import machine_description, machine_line  # noqa: E402
from workbench.tools.bench_request import CLASSIC  # noqa: E402

# In the page: the click on Segment is made here (the clock starts with it); resolves with the times (ms) until every
# selected card says it runs, until the first card shows its mask (decoded if in view: Gradio's images below the
# fold load only when scrolled to), until every card does and the agreement sentence is in, and the order the cards
# finished in.
PROBE = """(n) => new Promise((resolve) => {
  const t0 = performance.now();
  const marks = {running: null, first: null, last: null, finished: []};
  // a card's mask is shown when its picture is decoded; below the fold (Gradio's images load lazily) when it has its file
  const inView = (el) => { const r = el.getBoundingClientRect(); return r.bottom > 0 && r.top < window.innerHeight; };
  const loaded = (card) => { const im = card.querySelector("img"); return !!im && !!im.getAttribute("src") && (inView(im) ? im.complete && im.naturalWidth > 0 : true); };
  const tick = () => {
    const now = performance.now();
    const cards = [...document.querySelectorAll(".wb-card")].filter((c) => c.offsetParent !== null);
    const running = cards.filter((c) => c.querySelector(".wb-running")).length;
    if (marks.running === null && running >= n) marks.running = now - t0;
    if (marks.running !== null) {
      for (const c of cards) {
        const name = c.id.replace("wb-card-", "");
        if (!marks.finished.includes(name) && c.querySelector(".wb-latency") && !c.querySelector(".wb-running") && loaded(c)) {
          marks.finished.push(name);
          if (marks.first === null) marks.first = now - t0;
        }
      }
      if (marks.finished.length >= n && /agree on|Select two or more/.test(document.body.innerText)) {
        marks.last = now - t0;
        resolve(marks);
        return;
      }
    }
    if (now - t0 > 600000 || (marks.running === null && now - t0 > 30000)) { resolve(marks); return; }  // nothing ran: retried
    setTimeout(tick, 2);
  };
  [...document.querySelectorAll("button")].find((b) => b.innerText.trim() === "Segment").click();
  tick();
})"""

# The upload is in: the image input shows its picture
UPLOADED = """() => { const i = document.querySelector("input[type=file]"); const b = i && i.closest(".block"); return !!b && b.querySelectorAll("img").length > 0; }"""

# What ran, per visible card: the engine label and its reason (the tooltip)
ENGINES = """() => Object.fromEntries([...document.querySelectorAll(".wb-card")].filter((c) => c.offsetParent !== null)
  .map((c) => [c.id.replace("wb-card-", ""), [(c.querySelector(".wb-engine") || {}).innerText || "", (c.querySelector(".wb-engine") || {title: ""}).title]]))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, engine: str, env: dict, timeout_s: float = 600, nice: int = 0) -> subprocess.Popen:
    """``python app.py --port PORT --engine ENGINE`` (at ``nice`` priority), returned once its page answers."""
    cmd = [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--engine", engine]
    proc = subprocess.Popen((["nice", "-n", str(nice)] if nice else []) + cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app (--engine {engine}) exited with code {proc.returncode} before answering")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return proc
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"the app did not answer within {timeout_s:g} s")


def time_engine(engine: str, image: str, archs: list[str], repeats: int, chromium: str, env: dict, warm_timeout_s: float, nice: int = 0) -> dict:
    from playwright.sync_api import sync_playwright

    port = free_port()
    t = time.time()
    proc = start_app(port, engine, env, nice=nice)
    started_s = time.time() - t
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("text=Segment", timeout=120_000)
            page.locator("input[type=file]").first.set_input_files(image)
            page.wait_for_function(UPLOADED, timeout=120_000)
            for box in page.locator(".wb-archs").locator("input[type=checkbox]").all():
                if (box.locator("xpath=..").inner_text().strip() in archs) != box.is_checked():
                    box.click()
            warm = 0
            deadline = time.time() + warm_timeout_s
            while True:  # loads every model; under auto, until the measured engines run
                done = page.evaluate(PROBE, len(archs))["last"] is not None
                warm += 1
                ran = page.evaluate(ENGINES)
                if (done and not any("standing in" in why for _, why in ran.values())) or time.time() > deadline:
                    break
                page.wait_for_timeout(5000)
            marks = []
            while len(marks) < repeats and time.time() < deadline + 600:
                page.wait_for_timeout(500)
                m = page.evaluate(PROBE, len(archs))
                if m["last"] is not None:
                    marks.append(m)
            ran = page.evaluate(ENGINES)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "engine_asked": engine,
        "allocator": env.get("WORKBENCH_ALLOCATOR") or "default",
        "server_nice": nice,
        "engines_ran": {name: label for name, (label, _) in ran.items()},
        "still_standing_in": sorted(name for name, (_, why) in ran.items() if "standing in" in why),
        "app_start_s": round(started_s, 1),
        "load_average_1min": round(os.getloadavg()[0], 1),  # of the whole machine, as the timed requests ended
        "warm_up_requests": warm,
        "running_ms": statistics.median(m["running"] for m in marks),
        "first_card_ms": statistics.median(m["first"] for m in marks),
        "last_card_ms": statistics.median(m["last"] for m in marks),
        "runs": marks,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"# Compare in the browser: click to first and last card ({len(result['archs'])} models)",
        "",
        f"Machine: {machine_line(result['machine'])}; ISA {result['machine']['isa']}, native bf16 {result['machine']['bf16']}",
        "",
        f"Image `{Path(result['image']).name}` (CamVid test), models {', '.join(result['archs'])}; the app started as "
        f"`python app.py --engine E` (example cache {'on' if result['example_cache'] else 'off: every request does the work'}); "
        f"headless Chromium; median of {result['repeats']} requests after the warm-up. Reproduce: "
        + "; ".join(f"`{c}`" for c in result["commands"]),
        "",
        "| engine asked | WORKBENCH_ALLOCATOR | app's nice | what ran | every card says running | first card (mask shown) | last card | warm-up requests | machine load (1 min) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["engines"]:
        ran = ", ".join(f"{n} {e}" for n, e in r["engines_ran"].items())
        lines.append(f"| {r['engine_asked']} | {r['allocator']} | {r.get('server_nice', 0)} | {ran} | {r['running_ms']:.0f} ms | **{r['first_card_ms']:.0f} ms** | {r['last_card_ms']:.0f} ms | {r['warm_up_requests']} | {r['load_average_1min']} |")
    lines += ["", "Per request (ms: running / first / last; the order the cards finished in):", ""]
    for r in result["engines"]:
        for m in r["runs"]:
            lines.append(f"- {r['engine_asked']}: {m['running']:.0f} / {m['first']:.0f} / {m['last']:.0f}; {' > '.join(m['finished'])}")
    for note in result.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=None, help="default: the first CamVid test image under the data root")
    p.add_argument("--arch", nargs="+", default=list(CLASSIC))
    p.add_argument("--engine", nargs="+", default=["torch"], help="one app process per engine (default: torch)")
    p.add_argument("--allocator", default=None, help="WORKBENCH_ALLOCATOR for the app (system: needed by OpenVINO)")
    p.add_argument("--example-cache", action="store_true", help="keep the app's example cache on")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warm-timeout", type=float, default=900, help="seconds to wait for auto's measured engines")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--out", default=None, metavar="PATH", help="write PATH.json and PATH.md (an existing PATH.json with the same image and models gets these engines added)")
    p.add_argument("--server-nice", type=int, default=0, metavar="N",
                   help="start the app at nice N (e.g. 10): the browser then wins the shared cores, as when it runs on the user's own machine")
    p.add_argument("--note", default="", help="a sentence for the Markdown (e.g. how loaded the machine was)")
    args = p.parse_args()
    image = args.image or str(sorted((resolve_data_root() / "camvid" / "test").glob("*.png"))[0])
    env = dict(os.environ)
    if args.allocator:
        env["WORKBENCH_ALLOCATOR"] = args.allocator
    if not args.example_cache:
        env["WORKBENCH_EXAMPLE_CACHE"] = "0"
    result = {"machine": machine_description(), "image": image, "archs": args.arch, "example_cache": args.example_cache, "repeats": args.repeats, "commands": [], "notes": [], "engines": []}
    out = Path(args.out) if args.out else None
    if out is not None and out.with_suffix(".json").exists():
        stored = json.loads(out.with_suffix(".json").read_text())
        if (stored["image"], stored["archs"], stored["example_cache"]) == (image, args.arch, args.example_cache):
            result = stored
    result["commands"].append("python scripts/browser_timing.py " + " ".join(sys.argv[1:]))
    if args.note:
        result["notes"].append(args.note)
    for engine in args.engine:
        r = time_engine(engine, image, args.arch, args.repeats, args.chromium, env, args.warm_timeout, args.server_nice)
        result["engines"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(to_markdown(result) + "\n")
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
