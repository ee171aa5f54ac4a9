"""The ASGI app: OpenAI's chat-completions and image-generation endpoints, a web page and
Prometheus metrics, every request an engine request (so concurrent callers share batches).

Fields, object names and status codes follow OpenAI's API reference; errors have its shape
`{"error": {"message", "type", "param", "code"}}` and never carry a traceback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from openjanus.errors import UserError
from openjanus.images import ImageLoadError
from openjanus.inference.engine import Cancelled, ContextTooLong, QueueFull, RequestHandle
from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import MAX_SEED, ChatRequest, ImageProgress, ImageRequest, Message, SamplingParams, TextDelta

log = logging.getLogger("openjanus.serve")
STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"}


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the server (the engine's own caps bound batch and queue)."""

    model_id: str = "janus"
    api_key: str | None = None
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int = 16_000_000  # decoded size; refuses decompression bombs
    max_images_per_request: int = 8  # in one chat request
    max_prompt_chars: int = 4000
    max_n: int = 8  # images per generation request
    allow_remote_images: bool = False  # http(s) image URLs are refused unless set (then fetched, bounded)
    max_image_bytes: int = 10 * 2**20  # one image, encoded (a data: URL or a fetched file)
    remote_timeout_s: float = 10.0


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _Metrics:
    def __init__(self, registry: CollectorRegistry, pipe: JanusPipeline) -> None:
        self.requests = Counter("openjanus_requests", "HTTP API requests", ["endpoint", "status"], registry=registry)
        self.tokens = Counter("openjanus_generated_tokens", "Tokens generated", ["kind"], registry=registry)
        self.images = Counter("openjanus_generated_images", "Images generated", registry=registry)
        queue = Gauge("openjanus_queue_depth", "Requests waiting for room in the batch", registry=registry)
        queue.set_function(lambda: pipe.engine.queue_depth)
        running = Gauge("openjanus_running_requests", "Requests in the running batch", registry=registry)
        running.set_function(lambda: pipe.engine.running)


# --- parsing ------------------------------------------------------------------------------------


