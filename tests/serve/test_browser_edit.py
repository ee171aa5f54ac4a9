"""The web page's edit tab in a real browser (Debian's chromium, driven by Playwright): upload
an image, drag a rectangle over the area to regenerate, prompt, and see the edited images; and
a non-square size on the images tab."""

from __future__ import annotations

import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from openjanus.shapes import render, rng_for, sample_scene  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone screen
        page.goto(server.url + "/")
        yield page
        browser.close()


def test_drag_a_rectangle_and_get_edited_images(page, tmp_path):
    image = tmp_path / "scene.png"
    render(sample_scene(rng_for(6), 64)).save(image)
    page.click("#tab-edit")
    page.set_input_files("#edit-image", str(image))
    page.wait_for_selector("#edit-canvas[data-ready='1']")
    box = page.locator("#edit-canvas").bounding_box()
    # the lower half of the picture, dragged across the canvas as shown on the phone
    page.mouse.move(box["x"] + 1, box["y"] + box["height"] / 2 + 1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.75)
    page.mouse.move(box["x"] + box["width"] - 1, box["y"] + box["height"] - 1)
    page.mouse.up()
    # the mask is at the image's own size, transparent in the dragged box only
    alpha = page.evaluate("""() => {
        const d = mask.getContext('2d').getImageData(0, 0, mask.width, mask.height).data;
        const a = [];
        for (let y = 0; y < mask.height; y += 8) a.push(d[(y * mask.width + 32) * 4 + 3]);
        return [mask.width, a]; }""")
    assert alpha[0] == 64 and alpha[1][:4] == [255] * 4 and alpha[1][5:] == [0] * 3
    page.fill("#edit-prompt", "a red circle")
    page.fill("#edit-n", "2")
    page.evaluate("""() => { window.editSrc = 0;
        new MutationObserver(ms => { window.editSrc += ms.filter(m => m.attributeName === 'src').length; })
          .observe(document.getElementById('edit-gallery'), {subtree: true, attributes: true}); }""")
    page.click("#edit-go")
    page.wait_for_selector("#edit-gallery figure.final >> nth=1", timeout=60_000)
    assert page.evaluate("window.editSrc") == 2 * 2 + 2  # two partial images each, then the results
    widths = page.eval_on_selector_all("#edit-gallery figure.final img", "els => els.map(e => e.naturalWidth)")
    assert widths == [64, 64]
    assert "2 image(s)" in page.locator("#edit-status").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def test_an_edit_without_a_mark_says_what_to_do(page):
    page.click("#tab-edit")
    page.click("#edit-clear")
    page.fill("#edit-prompt", "x")
    page.click("#edit-go")
    assert "mark the area" in page.locator("#edit-status").inner_text()


def test_a_wide_image_from_the_images_tab(page):
    page.click("#tab-images")
    page.fill("#image-prompt", "a red circle to the left of a blue square")
    page.fill("#image-n", "1")
    page.fill("#image-size", "128x64")
    page.click("#image-go")
    page.wait_for_selector("#gallery figure.final", timeout=60_000)
    assert page.eval_on_selector_all("#gallery figure.final img", "els => els.map(e => e.naturalWidth)") == [128]
    page.fill("#image-size", "100x64")
    page.click("#image-go")
    page.wait_for_selector("#image-status .error")
    assert "not a multiple of 8" in page.locator("#image-status").inner_text()
