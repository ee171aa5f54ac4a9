"""Every error case answers in OpenAI's shape with the right status, through the official client,
and never disturbs the requests running beside it."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from openjanus.engine import EngineConfig
from openjanus.pipeline import JanusPipeline
from openjanus.requests import ImageRequest
from openjanus.serve import ServeConfig, create_app
from openjanus.serve.convert import ImageLimits
from serve_helpers import data_url, pixels, running, scene

MODEL = "tiny"


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def bomb() -> str:
    """A 20000 x 20000 PNG (400 megapixels) that is only a few tens of kB encoded."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG", optimize=True)
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def expect(status: int, fn, param: str | None = "", code: str | None = "", words: str = ""):
    with pytest.raises(openai.APIStatusError) as info:
        fn()
    e = info.value
    assert e.status_code == status, (e.status_code, e.body)
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if param != "":
        assert body["error"]["param"] == param, body
    if code != "":
        assert body["error"]["code"] == code, body
    assert words.lower() in body["error"]["message"].lower(), body
    assert "Traceback" not in e.response.text
    return e


def test_bad_requests_are_400_and_disturb_nothing(client, base_url, pipe):
    chat = client.chat.completions.create
    reference = client.images.generate(prompt="a yellow circle", n=2, extra_body={"seed": 9})
    done: dict = {}

    def good():  # runs while the bad requests arrive
        done["events"] = list(client.images.generate(prompt="a yellow circle", n=2, stream=True, partial_images=1,
                                                     extra_body={"seed": 9}))

    worker = threading.Thread(target=good)
    worker.start()
    expect(400, lambda: chat(model=MODEL, messages=user(text("hi")), temperature="hot"), param="temperature")
    expect(400, lambda: chat(model=MODEL, messages=[]), param="messages")
    expect(400, lambda: chat(model=MODEL, messages=user(text("hi")), tools=[{"type": "function", "function": {
        "name": "f", "parameters": {}}}]), param="tools", code="unsupported_parameter")
    expect(400, lambda: chat(model=MODEL, messages=user(text("hi")), n=2), param="n")
    expect(400, lambda: chat(model=MODEL, messages=[{"role": "assistant", "content": "hi"}]), words="last message")
    # Images: not base64, not an image, a format that is not accepted, a web URL.
    expect(400, lambda: chat(model=MODEL, messages=user(image_part("data:image/png;base64,@@@"), text("?"))),
           param="messages.[0].content.[0].image_url", code="invalid_image_url")
    expect(400, lambda: chat(model=MODEL, messages=user(
        image_part("data:image/png;base64," + base64.b64encode(b"not an image").decode()), text("?"))),
        code="invalid_image")
    bmp = io.BytesIO()
    scene().save(bmp, format="BMP")
    expect(400, lambda: chat(model=MODEL, messages=user(
        image_part("data:image/png;base64," + base64.b64encode(bmp.getvalue()).decode()), text("?"))),
        code="invalid_image_format", words="BMP")
    expect(400, lambda: chat(model=MODEL, messages=user(image_part("https://example.com/cat.png"), text("?"))),
           code="invalid_image_url", words="data URL")
    # Longer than the context, as a prompt or with max_tokens.
    expect(400, lambda: chat(model=MODEL, messages=user(text("word " * 600))), code="context_length_exceeded")
    expect(400, lambda: chat(model=MODEL, messages=user(text("hi")), max_tokens=100_000), words="max_new_tokens")
    expect(400, lambda: client.images.generate(prompt="shape " * 600), code="context_length_exceeded")
    # Images endpoint fields.
    expect(400, lambda: client.images.generate(prompt="x", size="1024x1024"), param="size",
           words=f"{pipe.image_size}x{pipe.image_size}")
    expect(400, lambda: client.images.generate(prompt="x", n=65), param="n", words="64")
    expect(400, lambda: client.images.generate(prompt="x", n=0), param="n")
    expect(400, lambda: client.images.generate(prompt="x", response_format="url"), param="response_format")
    expect(400, lambda: client.images.generate(prompt="x", extra_body={"guidance_scale": "big"}),
           param="guidance_scale")
    expect(400, lambda: client.images.generate(prompt="x", partial_images=5, stream=True), param="partial_images")
    # 404: unknown model, unknown URL; 413: a decompression bomb.
    expect(404, lambda: chat(model="gpt-4o", messages=user(text("hi"))), param="model", code="model_not_found")
    r = httpx.post(f"{base_url}/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (POST /v1/nothing)"
    expect(413, lambda: chat(model=MODEL, messages=user(image_part(bomb()), text("?"))), code="image_too_large",
           words="400000000 pixels")
    worker.join(60)
    got = [e for e in done["events"] if e.type == "image_generation.completed"]
    assert [pixels(e.b64_json).tolist() for e in got] == [pixels(d.b64_json).tolist() for d in reference.data]


def test_api_key_and_size_limits(pipe):
    config = ServeConfig(api_key="sekrit", max_body_bytes=200_000,
                         images=ImageLimits(max_pixels=40 * 40, max_bytes=50_000))
    with running(create_app(pipe, config)) as url:
        def client(key):
            return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)

        expect(401, lambda: client("wrong").models.list(), code="invalid_api_key")
        r = httpx.get(f"{url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/health").status_code == 200  # no key needed to see it is up
        ok = client("sekrit")
        assert ok.models.list().data[0].id == MODEL
        # Over the body limit, with a declared length and chunked (no length).
        expect(413, lambda: ok.images.generate(prompt="x" * 300_000), code="request_too_large")
        chunks = (b'{"prompt": "' + b"x" * 50_000 for _ in range(6))
        r = httpx.post(f"{url}/v1/images/generations", content=chunks, headers={"Authorization": "Bearer sekrit"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # Over the pixel limit, and over the encoded-size limit.
        expect(413, lambda: ok.chat.completions.create(model=MODEL, messages=user(
            image_part(data_url(scene(size=41))), text("?"))), code="image_too_large")
        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
        big = data_url(noise.resize((39, 39)), "PNG")
        assert ok.chat.completions.create(model=MODEL, messages=user(image_part(big), text("?")), max_tokens=2)


def test_queue_full_is_429_with_retry_after():
    small = JanusPipeline.load("tiny")
    engine = small.start_engine(EngineConfig(max_rows=2, max_queue=1))
    try:
        with running(create_app(small)) as url:
            long = small.submit(ImageRequest("fill the batch", n=200, seed=0))  # 200 chunks of one image
            deadline = time.monotonic() + 10
            while engine.running == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            waiting = small.submit(ImageRequest("wait in the queue", seed=0))
            assert engine.queue_depth == 1
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            e = expect(429, lambda: c.images.generate(prompt="one more"), code="rate_limit_exceeded")
            assert e.response.headers["Retry-After"] == "1"
            long.cancel()
            waiting.cancel()
            assert c.images.generate(prompt="after", extra_body={"seed": 1}).data  # room again
    finally:
        engine.close()


def test_internal_errors_are_500_without_details(monkeypatch):
    small = JanusPipeline.load("tiny")

    def broken(request):
        raise RuntimeError("secret internals /home/x/model.py")

    monkeypatch.setattr(small, "submit", broken)
    with running(create_app(small)) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        e = expect(500, lambda: c.images.generate(prompt="x"), code="internal_error")
        assert "secret" not in e.response.text
        assert httpx.get(f"{url}/health").status_code == 200  # the server is still up
    small.engine.close()
