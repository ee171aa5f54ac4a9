"""Ray Serve's HTTP proxy, in front of the replicas of `openjanus.serve.ray_app`: a request
whose replica died before answering gets OpenAI's error shape, not the proxy's plain text.

When a replica dies (its process killed, its node lost) with a request in flight, Ray Serve's
proxy sends nothing for that request (it answers itself only for timeouts, 408, and its own
back-pressure, 503), so uvicorn under it answers `500 Internal Server Error` in plain text.
`ReplicaLost` wraps the proxy's ASGI app: when the app returns without having started a
response, it answers 503 with `Retry-After: 1`, the status OpenAI's clients retry and the one
this server gives whenever a retry soon will be served (`server_shutting_down`); the proxy's
other replicas serve the retry while Ray replaces the dead one. A response already started
(a stream cut off) cannot be changed: the client sees the connection end mid-stream.

Ray reads the proxy's middlewares from an import path in the environment of the Ray cluster:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=openjanus.serve.ray_proxy:middlewares

`openjanus serve --replicas` sets it for the Ray instance it starts or joins (as the job's
environment, which Serve's controller and proxies inherit when this job starts Serve); on a
cluster started with `ray start`, set it there. This module imports neither Ray nor model code.
"""

from __future__ import annotations

import json

from openjanus.serve.errors import APIError

__all__ = ["ReplicaLost", "middlewares", "PROXY_CALLBACK_ENV", "IMPORT_PATH"]

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
IMPORT_PATH = "openjanus.serve.ray_proxy:middlewares"
REPLICA_LOST = APIError(503, "the replica serving this request stopped before answering; retry it (another replica "
                             "serves it)", code="replica_unavailable", kind="server_error",
                        headers={"Retry-After": "1"})


class ReplicaLost:
    """Pure ASGI middleware: an HTTP request the app left unanswered gets `REPLICA_LOST`; one it
    failed before answering gets OpenAI's 500 (the exception goes on to the server's log)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if not started:
                await _answer(APIError(500, "internal server error", kind="server_error"), send)
            raise
        if not started:
            await _answer(REPLICA_LOST, send)


async def _answer(error: APIError, send) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def middlewares() -> list:
    """What Ray Serve's proxy calls (through `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`) for its
    list of Starlette middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]
