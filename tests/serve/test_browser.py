"""The web page in a real browser: headless Chromium (Debian's, driven by Playwright) uploads an
image and gets an answer, and generates images and sees them. `.ci/run` installs chromium."""

from __future__ import annotations

import base64
import shutil

import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, accept_downloads=True)  # a phone screen
        page.goto(server.url + "/")
        yield page
        browser.close()


def test_upload_an_image_and_get_an_answer(page, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)
    page.set_input_files("#chat-images", str(image))
    page.fill("#chat-text", "Is there a red circle?")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    assert page.locator(".msg.user img").count() == 1
    assert page.locator(".answer").inner_text().strip()
    assert "error" not in page.locator("#chat-status").inner_text()
    # Fits the phone screen: nothing wider than the viewport.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_generate_images_and_see_them(page):
    page.click("#tab-images")
    page.fill("#image-prompt", "a red circle")
    page.fill("#image-n", "3")
    page.fill("#image-seed", "4")
    page.evaluate("""() => { window.srcChanges = 0;
        new MutationObserver(ms => { window.srcChanges += ms.filter(m => m.attributeName === 'src').length; })
          .observe(document.getElementById('gallery'), {subtree: true, attributes: true}); }""")
    page.click("#image-go")
    page.wait_for_selector("#gallery figure.final >> nth=2", timeout=60_000)
    assert page.evaluate("window.srcChanges") == 3 * 2 + 3  # two partial images each were shown, then the results
    sources = page.eval_on_selector_all("#gallery figure.final img", "els => els.map(e => e.src)")
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    widths = page.eval_on_selector_all("#gallery figure.final img", "els => els.map(e => e.naturalWidth)")
    assert widths == [64, 64, 64]
    assert page.locator("#gallery a[download]").count() == 3
    with page.expect_download() as download:
        page.click("#gallery a[download] >> nth=2")
    assert open(download.value.path(), "rb").read() == base64.b64decode(sources[2].split(",", 1)[1])
    assert "3 image(s)" in page.locator("#image-status").inner_text()
