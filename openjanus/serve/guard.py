"""What stands between the network and the routes: a pure ASGI middleware and uvicorn's
protocol with a header timeout.

The guard (`Guard`) answers in OpenAI's error shape, before a route runs:
  - a Host header not in the allow-list: 400 (DNS rebinding: a page on another name that
    resolves to this address cannot use the server);
  - an Origin header of another site: 403 (a browser's cross-site request cannot start jobs);
  - on /v1: a missing or wrong API key (401), a declared body over the limit (413), a POST
    that is not JSON (415: browsers send text/plain and forms cross-site without asking);
and while a route runs:
  - a body that stops arriving for `body_timeout_s`: 408; one still arriving when the server
    stops: 503, so a shutdown never waits for a slow client;
  - a route that raises: 500, never a traceback.
It counts each /v1 answer under its route's template (`/v1/models/{model_id}`; unknown paths
are one label), so no client can grow the metrics. Being plain ASGI (not Starlette's
BaseHTTPMiddleware), it passes the client's disconnect through: a non-streaming request whose
client left is cancelled in the engine.

`h11_protocol` makes uvicorn's protocol close a connection whose request headers are not complete within
`header_timeout_s` of connecting (or of the previous answer): uvicorn has no such timeout.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from openjanus.serve.protocol import APIError, ServeSettings

__all__ = ["Guard", "h11_protocol", "host_name"]

log = logging.getLogger("openjanus.serve")

JSON_TYPES = ("application/json",)
MULTIPART_PATHS = ("/v1/images/edits",)  # the edits endpoint takes a form (its own checks apply)


def host_name(value: str) -> str:
    """The name of a Host header value or an authority, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _Stopping(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class Guard:
    """The ASGI middleware described in the module doc. `stop()` ends the bodies still arriving
    (the server is shutting down)."""

    def __init__(self, app: Any, settings: ServeSettings, count: Callable[[str, int], None]) -> None:
        self.app, self.settings, self.count = app, settings, count
        self._stop: asyncio.Event | None = None
        self._stopped = False

    def stop(self) -> None:
        """Answer 503 to every request whose body is still arriving (call on the event loop)."""
        self._stopped = True
        if self._stop is not None:
            self._stop.set()

    @staticmethod
    def _template(scope: dict) -> str:
        """The matched route's path template (the router records the route in the scope it
        shares with us), or "other" for a path no route serves."""
        route = scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        return path if isinstance(path, str) else "other"

    def _refusal(self, scope: dict, headers: dict[str, str]) -> APIError | None:
        s = self.settings
        host = headers.get("host", "")
        if s.allowed_hosts is not None and host_name(host) not in s.allowed_hosts:
            return APIError(400, f"the Host header {host!r} is not one this server answers to", param="Host",
                            code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
            return APIError(403, f"requests from {origin} are not allowed (cross-site)", code="invalid_origin")
        if not scope["path"].startswith("/v1/"):
            return None
        if s.api_key is not None:
            auth = headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {s.api_key}".encode()):
                return APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                code="invalid_api_key")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
            return APIError(413, f"the request body is {int(length):,} bytes; the limit is {s.max_body_bytes:,}",
                            code="body_too_large")
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            form = kind == "multipart/form-data" and scope["path"] in MULTIPART_PATHS
            if kind not in JSON_TYPES and not form:
                return APIError(415, f"the request body must be JSON (Content-Type: application/json), got "
                                     f"{kind or 'no Content-Type'}", code="unsupported_media_type")
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._stop is None:
            self._stop = asyncio.Event()
            if self._stopped:
                self._stop.set()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        api = scope["path"].startswith("/v1/")
        status = [0]
        started = [False]

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        body_done = [scope["method"] in ("GET", "HEAD")]

        async def receive_bounded() -> dict:
            if body_done[0]:  # after the body: what remains is the client leaving (no timeout)
                return await receive()
            message = await self._next_piece(receive)
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done[0] = True
            return message

        refused = self._refusal(scope, headers)
        try:
            if refused is not None:
                await _answer(send_counted, refused)
            else:
                await self.app(scope, receive_bounded, send_counted)
        except _BodyTimeout:
            if not started[0]:
                late = APIError(408, f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
                                code="request_timeout")
                await _answer(send_counted, late)
        except _Stopping:
            if not started[0]:
                await _answer(send_counted, APIError(503, "the server is shutting down", kind="server_error",
                                                     code="server_shutting_down"))
        except Exception as e:  # never a traceback to the client
            log.error("a request failed", exc_info=e)
            if not started[0]:
                await _answer(send_counted, APIError(500, "internal server error", kind="server_error"))
        finally:
            if api:
                self.count(self._template(scope), status[0] or 499)

    async def _next_piece(self, receive: Callable) -> dict:
        """The next message of a request body, unless it takes longer than the body timeout or
        the server stops first."""
        get = asyncio.ensure_future(receive())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({get, stop}, timeout=self.settings.body_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (get, stop):
                if not task.done():
                    task.cancel()
        if get in done:
            return get.result()
        if stop in done:
            raise _Stopping
        raise _BodyTimeout


async def _answer(send: Callable, e: APIError) -> None:
    body = json.dumps(e.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in e.headers.items())]
    if e.status in (408, 503):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def h11_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol, closing connections whose headers take longer than `header_timeout_s`."""
    from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class H11Protocol(Base):
        _header_timer: asyncio.TimerHandle | None = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None and self._waiting_for_headers():
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._arm()
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()  # a request started: its body has the guard's timeout

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers (uvicorn's keep-alive timeout also applies)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return H11Protocol

