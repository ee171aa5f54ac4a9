"""The OpenAI-compatible API through the official `openai` client, over a real socket."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import pytest

from openjanus.requests import ChatRequest, Message, SamplingParams

from serve_helpers import data_url, pixels, scene

MODEL = "tiny"


def ask(question: str, *images) -> list[dict]:
    return [{"role": "user", "content": [*({"type": "image_url", "image_url": {"url": u}} for u in images),
                                         {"type": "text", "text": question}]}]


def test_health_and_models(client, base_url):
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok", "model": MODEL}
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_with_images_equals_the_engine(client, pipe):
    """Images of every accepted format in content parts, several turns: the server's answer is the
    engine's answer to the same typed request (greedy), with the engine's token counts."""
    red, blue = scene((200, 30, 30)), scene((30, 30, 200))
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(red, "PNG")}},
                                     {"type": "text", "text": "what colour?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(blue, "JPEG")}},
                                     {"type": "image_url", "image_url": {"url": data_url(blue, "WEBP")}},
                                     {"type": "image_url", "image_url": {"url": data_url(red, "GIF")}},
                                     {"type": "text", "text": "and these?"}]},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, seed=3)
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.index == 0
    # What the server should have built (JPEG/WebP/GIF decoded the same way it does).
    from openjanus.serve.convert import ImageLimits, to_messages
    from openjanus.serve.schemas import ChatMessage

    typed = to_messages([ChatMessage.model_validate(m) for m in messages], ImageLimits())
    expected = pipe.generate(ChatRequest(typed, max_new_tokens=6, sampling=SamplingParams(temperature=0.0), seed=3))
    assert choice.message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens > 4 * pipe.model.cfg.num_und_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert choice.finish_reason == expected.finish_reason
    assert [m.role for m in typed] == ["system", "user", "assistant", "user"]


def test_chat_length_and_stop(client):
    long = client.chat.completions.create(model=MODEL, messages=ask("hello"), max_completion_tokens=8,
                                          temperature=0, extra_body={})
    if long.choices[0].finish_reason == "length":
        assert long.usage.completion_tokens == 8
    text = long.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        cut = client.chat.completions.create(model=MODEL, messages=ask("hello"), max_tokens=8, temperature=0,
                                             stop=[stop])
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == text[:text.index(stop)].strip()


def test_chat_streaming(client, base_url):
    kwargs = dict(model=MODEL, messages=ask("what is this?", data_url(scene())), max_tokens=10, temperature=0.7, seed=5)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(exclude_none=True) == whole.usage.model_dump(
        exclude_none=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert streamed.strip() == whole.choices[0].message.content
    # The raw stream ends with [DONE]; without include_usage there is no usage chunk.
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json={**kwargs, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"finish_reason":null' not in events[-2] and '"usage"' not in events[-2]


def test_images(client, pipe):
    size = f"{pipe.image_size}x{pipe.image_size}"
    a = client.images.generate(model=MODEL, prompt="a red circle", n=2, size=size, response_format="b64_json",
                                extra_body={"seed": 11, "guidance_scale": 3.0})
    assert len(a.data) == 2 and isinstance(a.created, int)
    img = pixels(a.data[0].b64_json)
    assert img.shape == (pipe.image_size, pipe.image_size, 3)
    b = client.images.generate(prompt="a red circle", n=2, size="auto", extra_body={"seed": 11, "guidance_scale": 3.0})
    assert all(np.array_equal(pixels(x.b64_json), pixels(y.b64_json)) for x, y in zip(a.data, b.data))
    c = client.images.generate(prompt="a red circle", n=1, extra_body={"seed": 12, "guidance_scale": 3.0})
    assert not np.array_equal(pixels(c.data[0].b64_json), img)
    # The server's images are the engine's for the same request.
    from openjanus.requests import ImageRequest

    expected = pipe.generate(ImageRequest("a red circle", n=2, cfg_weight=3.0, seed=11))
    assert np.array_equal(pixels(a.data[1].b64_json), np.asarray(expected.images[1]))


def test_images_streaming(client):
    events = list(client.images.generate(prompt="a blue square", n=2, stream=True, partial_images=3,
                                         extra_body={"seed": 4}))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    done = [e for e in events if e.type == "image_generation.completed"]
    assert len(partial) == 2 * 3 and len(done) == 2 and events[-2:] == done
    assert [e.partial_image_index for e in partial] == [0, 0, 1, 1, 2, 2]
    assert done[0].usage.output_tokens > 0 and done[0].output_format == "png"
    final = client.images.generate(prompt="a blue square", n=2, extra_body={"seed": 4})
    assert [pixels(e.b64_json).tolist() for e in done] == [pixels(d.b64_json).tolist() for d in final.data]
    # A partial image shows the rows sampled so far; the rest is blank grey.
    first = pixels(partial[0].b64_json)
    assert (first[-1] == 128).all() and not (first[0] == 128).all()
    last_partial = pixels(partial[-1].b64_json)
    assert (last_partial[-1] == 128).all() and (first == 128).sum() > (last_partial == 128).sum()


def test_same_seed_same_image_alone_and_under_load(client):
    alone = client.images.generate(prompt="a green star", n=1, extra_body={"seed": 21}).data[0].b64_json
    results: dict[str, object] = {}

    def worker(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # reported by the assertion below
            results[name] = e

    jobs = {f"img{i}": (lambda i=i: client.images.generate(prompt=f"shape {i}", n=2, extra_body={"seed": i}))
            for i in range(3)}
    jobs.update({f"chat{i}": (lambda i=i: client.chat.completions.create(model=MODEL, messages=ask(f"hi {i}"),
                                                                          max_tokens=12))
                 for i in range(3)})
    jobs["target"] = lambda: client.images.generate(prompt="a green star", n=1, extra_body={"seed": 21})
    threads = [threading.Thread(target=worker, args=(k, f)) for k, f in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    errors = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not errors and len(results) == len(jobs)
    assert np.array_equal(pixels(results["target"].data[0].b64_json), pixels(alone))
    assert all(len(results[f"img{i}"].data) == 2 for i in range(3))


def test_metrics(client, base_url):
    client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=3)
    text = httpx.get(f"{base_url}/metrics").text
    assert 'openjanus_http_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "openjanus_queue_depth " in text and "openjanus_running_requests " in text
    generated = [line for line in text.splitlines() if line.startswith('openjanus_generated_tokens_total{kind="text"}')]
    assert generated and float(generated[0].split()[-1]) >= 3


def test_client_disconnect_cancels_the_engine_request(base_url, pipe):
    """A client that goes away mid-stream frees its rows: the engine request is cancelled."""
    def cancelled() -> float:
        lines = httpx.get(f"{base_url}/metrics").text.splitlines()
        return float(next(x for x in lines if x.startswith("openjanus_cancelled_requests_total")).split()[-1])

    before = cancelled()
    body = {"prompt": "many shapes", "n": 64, "stream": True, "partial_images": 3, "seed": 1}  # 8 chunks of 4
    with httpx.stream("POST", f"{base_url}/v1/images/generations", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # the first partial image: then hang up
    import time

    deadline = time.monotonic() + 10
    while (pipe.engine.running or cancelled() == before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1
    assert pipe.engine.running == 0 and pipe.engine.queue_depth == 0
