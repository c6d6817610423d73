"""End to end in a real browser: Debian's headless Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("WORKBENCH_ARTIFACTS", ROOT / "artifacts"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium package (apt-get install chromium; .ci/run does this)"),
]

sys.path.insert(0, str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def server():
    import screenshot

    port = screenshot.free_port()
    proc = screenshot.start_app(port)
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    import screenshot

    with sync_api.sync_playwright() as pw:
        b = screenshot.launch_browser(pw, CHROMIUM)
        yield b
        b.close()


@pytest.fixture()
def street(tmp_path) -> str:
    rng = np.random.default_rng(1)
    img = np.zeros((120, 160, 3), np.uint8)
    img[:50] = [135, 170, 220]
    img[50:85] = [120, 90, 80]
    img[85:] = [90, 90, 95]
    img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "street.png"
    Image.fromarray(img).save(path)
    return str(path)


def test_compare_in_the_browser(server, browser, street):
    import screenshot

    page = browser.new_page(viewport={"width": 1300, "height": 900})
    archs = ["fcn8s", "unet", "naive"]
    screenshot.run_compare(page, server, street, archs)
    cards = page.locator(".wb-card:visible")
    assert cards.count() == len(archs)
    for i in range(cards.count()):
        card = cards.nth(i)
        assert "ms" in card.locator(".wb-latency").inner_text()
        assert card.locator("img").count() >= 2  # mask and overlay
    assert "agree on" in page.inner_text("body")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_compare.png"), full_page=True)

    # every tab opens and shows its content
    for tab, text in [
        ("Task representation", "one probability map per class"),
        ("Architectures", "feature maps stage by stage"),
        ("Upsampling", "every way to grow a feature map"),
        ("Leaderboard", "numbers on the same split|published reference numbers"),
        ("Loss weighting", "border weighting"),
    ]:
        page.get_by_role("tab", name=tab).click()
        page.get_by_text(re.compile(text, re.I)).first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / f"browser_{tab.lower().replace(' ', '_')}.png"), full_page=True)
    page.close()


def test_bad_upload_shows_an_error(server, browser, tmp_path):
    import screenshot

    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server)
    page.wait_for_selector("text=Segment", timeout=60_000)
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Segment").click()
    page.wait_for_function(
        "() => /is not an image file/.test(document.body.innerText)",
        timeout=60_000,
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_bad_upload.png"), full_page=True)
    page.close()


# Installed before the click: for every card, the time its header first said "running", the time its mask first
# showed (after that), which other cards still said "running" at that moment, every picture seen on it while it said
# running and when each picture first showed, from DOM mutations (a state that lasts one frame is still seen).
# ``window.__wbSeen = {}`` starts a new record.
_WATCH_CARDS = """() => {
  window.__wbSeen = {};
  const now = () => performance.now();
  const srcs = (card) => [...card.querySelectorAll('img')].map((im) => im.getAttribute('src') || '');
  const look = () => {
    const cards = [...document.querySelectorAll('.wb-card')];
    for (const card of cards) {
      const name = card.id.replace('wb-card-', '');
      const seen = window.__wbSeen[name] = window.__wbSeen[name] || {running: null, mask: null, still_running: null, while_running: [], first_seen: {}};
      const running = !!card.querySelector('.wb-running');
      if (seen.running === null && running) seen.running = now();
      if (seen.running !== null) for (const s of srcs(card)) if (!(s in seen.first_seen)) seen.first_seen[s] = now();
      if (seen.running !== null && seen.mask === null && running) for (const s of srcs(card)) if (!seen.while_running.includes(s)) seen.while_running.push(s);
      if (seen.running !== null && seen.mask === null && card.querySelector('.wb-latency') && !running && card.querySelector('img')) {
        seen.mask = now();
        seen.still_running = cards.filter((c) => c !== card && c.querySelector('.wb-running')).map((c) => c.id.replace('wb-card-', ''));
      }
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def test_compare_streams_each_card_as_its_model_finishes(server, browser):
    """Every selected card first says it is running; the fast model's card shows its mask while the slow one
    (the Tiramisu, run last: the fastest expected go first) still says it is running; the cards keep the page's
    order (that of the checkboxes), not the order the models ran in. Measured on the second request (the first
    loads the models), which starts while the first request's finished cards are still on the page."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    archs = ["dilated", "fcn8s", "tiramisu"]  # fcn8s is expected fastest: it runs first, its card is not first
    # two shipped CamVid examples (ground truth: error maps too); the second request's pictures differ from the first's
    street, other = sorted((ROOT / "workbench" / "examples" / "camvid" / "test").glob("*.png"))[:2]
    page.goto(server)
    page.wait_for_selector("text=Segment", timeout=60_000)
    page.evaluate(_WATCH_CARDS)
    page.locator("input[type=file]").first.set_input_files(str(street))
    page.wait_for_timeout(1500)
    boxes = page.locator(".wb-archs").locator("input[type=checkbox]").all()
    labels = [box.locator("xpath=..").inner_text().strip() for box in boxes]
    for box, label in zip(boxes, labels):
        if (label in archs) != box.is_checked():
            box.click()
    # Done when each of this request's cards has shown its mask after saying it runs (the previous request's
    # finished cards are still on the page when the next click is made, so they cannot be what is waited for).
    done = "(names) => names.every((n) => window.__wbSeen[n] && window.__wbSeen[n].mask !== null) && /agree on/.test(document.body.innerText)"
    for image in (None, other):
        if image is not None:
            page.locator("input[type=file]").first.set_input_files(str(image))
            page.wait_for_timeout(1500)
        page.evaluate("() => { window.__wbSeen = {}; }")
        page.get_by_role("button", name="Segment").click()
        page.wait_for_function(done, arg=archs, timeout=300_000)
    seen = page.evaluate("() => window.__wbSeen")
    for name in archs:
        assert seen[name]["running"] is not None, f"{name}'s card never said it was running: {seen}"
        assert seen[name]["mask"] > seen[name]["running"], seen
        final = page.evaluate("(n) => [...document.querySelectorAll(`#wb-card-${n} img`)].map((im) => im.getAttribute('src') || '')", name)
        assert len(final) == 3, final  # mask, overlay, error map
        stale = [src for src in seen[name]["while_running"] if src not in final]
        assert not stale, f"{name}'s card showed the previous request's pictures while it ran: {stale}"
        seen[name]["complete"] = max(seen[name]["first_seen"][src] for src in final)  # every picture of its own shown
    assert seen["fcn8s"]["mask"] < seen["tiramisu"]["mask"], f"the cards did not stream: {seen}"
    assert "tiramisu" in seen["fcn8s"]["still_running"], f"fcn8s's mask was not shown while the Tiramisu ran: {seen}"
    assert seen["fcn8s"]["complete"] < seen["tiramisu"]["mask"], f"fcn8s's card was not complete (error map too) while the Tiramisu ran: {seen}"
    shown = page.evaluate("() => [...document.querySelectorAll('.wb-card')].filter((c) => c.offsetParent !== null).map((c) => c.id.replace('wb-card-', ''))")
    assert shown == [label for label in labels if label in archs], shown  # the checkboxes' order
    for name in archs:  # nothing says it runs any more
        assert page.locator(f"#wb-card-{name}").locator(".wb-running").count() == 0
    page.close()
