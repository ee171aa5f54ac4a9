"""Hostile and careless clients (issue 23): each finding of the red-team, over a real socket.

Every test here failed on the server before the fix: caps checked before any work, admission
before image decoding, a server-wide pixel budget, disconnects that cancel non-streaming
requests, bounded metric labels, 400s instead of 500s, greedy-in-the-limit sampling, a Host
allow-list, JSON-only POSTs, read timeouts, strict types and OpenAI's 404 for a model.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import pytest
from PIL import Image

from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import ImageRequest
from openjanus.serve.protocol import ServeSettings
from serve import Server

CHAT, IMAGES = "/v1/chat/completions", "/v1/images/generations"


def engine_config(**kw) -> EngineConfig:
    return EngineConfig(**kw)


def error(response: httpx.Response, status: int) -> dict:
    """The OpenAI error object of `response`, which must have `status` and no internals."""
    assert response.status_code == status, response.text[:500]
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
    return err


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def ask(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def hello(**kw) -> dict:
    return {"model": "janus-shapes", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, **kw}


def counter(server, name: str) -> float:
    """The sum of a Prometheus counter's samples on /metrics."""
    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + "_total") or line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_idle(pipe: JanusPipeline, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while pipe.engine.running or pipe.engine.queue_depth:
        assert time.time() < deadline, "the engine did not go idle"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def open_server(demo_pipe):
    """The demo model with the default limits (20 MB bodies)."""
    with Server(demo_pipe, ServeSettings(model_id="janus-shapes")) as s:
        yield s


# --- 1. caps checked before tokenizing ------------------------------------------------------------


def test_a_huge_message_is_refused_before_tokenizing(open_server, demo_pipe, monkeypatch):
    calls = []
    encode = demo_pipe.processor.encode_chat
    monkeypatch.setattr(demo_pipe.processor, "encode_chat", lambda *a, **k: calls.append(1) or encode(*a, **k))
    text = "a red circle " * 400_000  # 5.2 MB of text, well within the body limit
    started = time.perf_counter()
    r = httpx.post(open_server.url + CHAT, json={"messages": [{"role": "user", "content": text}]}, timeout=60)
    err = error(r, 400)
    assert err["code"] == "string_above_max_length" and err["param"] == "messages[0].content"
    assert calls == [] and time.perf_counter() - started < 5
    # The same cap on text parts, and on the text of all messages together.
    r = httpx.post(open_server.url + CHAT, json={"messages": ask(text[:2_000_000])}, timeout=60)
    assert error(r, 400)["code"] == "string_above_max_length"
    many = [{"role": "user", "content": "x" * 30_000}] * 40
    assert error(httpx.post(open_server.url + CHAT, json={"messages": many}, timeout=60), 400)["code"] == \
        "string_above_max_length"
    assert calls == []


def test_too_many_messages_are_refused(open_server):
    body = {"messages": [{"role": "user", "content": ""}] * 100_000}
    started = time.perf_counter()
    err = error(httpx.post(open_server.url + CHAT, json=body, timeout=60), 400)
    assert err["code"] == "array_above_max_length" and err["param"] == "messages"
    assert time.perf_counter() - started < 5


def test_a_long_text_does_not_freeze_health(open_server):
    text = "a red circle " * 1_400_000  # 18 MB
    box = {}

    def post():
        box["r"] = httpx.post(open_server.url + CHAT, json={"messages": [{"role": "user", "content": text}]},
                              timeout=120)

    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.5)
    worst = 0.0
    while t.is_alive():
        started = time.perf_counter()
        httpx.get(open_server.url + "/health", timeout=60)
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.05)
    assert box["r"].status_code in (400, 413)
    assert worst < 2.0, f"/health took {worst:.1f} s while a long message was handled"


# --- 2. images: admission before decoding, a pixel budget for the whole server --------------------


def test_a_full_queue_answers_429_before_decoding_images():
    pipe = JanusPipeline.load(None, device="cpu", dtype="float32")
    pipe.start_engine(engine_config(rows=2, queue=1))
    broken = png(Image.new("RGB", (64, 64), "red"))[:60]  # a valid header, truncated data
    with Server(pipe, ServeSettings(model_id="janus-shapes")) as s:
        running = pipe.submit(ImageRequest("a red circle", n=8, seed=0))
        for _ in running:  # the first chunk runs
            break
        queued = pipe.submit(ImageRequest("a blue square", seed=1))  # fills the queue
        try:
            r = httpx.post(s.url + CHAT, json={"messages": ask("what is this?", data_url(broken))}, timeout=60)
            err = error(r, 429)
            assert r.headers["retry-after"]
            assert err["type"] == "rate_limit_error"
        finally:
            running.cancel()
            queued.cancel()
    pipe.engine.close()


