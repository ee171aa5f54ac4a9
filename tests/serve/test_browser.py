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
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844}, accept_downloads=True)  # a phone screen
    page.goto(server.url + "/")
    yield page
    page.close()


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


@pytest.fixture
def fresh_page(server, browser):
    """A new page (no earlier chat)."""
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#chat-examples button")
    yield page
    page.close()


def test_the_page_speaks_the_models_words_and_starts_at_its_defaults(fresh_page, demo_pipe):
    page, card = fresh_page, demo_pipe.card
    assert page.get_attribute("#chat-text", "placeholder") == card.example_questions[0]
    assert page.get_attribute("#image-prompt", "placeholder") == card.example_prompts[0]
    assert page.locator("#chat-examples button").all_inner_texts() == list(card.example_questions)
    assert page.locator("#image-examples button").all_inner_texts() == list(card.example_prompts)
    # The controls start at the model's generation_config.json.
    assert [page.input_value(f"#{i}") for i in ("chat-temperature", "chat-max-tokens", "image-temperature",
                                                "image-guidance")] == ["0", "64", "1", "5"]
    # A word the model never saw: a one-line notice naming it; its own words: none.
    page.click("#tab-images")
    page.fill("#image-prompt", "a red fox in the snow")
    page.dispatch_event("#image-prompt", "input")
    notice = page.inner_text("#image-notice")
    assert "'fox', 'snow'" in notice and "\n" not in notice.strip()
    page.click("#image-examples button >> nth=0")
    assert page.input_value("#image-prompt") == card.example_prompts[0] and page.inner_text("#image-notice") == ""
    # The page's icon (headless Chromium does not fetch favicons itself): its link loads and decodes.
    width = page.evaluate("""async () => { const img = new Image();
        img.src = document.querySelector("link[rel=icon]").href; await img.decode(); return img.naturalWidth; }""")
    assert width in (16, 32) and page.get_attribute("link[rel=icon]", "href") == "/favicon.ico"


def test_the_page_answers_what_the_cli_and_python_answer(fresh_page, demo_pipe, tmp_path):
    """At the page's starting settings (the model's defaults) an example question about an image
    gets the answer the Python API gives (and so the CLI, tests/serve/test_first_hour.py)."""
    from openjanus.requests import ChatRequest
    from openjanus.shapes.tasks import sample_scene_in_split
    from openjanus.shapes.world import render, rng_for

    scene = tmp_path / "scene.png"
    render(sample_scene_in_split(rng_for(0, 9001, 2), "train", image_size=64)).save(scene)
    page = fresh_page
    page.set_input_files("#chat-images", str(scene))
    page.click("#chat-examples button >> nth=0")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant[data-done='1']", timeout=60_000)
    expected = demo_pipe.generate(ChatRequest.ask(demo_pipe.card.example_questions[0], [str(scene)])).text
    assert page.locator(".answer").inner_text().strip() == expected
