"""Screenshot the app's Compare tab in headless Chromium (Debian's package, driven by Playwright).

Usage:
    python scripts/screenshot.py --url http://127.0.0.1:7860 --image IMG --out docs/compare.jpg

The docs' pictures (a shipped CamVid test image, so the cards show ground-truth scores and error maps):
    python scripts/screenshot.py --image workbench/examples/camvid/test/0001TP_008640.png \
        --archs fcn8s unet dilated --out docs/compare.jpg
    python scripts/screenshot.py --image workbench/examples/camvid/test/0001TP_008640.png \
        --archs fcn8s unet dilated --confidence "Max probability" --quality 55 --out docs/confidence.jpg

Without --url the app is started on a free local port and stopped afterwards.
No browser is downloaded: Playwright drives /usr/bin/chromium (``--chromium`` to change).
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_app(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], cwd=ROOT)
    wait_for(f"http://127.0.0.1:{port}/")
    return proc


def launch_browser(playwright, chromium: str):
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)


# True when no card says it runs and every picture frame shown on a card holds a loaded picture.
PICTURES_SHOWN = """() => !document.querySelector('.wb-running') && [...document.querySelectorAll('.wb-card')]
  .filter((card) => card.offsetParent !== null)
  .every((card) => [...card.querySelectorAll('[data-testid="block-label"]')].map((label) => label.closest('.block'))
    .filter((block) => block && block.offsetParent !== null)
    .every((block) => { const im = block.querySelector('img'); return im && im.complete && im.naturalWidth > 0; }))"""


def run_compare(page, url: str, image: str, archs: list[str] | None = None, timeout_ms: int = 180_000, confidence: str | None = None) -> None:
    """Open the app, upload ``image``, (optionally) choose ``archs`` and a confidence view (the dropdown's label,
    e.g. "Max probability"), press Segment and wait for every card."""
    page.goto(url)
    page.wait_for_selector("text=Segment", timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(image)
    page.wait_for_timeout(1500)
    if archs is not None:
        group = page.locator(".wb-archs")
        for box in group.locator("input[type=checkbox]").all():
            name = box.locator("xpath=..").inner_text().strip()
            if (name in archs) != box.is_checked():
                box.click()
    if confidence is not None:
        page.get_by_role("combobox", name=re.compile("Confidence view")).click()
        page.get_by_role("option", name=confidence).click()
    page.get_by_role("button", name="Segment").click()
    expected = len(archs) if archs is not None else 1
    page.wait_for_function(
        f"() => document.querySelectorAll('.wb-latency').length >= {expected}",
        timeout=timeout_ms,
    )
    page.wait_for_function(PICTURES_SHOWN, timeout=timeout_ms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url")
    p.add_argument("--image", required=True)
    p.add_argument("--out", default=str(ROOT / "docs" / "compare.jpg"))
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--archs", nargs="+", help="the architectures to run (default: the app's preselection)")
    p.add_argument("--confidence", help='a confidence view to show, the dropdown\'s label: "Max probability" or "Entropy"')
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--quality", type=int, default=65, help="JPEG quality (for a .jpg/.jpeg --out)")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    proc = None
    url = args.url
    if not url:
        port = free_port()
        proc = start_app(port)
        url = f"http://127.0.0.1:{port}/"
    try:
        with sync_playwright() as pw:
            browser = launch_browser(pw, args.chromium)
            page = browser.new_page(viewport={"width": args.width, "height": 1000})
            run_compare(page, url, args.image, args.archs, confidence=args.confidence)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            jpeg = Path(args.out).suffix.lower() in (".jpg", ".jpeg")
            page.screenshot(path=args.out, full_page=True, **({"type": "jpeg", "quality": args.quality} if jpeg else {}))
            browser.close()
        print(f"wrote {args.out}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
