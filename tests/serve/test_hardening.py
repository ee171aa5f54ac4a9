"""Edges of the server on the tiny preset (fast): decompression bombs, fetched image URLs when
allowed, refused OpenAI options, failures after a stream has started, requests cancelled by a
shutdown. Each answer keeps OpenAI's error shape and never shows internals."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.serve.app import ServeSettings
from serve import Server


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def ask(question: str, url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": question}]}]


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.fixture(scope="module")
def tiny():
    pipe = JanusPipeline.load("tiny")
    pipe.start_engine(EngineConfig(rows=4, queue=16))
    return pipe


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A loopback HTTP server with a small image and one over the size limit."""
    root = tmp_path_factory.mktemp("www")
    (root / "red.png").write_bytes(png(Image.new("RGB", (40, 40), (220, 20, 20))))
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    (root / "big.png").write_bytes(png(Image.fromarray(noise)))  # ~270 kB of incompressible pixels
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def test_a_decompression_bomb_is_413(tiny):
    bomb = png(Image.new("1", (20000, 20000)))  # 400 megapixels in a few tens of kB
    assert len(bomb) < 100_000
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        err = error(httpx.post(s.url + "/v1/chat/completions", json={"messages": ask("?", data_url(bomb))}), 413)
        assert err["code"] == "image_too_large" and err["param"] == "messages[0].content[0].image_url"


def test_image_urls_are_refused_unless_allowed_then_fetched_within_limits(tiny, files):
    base, root = files
    body = {"messages": ask("what colour?", f"{base}/red.png"), "temperature": 0, "max_tokens": 8}
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        assert error(httpx.post(s.url + "/v1/chat/completions", json=body), 400)["code"] == "remote_image_refused"
    with Server(tiny, ServeSettings(model_id="tiny", allow_remote_images=True, max_image_bytes=100_000)) as s:
        fetched = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=30).json()
        inline = httpx.post(s.url + "/v1/chat/completions", timeout=30, json={
            **body, "messages": ask("what colour?", data_url((root / "red.png").read_bytes()))}).json()
        assert fetched["choices"][0]["message"] == inline["choices"][0]["message"]
        assert fetched["usage"] == inline["usage"]
        big = error(httpx.post(s.url + "/v1/chat/completions", json={"messages": ask("?", f"{base}/big.png")}), 413)
        assert big["code"] == "image_too_large"
        missing = error(httpx.post(s.url + "/v1/chat/completions", json={"messages": ask("?", f"{base}/no.png")}), 400)
        assert missing["code"] == "invalid_image_url" and "404" in missing["message"]


def test_options_the_server_cannot_honour_are_refused_not_dropped(tiny):
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        for option in ({"tools": [tool]}, {"logprobs": True}, {"response_format": {"type": "json_object"}},
                       {"presence_penalty": 0.5}):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2, **option)
            assert info.value.code == "unsupported_parameter" and info.value.param == next(iter(option))
        ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            response_format={"type": "text"}, presence_penalty=0, tools=[])
        assert ok.choices[0].finish_reason in ("stop", "length")


def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(tiny, monkeypatch):
    def broken(tokens, grid=None):
        raise RuntimeError("secret internals /srv/model")

    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        monkeypatch.setattr(tiny.model, "decode_image_tokens", broken)  # what the engine decodes with
        with httpx.stream("POST", s.url + "/v1/images/generations", timeout=30,
                          json={"prompt": "x", "stream": True}) as r:
            assert r.status_code == 200
            text = r.read().decode()
        assert "secret" not in text and "Traceback" not in text
        last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
        event = json.loads(last[6:])
        assert event["type"] == "error" and event["error"]["type"] == "server_error"
        assert set(event["error"]) == {"message", "type", "param", "code"}
        monkeypatch.undo()
        assert httpx.post(s.url + "/v1/images/generations", json={"prompt": "x"}, timeout=30).status_code == 200


@pytest.mark.parametrize("how", ["the app's requests", "the engine"])
def test_requests_cancelled_by_a_shutdown_are_503(how):
    pipe = JanusPipeline.load("tiny")
    engine = pipe.start_engine(EngineConfig(rows=2, queue=4))
    with Server(pipe, ServeSettings(model_id="tiny", max_n=1000)) as s:
        result: dict = {}

        def long():
            result["r"] = httpx.post(s.url + "/v1/images/generations", json={"prompt": "x", "n": 1000}, timeout=60)

        worker = threading.Thread(target=long)
        worker.start()
        while engine.running == 0:
            threading.Event().wait(0.01)
        # What `openjanus serve` does when the shutdown grace runs out: cancel the app's own
        # requests (wherever the engine holds them), then close the engine.
        if how == "the engine":
            engine.close(cancel=True)
        else:
            s.server.config.app.state.cancel_running()
        worker.join(30)
        assert error(result["r"], 503)["code"] == "server_shutting_down"


