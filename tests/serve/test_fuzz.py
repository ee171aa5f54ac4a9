"""Fuzzing the server's endpoints (issue 23) with Hypothesis: JSON bodies that mix plausible
fields with arbitrary JSON values, raw bytes that are not JSON, headers a client may get wrong,
and edits forms with any fields and uploads. Every
answer must come within the timeout (no hang), never be a 500, and every error must be in
OpenAI's shape. Bounded: a fixed number of examples per endpoint, derandomized (the same
examples every run), no example database.

The route bodies are untyped in the app's OpenAPI schema (the server reads JSON itself), so the
strategies below, not the schema, describe what a client may send."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openjanus.serve.protocol import ServeSettings
from serve import Server

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)


def maybe(strategy):
    """A plausible value, an arbitrary JSON value, or the field left out."""
    return st.one_of(strategy, json_values)


small_ints = st.integers(-2, 6)
temperatures = st.one_of(st.floats(0, 2), st.sampled_from([0, 1e-300, 2.0, -0.0, 1e-45]))
texts = st.text(max_size=40)
images = st.sampled_from([
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC",
    "data:image/png;base64,AAAA", "data:image/jpeg;base64,iVBORw0KGgo=", "http://127.0.0.1:1/x.png", "data:,",
    "data:image/png;base64,!!!!"])
parts = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": maybe(texts)}),
                  st.fixed_dictionaries({"type": st.just("image_url"),
                                         "image_url": maybe(st.fixed_dictionaries({"url": images}))}),
                  json_values)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]),
                           "content": st.one_of(texts, st.lists(parts, max_size=3), json_values)}),
    json_values), max_size=3)


def optional(**fields) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional=fields)


chat_bodies = st.one_of(
    st.builds(lambda m, rest: {"messages": m, **rest}, maybe(messages), optional(
        model=maybe(st.sampled_from(["janus-shapes", "gpt-4o", ""])), max_tokens=maybe(small_ints),
        max_completion_tokens=maybe(small_ints), temperature=maybe(temperatures), top_p=maybe(st.floats(0, 1)),
        top_k=maybe(small_ints), seed=maybe(st.integers(-1, 2**64)), stream=maybe(st.booleans()),
        stream_options=maybe(st.fixed_dictionaries({"include_usage": st.booleans()})),
        stop=maybe(st.one_of(texts, st.lists(texts, max_size=5))), n=maybe(small_ints), user=maybe(texts),
        tools=json_values, logprobs=maybe(st.booleans()), response_format=json_values)),
    json_values)

image_bodies = st.one_of(
    st.builds(lambda p, rest: {"prompt": p, **rest}, maybe(texts), optional(
        model=maybe(st.sampled_from(["janus-shapes", "dall-e-3"])), n=maybe(st.integers(-1, 3)),
        size=maybe(st.sampled_from(["auto", "64x64", "1024x1024", ""])), seed=maybe(st.integers(-1, 2**64)),
        temperature=maybe(temperatures), top_k=maybe(small_ints), top_p=maybe(st.floats(0, 1)),
        guidance_scale=maybe(st.floats(-1, 120)), jacobi=maybe(st.integers(-1, 70)), stream=maybe(st.booleans()),
        partial_images=maybe(st.integers(-1, 4)), response_format=maybe(st.sampled_from(["b64_json", "url"])),
        output_format=maybe(st.sampled_from(["png", "jpeg"])))),
    json_values)

raw_bodies = st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                       st.sampled_from([b"", b"{", b"[]", b"null", b'{"a": NaN}', b'{"messages": Infinity}',
                                        b"\xff\xfe{}", b'{"prompt": "\\ud800"}', b"[" * 5000]))
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])


@pytest.fixture(scope="module")
def fuzz_server(demo_pipe):
    # A short body timeout: a fuzzed request never waits long on itself.
    with Server(demo_pipe, ServeSettings(model_id="janus-shapes", max_n=3, body_timeout_s=5.0)) as s:
        with httpx.Client(base_url=s.url, timeout=120) as client:
            yield client


def check(r: httpx.Response) -> None:
    assert r.status_code != 500 and r.status_code < 500 or r.status_code == 503, r.text[:300]
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert "Traceback" not in r.text
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        assert "internal server error" not in r.text  # an error after the stream started is the request's own


def post(client: httpx.Client, path: str, content: bytes, kind: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": kind} if kind else {}
    return client.post(path, content=content, headers=headers)


@FUZZ
@given(body=chat_bodies)
def test_chat_never_500s(fuzz_server, body):
    check(post(fuzz_server, "/v1/chat/completions", json.dumps(body).encode()))


@FUZZ
@given(body=image_bodies)
def test_image_generations_never_500s(fuzz_server, body):
    check(post(fuzz_server, "/v1/images/generations", json.dumps(body).encode()))


@FUZZ
@given(raw=raw_bodies, kind=content_types, path=st.sampled_from(["/v1/chat/completions", "/v1/images/generations",
                                                                 "/v1/images/edits", "/v1/models", "/v1/x"]))
def test_raw_bytes_never_500(fuzz_server, raw, kind, path):
    check(post(fuzz_server, path, raw, kind))


def _png(mode: str, size: tuple[int, int], hole: bool) -> bytes:
    import io

    from PIL import Image

    im = Image.new(mode, size, (200, 30, 30, 255) if mode == "RGBA" else (200, 30, 30))
    if hole:
        im.paste((0, 0, 0, 0), (8, 8, 40, 40))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


uploads = st.sampled_from([_png("RGBA", (64, 64), True), _png("RGB", (64, 64), False), _png("RGBA", (48, 80), True),
                           b"not an image", b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
form_values = st.one_of(texts, st.integers(-2, 4).map(str), st.sampled_from(["true", "false", "yes", "1.5", "auto",
                                                                              "64x64", "128x64", "b64_json"]))
edit_fields = optional(prompt=st.one_of(texts, st.just("a blue square")), n=form_values, size=form_values,
                       stream=form_values, partial_images=form_values, seed=form_values, model=form_values,
                       response_format=form_values, guidance_scale=form_values)


@settings(FUZZ, max_examples=30)
@given(fields=edit_fields, image=st.one_of(st.none(), uploads), mask=st.one_of(st.none(), uploads))
def test_image_edits_never_500(fuzz_server, fields, image, mask):
    files = {k: ("f.png", v, "image/png") for k, v in (("image", image), ("mask", mask)) if v is not None}
    check(fuzz_server.post("/v1/images/edits", data=fields, files=files or {"other": ("x", b"x", "text/plain")}))
