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
        ("Receptive field", "Click a pixel"),
        ("Feature maps", "What the network computes"),
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


# Each visible card's name, whether it still says it runs, its header text and the src of the picture under each
# block label ("Mask", "Errors (...)", "Confidence (...)"); "" where that block shows no picture.
_CARDS = """() => [...document.querySelectorAll('.wb-card')].filter((c) => c.offsetParent !== null).map((card) => ({
  name: card.id.replace('wb-card-', ''),
  running: !!card.querySelector('.wb-running'),
  text: card.innerText,
  pictures: Object.fromEntries([...card.querySelectorAll('[data-testid="block-label"]')].map((label) => {
    const block = label.closest('.block');
    const img = block && block.offsetParent !== null ? block.querySelector('img') : null;
    return [label.textContent.trim(), img ? img.getAttribute('src') || '' : ''];
  })),
}))"""


def _wait_for_cards(page, condition: str, arg=None, timeout: int = 240_000) -> None:
    """Wait until ``condition`` (JS) holds; on a timeout, fail with what the cards show."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout)
    except Exception as exc:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_timeout.png"), full_page=True)
        raise AssertionError(f"{type(exc).__name__}: the cards show {page.evaluate(_CARDS)}") from exc


def _picture(cards: list[dict], name: str, label: str) -> str:
    card = next(c for c in cards if c["name"] == name)
    return next((src for key, src in card["pictures"].items() if key.startswith(label)), "")


def test_example_upload_confidence_and_downloads(server, browser, tmp_path):
    """A user's round trip: an example's click shows every preselected model's card with its scores against the
    ground truth and its error map; an uploaded photo segmented by two chosen models with the confidence view on
    shows a confidence picture per card; a card's label map downloads as an index PNG whose indices are the
    classes the card's mask shows, and the zip of all results holds every model's files."""
    import io
    import zipfile

    from workbench.classes import CAMVID_CLASSES
    from workbench.io.exports import VOID_INDEX

    page = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    page.goto(server)
    page.wait_for_selector("text=Segment", timeout=60_000)

    # (a) an example: its row fills the inputs (the preselected models) and runs Compare
    page.wait_for_function("() => document.querySelectorAll('.wb-archs input[type=checkbox]:checked').length >= 2", timeout=60_000)
    preselected = [box.locator("xpath=..").inner_text().strip() for box in page.locator(".wb-archs input[type=checkbox]").all() if box.is_checked()]
    assert len(preselected) >= 2, preselected
    examples = page.locator("tr").filter(has=page.locator("img"))
    assert examples.count() >= 1, "no example rows shown"
    examples.first.click()
    with_scores = f"""() => {{ const cards = ({_CARDS})();
        return cards.length === {len(preselected)} && cards.every((c) => !c.running && /on this image: mIoU \\d/.test(c.text)
          && Object.entries(c.pictures).some(([k, v]) => k.startsWith('Errors') && v)); }}"""
    _wait_for_cards(page, with_scores)
    cards = page.evaluate(_CARDS)
    assert sorted(c["name"] for c in cards) == sorted(preselected)
    for card in cards:
        assert re.search(r"pixel accuracy \d", card["text"]), card["text"]

    # (b) an upload (a photo without ground truth), two models, (c) the confidence view on
    rng = np.random.default_rng(2)
    photo = np.zeros((96, 128, 3), np.uint8)
    photo[:40] = [140, 170, 215]  # sky
    photo[40:70] = [110, 85, 75]  # buildings
    photo[70:] = [95, 90, 100]  # road
    photo = np.clip(photo.astype(int) + rng.integers(-12, 12, photo.shape), 0, 255).astype(np.uint8)
    upload = tmp_path / "uploaded_street.png"
    Image.fromarray(photo).save(upload)
    page.locator("input[type=file]").first.set_input_files(str(upload))
    # the input shows the uploaded file (not the example's picture) once the upload is done
    page.wait_for_function("() => [...document.querySelectorAll('img')].some((im) => (im.getAttribute('src') || '').includes('uploaded_street'))",
                           timeout=60_000)
    archs = ["fcn32s", "fcn8s"]
    for box in page.locator(".wb-archs input[type=checkbox]").all():
        if (box.locator("xpath=..").inner_text().strip() in archs) != box.is_checked():
            box.click()
    page.get_by_role("combobox", name=re.compile("Confidence view")).click()
    page.get_by_role("option", name="Max probability").click()
    assert page.get_by_role("combobox", name=re.compile("Confidence view")).input_value() == "Max probability"
    page.get_by_role("button", name="Segment").click()
    # done: exactly the two cards, finished, without ground-truth scores (the upload has none), each with a confidence picture
    with_confidence = f"""(names) => {{ const cards = ({_CARDS})();
        return JSON.stringify(cards.map((c) => c.name).sort()) === JSON.stringify([...names].sort())
          && cards.every((c) => !c.running && /latency/.test(c.text) && !/on this image/.test(c.text)
            && Object.entries(c.pictures).some(([k, v]) => k.startsWith('Confidence') && v)); }}"""
    _wait_for_cards(page, with_confidence, archs)
    cards = page.evaluate(_CARDS)
    for name in archs:
        assert _picture(cards, name, "Confidence"), cards
        assert not _picture(cards, name, "Errors"), f"{name}: an error map without ground truth: {cards}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_confidence.png"), full_page=True)

    # (d) a card's label map: an index PNG of the uploaded photo's size whose indices are the classes its mask shows
    card = page.locator("#wb-card-fcn8s")
    with page.expect_download(timeout=60_000) as info:
        card.get_by_role("button", name="Label map (index PNG)").click()
    path = info.value.path()
    assert info.value.suggested_filename.endswith(".png"), info.value.suggested_filename
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P", (im.format, im.mode)
        assert im.size == (photo.shape[1], photo.shape[0])
        labels = np.array(im)
        pal = np.asarray(im.getpalette()[: 3 * len(CAMVID_CLASSES)], np.uint8).reshape(-1, 3)
    present = set(np.unique(labels).tolist())
    assert present <= set(range(len(CAMVID_CLASSES))) | {VOID_INDEX}, present
    assert present - {VOID_INDEX}, "the label map holds no class at all"
    assert (pal == np.array([c["color"] for c in CAMVID_CLASSES], np.uint8)).all(), pal
    mask_src = _picture(cards, "fcn8s", "Mask")
    response = page.request.get(mask_src if mask_src.startswith("http") else server.rstrip("/") + "/" + mask_src.lstrip("/"))
    assert response.ok, mask_src
    mask = np.array(Image.open(io.BytesIO(response.body())).convert("RGB"))
    assert mask.shape[:2] == labels.shape
    known = labels != VOID_INDEX
    assert (mask[known] == pal[labels[known]]).mean() > 0.99, "the label map's classes are not the mask's colours"

    # the zip of all results: every model's label map, overlay and confidence view, and results.json
    button = page.get_by_role("button", name="Download all results (zip)")
    page.wait_for_function("() => [...document.querySelectorAll('button')].some((b) => /Download all results/.test(b.innerText) && !b.disabled)",
                           timeout=60_000)
    with page.expect_download(timeout=60_000) as info:
        button.click()
    with zipfile.ZipFile(info.value.path()) as zf:
        names = zf.namelist()
        summary = zf.read("results.json")
    assert "input.png" in names and b"fcn8s" in summary and b"fcn32s" in summary, names
    for name in archs:
        files = {n.rsplit("/", 1)[-1] for n in names if re.search(rf"^\d+_{name}/", n)}
        assert {"labels.png", "overlay.png", "confidence.png"} <= files, (name, names)
    page.close()


def _open_tab(browser, server: str, tab: str, text: str):
    """A new page on the app with ``tab`` open: ``(page, the tab's panel)``, once the panel shows ``text``."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server)
    page.wait_for_selector("text=Segment", timeout=60_000)
    page.get_by_role("tab", name=tab).click()
    panel = page.locator("[role=tabpanel]:visible").filter(has_text=text)
    panel.get_by_text(text).first.wait_for(timeout=60_000)
    return page, panel


def test_receptive_field_follows_a_click(server, browser, tmp_path):
    """The Receptive field tab: an uploaded image, two models, a click on the image fills the gallery and the
    table for the clicked pixel (a click, not a button, is how this view is used)."""
    rng = np.random.default_rng(3)
    photo = tmp_path / "rf_street.png"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(photo)
    page, panel = _open_tab(browser, server, "Receptive field", "Click a pixel")
    for name in ("dilated", "unet"):  # keep naive and fcn8s: the test stays cheap
        box = panel.get_by_label(name, exact=True)
        if box.is_checked():
            box.uncheck()
    panel.locator("input[type=file]").first.set_input_files(str(photo))
    image = panel.locator(".wb-rf-picker img[src*='rf_street']").first
    image.wait_for(timeout=60_000)
    page.wait_for_function("(im) => im.complete && im.naturalWidth > 0", arg=image.element_handle(), timeout=60_000)
    # the picture is drawn centred in its frame, scaled down to fit (never up): click its pixel (120, 30)
    bbox = image.bounding_box()
    nw, nh = image.evaluate("(im) => [im.naturalWidth, im.naturalHeight]")
    r = min(bbox["width"] / nw, bbox["height"] / nh, 1)
    page.mouse.click(bbox["x"] + (bbox["width"] - nw * r) / 2 + 120 * r, bbox["y"] + (bbox["height"] - nh * r) / 2 + 30 * r)
    panel.get_by_text(re.compile(r"Pixel \(\d+, \d+\) of the image at 160x120")).first.wait_for(timeout=240_000)
    text = panel.inner_text()
    x, y = map(int, re.search(r"Pixel \((\d+), (\d+)\)", text).groups())
    assert abs(x - 120) <= 8 and abs(y - 30) <= 8, (x, y)  # the clicked pixel, in the image's own coordinates
    assert "17 x 17 px" in text  # the naive stack's field
    assert re.search(r"fcn8s.*\d+ x \d+ px|fcn8s.*whole image", text)
    page.screenshot(path=str(ARTIFACTS / "browser_receptive_field_click.png"), full_page=True)
    page.close()


def test_evaluate_an_uploaded_zip(server, browser, tmp_path):
    """The Evaluate tab: upload a zip of images/ + masks/, run two models, the per-image table fills, and
    "Open in Compare" shows the Compare tab with that image as its input."""
    import io
    import zipfile

    def png(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    rng = np.random.default_rng(5)
    upload = tmp_path / "labelled.zip"
    with zipfile.ZipFile(upload, "w") as zf:
        for i in range(2):
            img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
            mask = np.zeros((64, 80), np.uint8)
            mask[32:] = 3
            zf.writestr(f"images/scene{i}.png", png(img))
            zf.writestr(f"masks/scene{i}.png", png(mask))
    page, panel = _open_tab(browser, server, "Evaluate", "Score several models")
    panel.get_by_label("Upload a zip (images/ + masks/)").check()
    panel.locator("input[type=file]").first.set_input_files(str(upload))
    panel.get_by_text("labelled.zip").first.wait_for(timeout=60_000)
    panel.get_by_role("button", name="Evaluate", exact=True).click()
    panel.get_by_text("Evaluated 2 of 2").first.wait_for(timeout=240_000)
    text = panel.locator("#wb-eval-table").inner_text()
    assert "scene0" in text and "scene1" in text and "disagreement" in text, text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_evaluate.png"), full_page=True)
    panel.get_by_role("button", name="Open in Compare").click()
    page.locator("button[role=tab][aria-selected=true]", has_text="Compare").first.wait_for(timeout=60_000)
    page.locator("[role=tabpanel]:visible img[src*='scene']").first.wait_for(timeout=60_000)  # the table's first image
    page.close()


def test_own_checkpoint_joins_compare_and_evaluate(server, browser, street, tmp_path):
    """Compare's "Add your own checkpoint": upload a manifest + weights, the model gets a checkbox in Compare and in
    Evaluate and its own card when Compare runs; another session (a new page) does not see it."""
    import workbench
    from workbench.classes import CAMVID_CLASSES

    from conftest import make_tiny_model

    ckpt = workbench.save_checkpoint(tmp_path / "mine", make_tiny_model("fcn32s", num_classes=11), {"classes": CAMVID_CLASSES})
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(server)
    page.wait_for_selector("text=Segment", timeout=60_000)
    files = page.locator("#wb-own-files")
    for _ in range(5):  # a click before the page has hydrated may not open the accordion: try again
        page.get_by_text("Add your own checkpoint").first.click()
        try:
            files.wait_for(state="visible", timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - still closed
            continue
    files.wait_for(state="visible", timeout=10_000)
    page.locator("#wb-own-files input[type=file]").set_input_files([str(ckpt), str(ckpt.with_suffix(".safetensors"))])
    files.get_by_text("mine.safetensors").first.wait_for(timeout=60_000)
    page.locator("#wb-own").get_by_role("button", name="Add", exact=True).click()
    page.get_by_text("Yours, for this session only").first.wait_for(timeout=120_000)
    label = "fcn32s · yours (mine)"
    group = page.locator(".wb-archs")
    for box in group.locator("input[type=checkbox]").all():  # keep fcn8s and the upload: a cheap run
        name = box.locator("xpath=..").inner_text().strip()
        if (name in ("fcn8s", label)) != box.is_checked():
            box.click()
    page.locator("input[type=file]").first.set_input_files(street)
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Segment").click()
    own_card = page.locator("#wb-card-own0")
    own_card.locator(".wb-latency").wait_for(timeout=180_000)
    assert "your checkpoint" in own_card.inner_text()
    page.wait_for_function("(card) => [...card.querySelectorAll('img')].filter((im) => im.complete && im.naturalWidth > 0).length >= 2",
                           arg=own_card.element_handle(), timeout=120_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser_own_checkpoint.png"), full_page=True)
    page.get_by_role("tab", name="Evaluate").click()
    panel = page.locator("[role=tabpanel]:visible").filter(has_text="Score several models")
    panel.get_by_label(label, exact=True).wait_for(timeout=60_000)
    other, _ = _open_tab(browser, server, "Evaluate", "Score several models")  # another session
    assert other.get_by_label(label, exact=True).count() == 0
    other.close()
    page.close()