def test_a_server_wide_pixel_budget_bounds_concurrent_image_work(demo_pipe, monkeypatch):
    import openjanus.images

    opened = openjanus.images.open_image
    gate = threading.Event()

    def slow_open(raw, *a, **k):  # holds the first request inside image decoding
        gate.wait(30)
        return opened(raw, *a, **k)

    monkeypatch.setattr(openjanus.images, "open_image", slow_open)
    big = data_url(png(Image.new("RGB", (600, 600), "red")))  # 360,000 pixels
    settings = ServeSettings(model_id="janus-shapes", max_pixels_in_flight=500_000)
    with Server(demo_pipe, settings) as s:
        box = {}
        first = threading.Thread(target=lambda: box.setdefault("r", httpx.post(
            s.url + CHAT, json={"messages": ask("?", big), "max_tokens": 2}, timeout=60)))
        first.start()
        time.sleep(1.0)
        r = httpx.post(s.url + CHAT, json={"messages": ask("?", big), "max_tokens": 2}, timeout=60)
        err = error(r, 429)
        assert err["code"] == "image_budget_exceeded" and r.headers["retry-after"]
        gate.set()
        first.join()
        assert box["r"].status_code == 200, box["r"].text
        # The budget is back once the first request's images are encoded.
        assert httpx.post(s.url + CHAT, json={"messages": ask("?", big), "max_tokens": 2},
                          timeout=60).status_code == 200


def test_a_request_whose_images_exceed_the_whole_budget_is_413(demo_pipe):
    settings = ServeSettings(model_id="janus-shapes", max_pixels_in_flight=500_000)
    big = data_url(png(Image.new("RGB", (600, 600), "red")))
    with Server(demo_pipe, settings) as s:
        err = error(httpx.post(s.url + CHAT, json={"messages": ask("?", big, big)}, timeout=60), 413)
        assert err["code"] == "image_too_large"


def test_a_data_url_whose_bytes_are_not_its_type_is_400(open_server):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="JPEG")
    err = error(httpx.post(open_server.url + CHAT, json={"messages": ask("?", data_url(buf.getvalue()))}), 400)
    assert err["code"] == "invalid_image_format" and "JPEG" in err["message"]


# --- 3. a client that leaves cancels a non-streaming request ------------------------------------------


