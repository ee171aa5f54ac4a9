"""Serve's HTTP proxy middleware (openjanus.serve.ray_proxy), as plain ASGI without Ray: the
request the proxy leaves unanswered when its replica died is OpenAI's 503 with Retry-After;
everything the proxy does answer passes through untouched. (tests/serve/test_ray.py runs it
inside Ray's proxy, where a killed replica's requests get it.)"""

from __future__ import annotations

import importlib
import subprocess
import sys

import httpx
import pytest

from openjanus.serve.ray_proxy import IMPORT_PATH, ReplicaLost, middlewares


async def unanswered(scope, receive, send) -> None:
    """What Ray Serve's proxy does when the replica holding the request died: nothing."""


async def answered(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"fine"})


async def fails_before_answering(scope, receive, send) -> None:
    raise RuntimeError("a bug in the proxy")


async def fails_mid_stream(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    raise RuntimeError("the replica died mid-stream")


async def call(app, raise_app_exceptions: bool = False) -> httpx.Response:
    transport = httpx.ASGITransport(app=ReplicaLost(app), raise_app_exceptions=raise_app_exceptions)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post("/v1/images/generations", json={"prompt": "a red circle"})


def run(coro):
    import anyio

    return anyio.run(lambda: coro)


def test_an_unanswered_request_is_openais_503_with_retry_after():
    r = run(call(unanswered))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "server_error", "param": None,
                                  "code": "replica_unavailable"}}
    assert "replica" in r.json()["error"]["message"]


def test_answers_pass_through_and_failures_keep_the_error_shape():
    r = run(call(answered))
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "fine", "text/plain")
    r = run(call(fails_before_answering))
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error" and "Traceback" not in r.text
    with pytest.raises(RuntimeError, match="mid-stream"):  # a started response is the server's to end
        run(call(fails_mid_stream, raise_app_exceptions=True))


def test_ray_finds_the_middleware_at_its_import_path_without_model_code():
    module, name = IMPORT_PATH.split(":")
    assert getattr(importlib.import_module(module), name) is middlewares
    assert [m.cls for m in middlewares()] == [ReplicaLost]
    code = f"import sys, {module}; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # the proxy loads no model code, and Ray loads it
