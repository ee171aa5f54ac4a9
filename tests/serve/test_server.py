"""The HTTP server with real clients: the official `openai` package and httpx, over a socket."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import pytest
from PIL import Image

openai = pytest.importorskip("openai")

from openjanus.serve.app import ServeSettings  # noqa: E402
from serve import Server  # noqa: E402


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


RED = Image.new("RGB", (64, 64), "red")


def ask(text: str, *images: Image.Image) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_health_models_and_page(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["janus-shapes"] and models.data[0].object == "model"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "openjanus" in page.text and "viewport" in page.text


def test_chat_and_streaming_agree(server):
    c = client(server)
    full = c.chat.completions.create(model="janus-shapes", messages=ask("Is there a red circle?", RED),
                                     max_tokens=12, temperature=0, seed=1)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason in ("stop", "length")
    u = full.usage
    assert u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    stream = c.chat.completions.create(model="janus-shapes", messages=ask("Is there a red circle?", RED),
                                       max_tokens=12, temperature=0, seed=1, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == u.total_tokens


def test_multi_turn_with_two_images_and_stop(server):
    c = client(server)
    messages = ask("What is this?", RED) + [{"role": "assistant", "content": "a red square"}] + \
        ask("And this one?", Image.new("RGB", (50, 70), "blue"))
    out = c.chat.completions.create(model="m", messages=[{"role": "system", "content": "Be brief."}, *messages],
                                    max_completion_tokens=6, stop=["zzz"])
    assert out.usage.completion_tokens <= 6
    plain = c.chat.completions.create(model="m", messages=ask("hello"), max_tokens=10, temperature=0)
    if len(plain.choices[0].message.content) > 3:
        cut = plain.choices[0].message.content[2:4]
        stopped = c.chat.completions.create(model="m", messages=ask("hello"), max_tokens=10, temperature=0, stop=cut)
        assert cut not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"


def test_images_and_image_streaming(server):
    c = client(server)
    res = c.images.generate(model="m", prompt="a red circle", n=2, size="64x64", response_format="b64_json",
                            extra_body={"seed": 3, "guidance_scale": 5.0})
    assert len(res.data) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in res.data]
    assert all(im.size == (64, 64) for im in images)
    stream = c.images.generate(model="m", prompt="a red circle", n=2, stream=True, partial_images=2,
                               extra_body={"seed": 3})
    events = [e.model_dump() for e in stream]
    kinds = [e["type"] for e in events]
    assert kinds.count("image_generation.completed") == 2
    assert 1 <= kinds.count("image_generation.partial_image") <= 4
    done = [e["b64_json"] for e in events if e["type"] == "image_generation.completed"]
    assert done == [d.b64_json for d in res.data]  # same seed, same images, streamed or not


def test_same_seed_same_image_alone_and_under_load(server):
    body = {"prompt": "two blue squares", "n": 1, "seed": 11}
    alone = httpx.post(server.url + "/v1/images/generations", json=body, timeout=120).json()["data"][0]["b64_json"]
    results: list = [None] * 6

    def call(i):
        other = {"prompt": f"a green star {i}", "n": 2, "seed": i} if i % 2 else body
        results[i] = httpx.post(server.url + "/v1/images/generations", json=other, timeout=120)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results)
    for i in range(0, 6, 2):
        assert results[i].json()["data"][0]["b64_json"] == alone


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in response.text
    return err


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": ask("x"), "temperature": 5}, "temperature"),
    ("/v1/chat/completions", {"messages": ask("x"), "seed": -1}, "seed"),
    ("/v1/chat/completions", {"messages": ask("x"), "max_tokens": 100000}, None),  # longer than the context
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url",
         "image_url": {"url": "https://example.com/a.png"}}]}]}, "messages[0].content[0].image_url"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "messages[0].content[0].image_url"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url",
         "image_url": {"url": "data:image/bmp;base64,AAAA"}}]}]}, "messages[0].content[0].image_url"),
    ("/v1/images/generations", {"prompt": "x", "size": "1024x1024"}, "size"),
    ("/v1/images/generations", {"prompt": "x", "n": 0}, "n"),
    ("/v1/images/generations", {"prompt": "x", "n": 99}, "n"),
    ("/v1/images/generations", {"prompt": ""}, "prompt"),
    ("/v1/images/generations", {"prompt": "word " * 900}, "prompt"),
    ("/v1/images/generations", {"prompt": "x", "response_format": "url"}, "response_format"),
    ("/v1/images/generations", {"prompt": "x", "guidance_scale": "high"}, "guidance_scale"),
])
def test_bad_requests_are_400_in_openai_shape(server, path, body, param):
    err = error(httpx.post(server.url + path, json=body, timeout=60), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_too_long_a_request_says_context_length_exceeded(server):
    err = error(httpx.post(server.url + "/v1/chat/completions", json={"messages": ask("x"), "max_tokens": 100000},
                           timeout=60), 400)
    assert err["code"] == "context_length_exceeded" and "context" in err["message"]


def test_bad_json_404_413_and_the_openai_client_raises(server):
    error(httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=10), 400)
    error(httpx.get(server.url + "/v1/nothing"), 404)
    big = "x" * (3 * 2**20)
    error(httpx.post(server.url + "/v1/chat/completions", json={"messages": ask(big)}, timeout=30), 413)
    huge = Image.new("RGB", (1200, 1000))  # 1.2M pixels, over this server's 1M limit
    error(httpx.post(server.url + "/v1/chat/completions", json={"messages": ask("x", huge)}, timeout=30), 413)
    with pytest.raises(openai.BadRequestError):
        client(server).images.generate(prompt="x", size="512x512")


def test_api_key_queue_full_and_internal_errors(demo_pipe, monkeypatch):
    with Server(demo_pipe, ServeSettings(api_key="sekrit")) as s:
        assert error(httpx.get(s.url + "/v1/models"), 401)["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        assert client(s, "sekrit").models.list().data
        assert httpx.get(s.url + "/health").status_code == 200  # no key needed to check health

        from openjanus.inference.engine import QueueFull

        def full(request, wait=False):
            raise QueueFull("the queue is full (64 requests waiting)")

        monkeypatch.setattr(demo_pipe.engine, "submit", full)
        r = httpx.post(s.url + "/v1/images/generations", json={"prompt": "x"},
                       headers={"Authorization": "Bearer sekrit"})
        assert error(r, 429)["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"

        def broken(request, wait=False):
            raise RuntimeError("secret internals")

        monkeypatch.setattr(demo_pipe.engine, "submit", broken)
        r = httpx.post(s.url + "/v1/images/generations", json={"prompt": "x"},
                       headers={"Authorization": "Bearer sekrit"})
        assert error(r, 500)["type"] == "server_error" and "secret" not in r.text


def test_a_client_that_disconnects_cancels_its_rows(server, demo_pipe):
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                      json={"messages": ask("hello"), "max_tokens": 400, "stream": True}) as r:
        next(r.iter_lines())  # the first chunk arrived: the request is running
    # The engine drops the request's rows; nothing is left running.
    for _ in range(100):
        if demo_pipe.engine.running == 0:
            break
        threading.Event().wait(0.05)
    assert demo_pipe.engine.running == 0


def test_metrics(server):
    httpx.post(server.url + "/v1/images/generations", json={"prompt": "a star"}, timeout=60)
    text = httpx.get(server.url + "/metrics").text
    assert "openjanus_queue_depth" in text and "openjanus_generated_images_total" in text
    assert 'openjanus_requests_total{endpoint="/v1/images/generations",status="200"}' in text