def test_image_stream_usage_counts_the_prompt(tiny):
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        events = list(client.images.generate(prompt="a red circle", stream=True, extra_body={"seed": 1}))
    usage = events[-1].usage
    prompt = len(tiny.processor.tokenizer.encode(tiny.processor.t2i_prompt("a red circle")))
    assert (usage.input_tokens, usage.input_tokens_details.text_tokens, usage.input_tokens_details.image_tokens) == (
        prompt, prompt, 0)
    assert usage.output_tokens == tiny.model.cfg.num_gen_tokens
    assert usage.total_tokens == prompt + usage.output_tokens


def test_a_really_full_queue_is_429_with_retry_after_and_frees_up(monkeypatch):
    """The batch full (rows=2: one image) and the queue full (queue=1), held so by the engine's
    worker waiting on an event inside its second decoding step: no timing decides what is
    running or queued when the HTTP request arrives."""
    from openjanus.requests import ImageRequest

    pipe = JanusPipeline.load("tiny")
    engine = pipe.start_engine(EngineConfig(rows=2, queue=1))
    decode = engine.core.runner.step
    calls, held, release = [0], threading.Event(), threading.Event()

    def step_held_from_the_second(*a, **k):
        calls[0] += 1
        if calls[0] >= 2:  # the first step is over: the running request is in the batch and live
            held.set()
            release.wait(60)
        return decode(*a, **k)

    monkeypatch.setattr(engine.core.runner, "step", step_held_from_the_second)
    try:
        with Server(pipe, ServeSettings(model_id="tiny")) as s:
            running = pipe.submit(ImageRequest("fill the batch", seed=0))
            assert held.wait(60), "the engine never reached its second step"
            waiting = pipe.submit(ImageRequest("wait in the queue", seed=0))
            assert (engine.running, engine.queue_depth) == (1, 1)
            r = httpx.post(s.url + "/v1/images/generations", json={"prompt": "one more"}, timeout=60)
            assert error(r, 429)["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
            assert (engine.running, engine.queue_depth) == (1, 1)  # the refused request took no place
            running.cancel()
            waiting.cancel()
            release.set()
            assert httpx.post(s.url + "/v1/images/generations", json={"prompt": "now"}, timeout=60).status_code == 200
            with pytest.raises(Exception, match="cancelled"):
                running.result(60)
    finally:
        release.set()
        engine.close()


def test_a_chunked_body_over_the_limit_is_413(tiny):
    with Server(tiny, ServeSettings(model_id="tiny", max_body_bytes=100_000)) as s:
        chunks = (b'{"prompt": "' + b"x" * 30_000 for _ in range(5))  # no Content-Length: counted as it arrives
        r = httpx.post(s.url + "/v1/images/generations", content=chunks, headers={"Content-Type": "application/json"})
        assert error(r, 413)["code"] == "body_too_large"
        assert httpx.get(s.url + "/health").status_code == 200


def test_unknown_paths_and_methods_name_the_url(tiny):
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        assert error(httpx.post(s.url + "/v1/nothing", json={}), 404)["message"] == "Invalid URL (POST /v1/nothing)"
        assert error(httpx.get(s.url + "/v1/chat/completions"), 405)["message"] == (
            "Invalid URL (GET /v1/chat/completions)")


def test_bad_requests_do_not_disturb_a_running_one(tiny):
    body = {"prompt": "a yellow circle", "n": 2, "seed": 9, "stream": True, "partial_images": 1}
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        alone = httpx.post(s.url + "/v1/images/generations", json={**body, "stream": False}, timeout=30).json()
        result: dict = {}

        def good():
            with httpx.stream("POST", s.url + "/v1/images/generations", json=body, timeout=30) as r:
                result["events"] = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]

        worker = threading.Thread(target=good)
        worker.start()
        bad = [{"messages": []}, {"messages": ask("?", "data:image/png;base64,@@")},
               {"messages": ask("?", data_url(b"not an image"))}, {"messages": [{"role": "user",
                                                                                 "content": "x" * 5000}]},
               {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}]
        for b in bad * 3:
            assert httpx.post(s.url + "/v1/chat/completions", json=b, timeout=30).status_code == 400
        worker.join(30)
    done = [e["b64_json"] for e in result["events"] if e["type"] == "image_generation.completed"]
    assert done == [d["b64_json"] for d in alone["data"]]


def test_top_p_zero_means_the_most_likely_token_on_chat_and_images(tiny):
    """OpenAI's top_p = 0 (a nucleus of one token): the same as greedy decoding, on both endpoints."""
    with Server(tiny, ServeSettings(model_id="tiny")) as s:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "seed": 3}
        greedy = httpx.post(s.url + "/v1/chat/completions", json={**chat, "temperature": 0}, timeout=30).json()
        nucleus = httpx.post(s.url + "/v1/chat/completions", json={**chat, "temperature": 1, "top_p": 0},
                             timeout=30).json()
        assert nucleus["choices"][0]["message"] == greedy["choices"][0]["message"]
        image = {"prompt": "a red circle", "seed": 3}
        greedy = httpx.post(s.url + "/v1/images/generations", json={**image, "temperature": 0}, timeout=30).json()
        nucleus = httpx.post(s.url + "/v1/images/generations", json={**image, "top_p": 0}, timeout=30).json()
        assert nucleus["data"] == greedy["data"]
