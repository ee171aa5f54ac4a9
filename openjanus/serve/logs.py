"""What the server tells its operator: a start line (model, weight format, device, batch rows,
KV budget, address), one access line per request (method, path, status, latency, and the
tokens or images it produced), and tracebacks of failures, which never reach the client.

    --log-format text   2026-12-07 11:52:01 INFO  GET /v1/models 200 1.2 ms
    --log-format json   {"time": "...", "level": "INFO", "event": "access", "method": "GET", ...}

An endpoint records what a request produced in `request.state.usage` (a dict); the access line
is written when the response's last byte has gone, so a streamed answer is logged with its
whole duration and its final counts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

__all__ = ["configure", "AccessLog", "LOG_FORMATS", "log"]

log = logging.getLogger("openjanus.serve")
LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else was passed in `extra=` and is a field of the line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's extra fields, and
    the traceback (as one string) when there is one. Times are UTC."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(message)s", "%Y-%m-%d %H:%M:%S")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a redirect, a test's capture),
    never to a stream that has been closed since the server started."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # StreamHandler.emit reads self.stream
        return sys.stderr


def configure(fmt: Literal["text", "json"] = "text", level: int = logging.INFO) -> logging.Handler:
    """Send the server's log (and uvicorn's own errors) to stderr in `fmt`; returns the handler."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("openjanus.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return handler


def _usage_text(usage: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in usage.items())


class AccessLog:
    """ASGI middleware: one line per HTTP request, written when its response is complete (or
    when the app fails before answering, as a 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 0
        logged = False

        def write(code: int) -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            ms = (time.perf_counter() - start) * 1000
            usage = state.get("usage") or {}
            method, path = scope.get("method", "?"), scope.get("path", "?")
            log.info(f"{method} {path} {code} {ms:.1f} ms" + (f" {_usage_text(usage)}" if usage else ""),
                     extra={"event": "access", "method": method, "path": path, "status": code,
                            "latency_ms": round(ms, 2), **usage})

        async def logged_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                write(status)

        try:
            await self.app(scope, receive, logged_send)
        except BaseException:
            write(status or 500)  # the client left mid-stream, or the app failed before answering
            raise
        write(status or 500)