def _field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise APIError(400, f"'{name}' must be of type {_names(kinds)}, got a boolean", param=name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be of type {_names(kinds)}, got {type(value).__name__}", param=name)
    return value


def _names(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join({int: "integer", float: "number", str: "string", bool: "boolean", list: "array",
                        dict: "object"}.get(k, k.__name__) for k in kinds)


def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = _field(body, name, (int, float), default)
    if value is not None and not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def _seed(body: dict) -> int | None:
    seed = _field(body, "seed", int)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise APIError(400, f"'seed' must be between 0 and {MAX_SEED}, got {seed}", param="seed")
    return seed


def _decode_image(url: str, settings: ServeSettings, param: str) -> Image.Image:
    if url.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise APIError(400, "image URLs over http(s) are not fetched by this server; send the image inline "
                                "as a data: URL (data:image/png;base64,...)", param=param, code="remote_image_refused")
        return _image_from_bytes(_fetch_image(url, settings, param), settings, param)
    if not url.startswith("data:") or ";base64," not in url:
        raise APIError(400, "an image must be a data: URL with base64 content (data:image/png;base64,...)",
                       param=param, code="invalid_image_url")
    mime = url[5:url.index(";")].lower()
    if mime not in IMAGE_TYPES:
        raise APIError(400, f"image type {mime!r} is not supported; send PNG, JPEG, WebP or GIF", param=param,
                       code="invalid_image_format")
    data = url[url.index(";base64,") + 8:]
    if len(data) > settings.max_image_bytes * 4 // 3 + 4:
        raise APIError(413, f"the image is over this server's limit of {settings.max_image_bytes:,} bytes",
                       param=param, code="image_too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the image's base64 data is corrupt", param=param, code="invalid_image") from None
    return _image_from_bytes(raw, settings, param)


def _fetch_image(url: str, settings: ServeSettings, param: str) -> bytes:
    """An http(s) image, read up to the size limit (runs on a worker thread, never the event loop)."""
    try:
        with urllib.request.urlopen(url, timeout=settings.remote_timeout_s) as response:  # noqa: S310 (http(s) only)
            raw = response.read(settings.max_image_bytes + 1)
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise APIError(400, f"the image at {url} could not be fetched: {reason}", param=param,
                       code="invalid_image_url") from None
    if len(raw) > settings.max_image_bytes:
        raise APIError(413, f"the image at {url} is over this server's limit of {settings.max_image_bytes:,} bytes",
                       param=param, code="image_too_large")
    return raw


def _image_from_bytes(raw: bytes, settings: ServeSettings, param: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(raw)) as probe:  # reads the header only
            w, h = probe.size
    except Image.DecompressionBombError as e:  # PIL's own ceiling, far above ours: a bomb
        raise APIError(413, f"the image is too large to decode ({e}); this server's limit is "
                            f"{settings.max_image_pixels:,} pixels", param=param, code="image_too_large") from None
    except Exception:
        raise APIError(400, "the image cannot be read (corrupt or not an image)", param=param,
                       code="invalid_image") from None
    if w * h > settings.max_image_pixels:
        raise APIError(413, f"the image is {w} x {h} pixels, above this server's limit of "
                            f"{settings.max_image_pixels:,}", param=param, code="image_too_large")
    try:
        from openjanus.images import open_image

        return open_image(raw)
    except ImageLoadError as e:
        raise APIError(400, str(e), param=param, code="invalid_image") from None


def _messages(body: dict, settings: ServeSettings) -> list[Message]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    out: list[Message] = []
    n_images = 0
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be system, developer, user or assistant, got {role!r}",
                           param=f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise APIError(400, f"{where}.content must be a string or an array of content parts",
                           param=f"{where}.content")
        parts: list[Any] = []
        for k, part in enumerate(content):
            p = f"{where}.content[{k}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str):
                    raise APIError(400, f"{p}.image_url.url must be a string", param=f"{p}.image_url")
                n_images += 1
                if n_images > settings.max_images_per_request:
                    raise APIError(400, f"at most {settings.max_images_per_request} images per request",
                                   param=p)
                parts.append(_decode_image(url, settings, f"{p}.image_url"))
            else:
                raise APIError(400, f"{p} must be a text part or an image_url part", param=p)
        out.append(Message(role, parts))
    return out


# OpenAI options this server cannot honour. Refused when set to anything but "off", so a client
# never gets an answer that silently ignored what it asked for.
_UNSUPPORTED_CHAT = {"tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"),
                     "function_call": (None, "none"), "logprobs": (None, False), "top_logprobs": (None, 0),
                     "logit_bias": (None, {}), "frequency_penalty": (None, 0, 0.0),
                     "presence_penalty": (None, 0, 0.0), "audio": (None,), "prediction": (None,),
                     "modalities": (None, ["text"]), "response_format": (None, {"type": "text"})}


def _chat_request(body: dict, settings: ServeSettings) -> ChatRequest:
    """The engine request for a chat body (decodes its images: run it on a worker thread)."""
    for name, off in _UNSUPPORTED_CHAT.items():
        if name in body and body[name] not in off:
            raise APIError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    messages = _messages(body, settings)
    if _field(body, "n", int, 1) != 1:
        raise APIError(400, "only n = 1 is supported", param="n")
    max_tokens = _field(body, "max_completion_tokens", int) or _field(body, "max_tokens", int)
    if max_tokens is not None and max_tokens < 1:
        raise APIError(400, "'max_tokens' must be at least 1", param="max_tokens")
    temperature = _number(body, "temperature", 0, 2, 1.0)
    top_p = _number(body, "top_p", 0, 1, None)
    if top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0", param="top_p")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a string or an array of up to 4 non-empty strings", param="stop")
    return ChatRequest(messages, max_new_tokens=max_tokens, sampling=SamplingParams(temperature, top_p=top_p),
                       seed=_seed(body), stop=tuple(stop or ()))


def _image_request(body: dict, pipe: JanusPipeline, settings: ServeSettings) -> ImageRequest:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise APIError(400, "'prompt' must be a non-empty string", param="prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise APIError(400, f"'prompt' is {len(prompt)} characters; the limit is {settings.max_prompt_chars}",
                       param="prompt", code="prompt_too_long")
    n = _field(body, "n", int, 1)
    if not 1 <= n <= settings.max_n:
        raise APIError(400, f"'n' must be between 1 and {settings.max_n}, got {n}", param="n")
    native = f"{pipe.image_size}x{pipe.image_size}"
    size = _field(body, "size", str, "auto")
    if size not in ("auto", native):
        raise APIError(400, f"size {size!r} is not supported: this model generates {native} images (or use 'auto')",
                       param="size", code="unsupported_size")
    fmt = _field(body, "response_format", str, "b64_json")
    if fmt != "b64_json":
        raise APIError(400, "only response_format 'b64_json' is supported (the server keeps no files)",
                       param="response_format")
    output = _field(body, "output_format", str, "png")
    if output != "png":
        raise APIError(400, "only output_format 'png' is supported", param="output_format")
    sampling = SamplingParams(_number(body, "temperature", 0, 2, 1.0), top_k=_field(body, "top_k", int),
                              top_p=_number(body, "top_p", 0, 1, None) or None)
    return ImageRequest(prompt, n=n, guidance=_number(body, "guidance_scale", 0, 100, 5.0), sampling=sampling,
                        seed=_seed(body), jacobi=_field(body, "jacobi", int, 0))


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- the app --------------------------------------------------------------------------------------