def _post_and_leave(url: str, path: str, body: dict, after: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
        time.sleep(after)


def test_a_client_that_leaves_cancels_its_non_streaming_request(open_server, demo_pipe):
    wait_idle(demo_pipe)
    images_before = counter(open_server, "openjanus_generated_images")
    threads = [threading.Thread(target=_post_and_leave, args=(open_server.url, IMAGES,
                                                               {"prompt": f"a red circle {i}", "n": 8}, 0.3))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)
    wait_idle(demo_pipe)
    assert counter(open_server, "openjanus_generated_images") == images_before, "the requests ran to the end"


# --- 5. bounded metric labels --------------------------------------------------------------------


def test_metric_labels_are_route_templates_not_raw_paths(demo_pipe):
    with Server(demo_pipe, ServeSettings(model_id="janus-shapes", api_key="k")) as s:
        size_before = len(httpx.get(s.url + "/metrics").text)
        with httpx.Client(base_url=s.url) as c:
            for i in range(300):
                c.get(f"/v1/probe-{i}/x")  # 401 (no key)
                c.get(f"/v1/models/m{i}", headers={"Authorization": "Bearer k"})  # 404
        text = httpx.get(s.url + "/metrics").text
    assert "probe-" not in text and "/v1/models/m1" not in text
    assert 'endpoint="/v1/models/{model_id}"' in text
    assert len(text) - size_before < 2_000


# --- 6. 500s that were bad requests; sampling at tiny temperatures --------------------------------------


@pytest.mark.parametrize("raw", [
    b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "a \\udfff b"}]}], "max_tokens": 2}',
    b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
], ids=["surrogate", "surrogate-part", "deep-nesting", "5000-digits", "overflow", "nan"])
def test_malformed_chat_bodies_are_400_not_500(open_server, raw):
    r = httpx.post(open_server.url + CHAT, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    error(r, 400)


@pytest.mark.parametrize("raw", [
    b'{"prompt": "a red \\ud800 circle"}',
    b'{"prompt": "a red circle", "seed": ' + b"1" * 5000 + b"}",
    b'{"prompt": "a red circle", "n": 1.0}',
], ids=["surrogate", "5000-digits", "float-n"])
def test_malformed_image_bodies_are_400_not_500(open_server, raw):
    r = httpx.post(open_server.url + IMAGES, content=raw, headers={"Content-Type": "application/json"}, timeout=60)
    error(r, 400)


def test_a_tiny_temperature_is_greedy_not_token_zero(open_server):
    body = {"messages": [{"role": "user", "content": "what shape is red?"}], "max_tokens": 8, "seed": 3}
    greedy = httpx.post(open_server.url + CHAT, json={**body, "temperature": 0}, timeout=60).json()
    tiny = httpx.post(open_server.url + CHAT, json={**body, "temperature": 1e-300}, timeout=60)
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    assert tiny.json()["usage"] == greedy["usage"]
    image = {"prompt": "a red circle", "seed": 3}
    g = httpx.post(open_server.url + IMAGES, json={**image, "temperature": 0}, timeout=60).json()
    t = httpx.post(open_server.url + IMAGES, json={**image, "temperature": 1e-300}, timeout=60)
    assert t.status_code == 200, t.text
    assert t.json()["data"][0]["b64_json"] == g["data"][0]["b64_json"]


@pytest.mark.parametrize("field,value,param", [
    ("stream", "yes", "stream"),
    ("stream", 1, "stream"),
    ("max_completion_tokens", 0, "max_completion_tokens"),
    ("max_tokens", 0, "max_tokens"),
    ("seed", 1.5, "seed"),
    ("stream_options", "x", "stream_options"),
    ("stop", 5, "stop"),
    ("user", 5, "user"),
])
def test_strict_types_on_chat(open_server, field, value, param):
    err = error(httpx.post(open_server.url + CHAT, json=hello(**{field: value})), 400)
    assert err["param"] == param


@pytest.mark.parametrize("field,value", [("stream", "yes"), ("partial_images", True), ("guidance_scale", "5")])
def test_strict_types_on_images(open_server, field, value):
    err = error(httpx.post(open_server.url + IMAGES, json={"prompt": "a red circle", field: value}), 400)
    assert err["param"] == field


def test_an_unknown_model_is_404_in_openai_shape(open_server):
    for path, body in ((CHAT, hello(model="gpt-4o")), (IMAGES, {"prompt": "a star", "model": "dall-e-3"})):
        err = error(httpx.post(open_server.url + path, json=body), 404)
        assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "invalid_request_error"
    assert httpx.post(open_server.url + CHAT, json=hello()).status_code == 200
    assert httpx.post(open_server.url + CHAT, json={k: v for k, v in hello().items() if k != "model"}).status_code \
        == 200  # a client that leaves it out gets the one model served


# --- Host allow-list, JSON only, origins ---------------------------------------------------------------


def test_a_foreign_host_header_is_refused(open_server):
    port = open_server.port
    for host in ("evil.example", f"evil.example:{port}", "attacker.test:80"):
        err = error(httpx.get(open_server.url + "/v1/models", headers={"Host": host}), 400)
        assert err["code"] == "invalid_host"
        error(httpx.post(open_server.url + CHAT, json=hello(), headers={"Host": host}), 400)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        assert httpx.get(open_server.url + "/v1/models", headers={"Host": host}).status_code == 200


def test_posts_must_be_json(open_server):
    raw = json.dumps(hello()).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": kind} if kind else {}
        r = httpx.post(open_server.url + CHAT, content=raw, headers=headers)
        assert error(r, 415)["code"] == "unsupported_media_type"
    r = httpx.post(open_server.url + CHAT, content=raw, headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_a_cross_site_origin_is_refused(open_server):
    err = error(httpx.post(open_server.url + CHAT, json=hello(), headers={"Origin": "https://evil.example"}), 403)
    assert err["code"] == "invalid_origin"
    same = httpx.post(open_server.url + CHAT, json=hello(), headers={"Origin": open_server.url})
    assert same.status_code == 200  # the server's own page


# --- slow clients ---------------------------------------------------------------------------------


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port))


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing `sock`; fails if it is still open after `seconds`."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        pytest.fail(f"the server kept a slow client for more than {seconds} s")
    return got


def test_slow_headers_and_bodies_are_timed_out(demo_pipe):
    settings = ServeSettings(model_id="janus-shapes", header_timeout_s=1.0, body_timeout_s=1.0)
    with Server(demo_pipe, settings) as s:
        headers = _connect(s)
        headers.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        silent = _connect(s)  # connects, sends nothing
        body = _connect(s)
        body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"messages\"")
        started = time.perf_counter()
        _closed_within(headers, 5)
        _closed_within(silent, 5)
        answer = _closed_within(body, 5)
        assert b" 408 " in answer.split(b"\r\n")[0] and b"request_timeout" in answer
        assert time.perf_counter() - started < 5
        for sock in (headers, silent, body):
            sock.close()
        assert httpx.get(s.url + "/health").status_code == 200
