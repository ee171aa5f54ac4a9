"""The operator's log lines (openjanus.serve.logs) on a small app of their own: one access line per
request with status, latency and what the request produced (a stream's counts once it ends),
JSON when asked, and a failure's traceback in the log, never in the response."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from openjanus.serve import logs  # noqa: E402


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ok")
    async def ok(request: Request):
        request.state.usage = {"prompt_tokens": 7, "completion_tokens": 3}
        return {"ok": True}

    @app.get("/stream")
    async def stream(request: Request):
        async def body():
            for i in range(3):
                yield f"chunk {i}\n".encode()
            request.state.usage = {"images": 3}  # known only when the stream ends

        return StreamingResponse(body())

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internals")

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        logs.log.error("a request failed", exc_info=e)
        return JSONResponse({"error": {"message": "internal server error", "type": "server_error"}}, 500)

    return logs.AccessLog(app)


@pytest.fixture
def captured(capsys):
    def make(fmt: str):
        logs.configure(fmt)
        capsys.readouterr()  # what came before
        return capsys

    yield make
    for name in ("openjanus.serve", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


def test_one_text_line_per_request_with_status_latency_and_usage(captured):
    out = captured("text")
    client = TestClient(_app(), raise_server_exceptions=False)
    assert client.get("/ok").status_code == 200
    assert client.get("/stream").text == "chunk 0\nchunk 1\nchunk 2\n"
    assert client.get("/missing").status_code == 404
    lines = out.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert " INFO  GET /ok 200 " in lines[0] and lines[0].endswith("ms prompt_tokens=7 completion_tokens=3")
    assert "GET /stream 200 " in lines[1] and lines[1].endswith("ms images=3")
    assert "GET /missing 404 " in lines[2]


def test_json_lines_and_a_500_logs_its_traceback_server_side_only(captured):
    out = captured("json")
    client = TestClient(_app(), raise_server_exceptions=False)
    r = client.get("/boom")
    assert r.status_code == 500 and "secret" not in r.text and "Traceback" not in r.text
    client.get("/ok")
    records = [json.loads(line) for line in out.readouterr().err.splitlines()]
    error, boom, ok = records
    assert error["level"] == "ERROR" and "RuntimeError: secret internals" in error["traceback"]
    assert boom["event"] == "access" and boom["status"] == 500 and boom["path"] == "/boom"
    assert ok["status"] == 200 and ok["prompt_tokens"] == 7 and ok["completion_tokens"] == 3
    assert ok["latency_ms"] >= 0 and ok["method"] == "GET" and ok["time"].endswith("Z")


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        logs.configure("xml")