def create_app(pipe: JanusPipeline, settings: ServeSettings | None = None) -> FastAPI:
    """The server for `pipe` (its engine batches every request)."""
    settings = settings or ServeSettings(model_id=pipe.name)
    registry = CollectorRegistry()
    metrics = _Metrics(registry, pipe)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _ = pipe.engine  # the property starts the engine, before the first request
        yield
        await anyio.to_thread.run_sync(lambda: pipe.engine.close(cancel=True))

    app = FastAPI(title="openjanus", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pipeline, app.state.settings, app.state.registry = pipe, settings, registry

    @app.middleware("http")
    async def guard(request: Request, call_next):
        endpoint = request.url.path
        if request.url.path.startswith("/v1/"):
            if settings.api_key is not None:
                auth = request.headers.get("authorization", "")
                if not hmac.compare_digest(auth.encode(), f"Bearer {settings.api_key}".encode()):
                    metrics.requests.labels(endpoint, "401").inc()
                    return _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                  "invalid_request_error", code="invalid_api_key")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
                metrics.requests.labels(endpoint, "413").inc()
                return _error(413, f"the request body is {int(length):,} bytes; the limit is "
                                   f"{settings.max_body_bytes:,}", "invalid_request_error", code="body_too_large")
        try:
            response = await call_next(request)
        except Exception:  # never a traceback to the client
            response = _error(500, "internal server error", "server_error")
        if endpoint.startswith("/v1/"):
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return _error(e.status, e.message, e.kind, e.param, e.code, e.headers)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        return _error(429, str(e), "rate_limit_error", code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(Cancelled)
    async def cancelled(request: Request, e: Cancelled):  # the server is shutting down (or the client left)
        return _error(503, "the request was cancelled: the server is shutting down", "server_error",
                      code="server_shutting_down")

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        if isinstance(e, ContextTooLong):
            return _error(400, str(e), "invalid_request_error", code="context_length_exceeded")
        return _error(400, str(e), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code in (404, 405):  # OpenAI's words for a path or method it does not serve
            return _error(e.status_code, f"Invalid URL ({request.method} {request.url.path})", "invalid_request_error")
        return _error(e.status_code, str(e.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return _error(500, "internal server error", "server_error")

    async def read_json(request: Request) -> dict:
        body = b""
        async for chunk in request.stream():  # bounded even without a Content-Length
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise APIError(413, f"the request body is over the limit of {settings.max_body_bytes:,} bytes",
                               code="body_too_large")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        return data

    live: set[RequestHandle] = set()  # this app's requests in the engine (pruned as they finish)

    async def submit(request_obj) -> RequestHandle:
        handle = await anyio.to_thread.run_sync(pipe.engine.submit, request_obj)
        live.difference_update([h for h in live if h.done()])
        live.add(handle)
        return handle

    def cancel_running() -> None:
        """Cancel every request of this app still in the engine (a shutdown's grace ran out).
        Each handle is cancelled itself, wherever the engine holds it (queue, batch, or between
        two chunks of a large image request), so each response ends at once."""
        for handle in list(live):
            handle.cancel()

    app.state.cancel_running = cancel_running

    async def wait(handle: RequestHandle, request: Request):
        """The handle's result; a client that goes away cancels its rows in the engine."""
        while not handle.done():
            if await request.is_disconnected():
                handle.cancel()
                break
            await anyio.to_thread.run_sync(handle._done.wait, 0.2)
        return handle.result()

    async def events(handle: RequestHandle) -> AsyncIterator[Any]:
        iterator = iter(handle)
        done = object()
        while True:
            event = await anyio.to_thread.run_sync(next, iterator, done)
            if event is done:
                return
            yield event

    # --- endpoints ---------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_id, "object": "model", "created": created,
                                           "owned_by": "openjanus"}]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id != settings.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {settings.model_id!r}",
                           param="model", code="model_not_found", kind="not_found_error")
        return {"id": settings.model_id, "object": "model", "created": created, "owned_by": "openjanus"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        chat = await anyio.to_thread.run_sync(_chat_request, body, settings)  # decodes (or fetches) images
        handle = await submit(chat)
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        model_id = settings.model_id
        if body.get("stream"):
            options = body.get("stream_options") or {}
            usage_wanted = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(_chat_stream(handle, cid, now, model_id, usage_wanted),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        result = await wait(handle, request)
        metrics.tokens.labels("text").inc(result.completion_tokens)
        return {
            "id": cid, "object": "chat.completion", "created": now, "model": model_id, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": _usage(result),
        }

    async def _chat_stream(handle: RequestHandle, cid: str, now: int, model_id: str,
                           usage_wanted: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
            body = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                    if choices else []}
            if usage_wanted:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n".encode()

        try:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            started = False
            async for event in events(handle):
                if isinstance(event, TextDelta) and event.text:
                    text = event.text if started else event.text.lstrip()
                    started = started or bool(text)
                    if text:
                        yield chunk({"content": text})
            try:
                result = handle.result()
            except Exception as e:
                yield f"data: {json.dumps(_stream_error(e))}\n\n".encode()
                return
            metrics.tokens.labels("text").inc(result.completion_tokens)
            yield chunk({}, result.finish_reason)
            if usage_wanted:
                yield chunk({}, usage=_usage(result), choices=False)
            yield b"data: [DONE]\n\n"
        finally:
            handle.cancel()  # no-op when finished; a client that left frees its rows

    @app.post("/v1/images/generations")
    async def image_generations(request: Request):
        body = await read_json(request)
        image_request = _image_request(body, pipe, settings)
        partial = _field(body, "partial_images", int, 0)
        if not 0 <= partial <= 3:
            raise APIError(400, "'partial_images' must be between 0 and 3", param="partial_images")
        handle = await submit(image_request)
        size = f"{pipe.image_size}x{pipe.image_size}"
        if body.get("stream"):
            return StreamingResponse(_image_stream(handle, partial, size), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        result = await wait(handle, request)
        metrics.images.inc(len(result.images))
        metrics.tokens.labels("image").inc(result.tokens.numel())
        return {"created": int(time.time()), "data": [{"b64_json": _png(im), "revised_prompt": None}
                                                      for im in result.images],
                "output_format": "png", "size": size}

    async def _image_stream(handle: RequestHandle, partial: int, size: str) -> AsyncIterator[bytes]:
        def event(kind: str, payload: dict) -> bytes:
            body = {"type": kind, "created_at": int(time.time()), "size": size, "quality": "auto",
                    "background": "opaque", "output_format": "png", **payload}
            return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

        try:
            marks = [(k + 1) / (partial + 1) for k in range(partial)]  # fractions of the tokens
            sent = 0
            async for ev in events(handle):
                if not isinstance(ev, ImageProgress) or sent >= partial or ev.steps >= ev.total:
                    continue
                if ev.steps / ev.total >= marks[sent]:
                    tokens = handle.partial_tokens()
                    if tokens is None or tokens.shape[1] == 0:
                        continue
                    images = await anyio.to_thread.run_sync(_decode_partial, pipe, tokens)
                    for im in images:
                        yield event("image_generation.partial_image", {"b64_json": _png(im),
                                                                       "partial_image_index": sent})
                    sent += 1
            try:
                result = handle.result()
            except Exception as e:
                yield f"event: error\ndata: {json.dumps({'type': 'error', **_stream_error(e)})}\n\n".encode()
                return
            metrics.images.inc(len(result.images))
            metrics.tokens.labels("image").inc(result.tokens.numel())
            processor = pipe.processor
            prompt_tokens = len(processor.tokenizer.encode(processor.t2i_prompt(handle.request.prompt)))
            image_tokens = result.tokens.shape[1]  # per image
            usage = {"input_tokens": prompt_tokens,
                     "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt_tokens},
                     "output_tokens": image_tokens, "total_tokens": prompt_tokens + image_tokens}
            for im in result.images:
                yield event("image_generation.completed", {"b64_json": _png(im), "usage": usage})
        finally:
            handle.cancel()

    return app


def _stream_error(e: Exception) -> dict:
    """The error that ends a stream after its headers went out, in OpenAI's shape (no internals)."""
    if isinstance(e, Cancelled):
        error = ("the request was cancelled: the server is shutting down", "server_error", "server_shutting_down")
    elif isinstance(e, UserError):
        error = (str(e), "invalid_request_error", "context_length_exceeded" if isinstance(e, ContextTooLong) else None)
    else:
        log.error("a streamed request failed", exc_info=e)
        error = ("internal server error", "server_error", None)
    return {"error": {"message": error[0], "type": error[1], "param": None, "code": error[2]}}


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _decode_partial(pipe: JanusPipeline, tokens) -> list[Image.Image]:
    """Decode the rows sampled so far: the missing raster positions repeat the last row sampled."""
    import torch

    n, steps = tokens.shape
    total, grid = pipe.model.cfg.num_gen_tokens, pipe.model.cfg.vq.grid
    full = torch.empty(n, total, dtype=tokens.dtype)
    full[:, :steps] = tokens
    last_row = tokens[:, max(0, (steps // grid - 1) * grid):][:, :grid]
    if last_row.shape[1] < grid:
        last_row = tokens[:, -1:].expand(n, grid)
    for start in range(steps, total, grid):
        stop = min(total, start + grid)
        full[:, start:stop] = last_row[:, :stop - start]
    return pipe.decode_tokens(full)
