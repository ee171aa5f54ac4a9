"""The HTTP server: an OpenAI-compatible API and a web page over one `JanusPipeline`.

    app = create_app(JanusPipeline.load(None))       # then: uvicorn.run(app, host="127.0.0.1")

Every HTTP request becomes one engine request, so concurrent clients share batches. The engine
is blocking and runs on its own thread; each request's events reach the event loop through a
small pump thread (`_events`), and a watcher cancels the engine request when its client goes
away. Errors have OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and a bad
request fails alone, before it reaches the shared batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from openjanus.engine import Cancelled, QueueFull, RequestHandle
from openjanus.errors import UserError
from openjanus.pipeline import JanusPipeline
from openjanus.requests import ChatRequest, ImageProgress, ImageRequest, SamplingParams, TextDelta
from openjanus.serve.convert import ImageLimits, blank_below, partial_image_tokens, png_b64, to_messages
from openjanus.serve.schemas import ApiError, ChatCompletionRequest, ImageGenerationRequest, parse_body

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("openjanus.serve")
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts. `api_key` None: no key needed (OPENJANUS_API_KEY is read by the CLI)."""

    model_id: str | None = None  # the id clients name in `model`; default: the pipeline's name
    api_key: str | None = None
    max_body_bytes: int = 16 * 2**20
    images: ImageLimits = field(default_factory=ImageLimits)
    max_prompt_chars: int = 16_000  # chat text and image prompts, before tokenising
    max_images_per_request: int = 4  # `n` of /v1/images/generations
    default_guidance: float = 5.0
    retry_after_s: int = 1  # the Retry-After of a 429


class _Metrics:
    """Prometheus metrics in a registry of the app's own (tests build many apps in one process)."""

    def __init__(self, pipeline: JanusPipeline) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("openjanus_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("openjanus_request_seconds", "Time from request to the last byte of the answer",
                                 ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.tokens = Counter("openjanus_generated_tokens", "Tokens generated (text tokens, image tokens)", ["kind"],
                              registry=r)
        self.prompt_tokens = Counter("openjanus_prompt_tokens", "Prompt tokens of finished chat requests", registry=r)
        self.cancelled = Counter("openjanus_cancelled_requests", "Engine requests cancelled (client gone, shutdown)",
                                 registry=r)
        Gauge("openjanus_queue_depth", "Requests waiting for room in the batch", registry=r).set_function(
            lambda: pipeline.engine.queue_depth)
        Gauge("openjanus_running_requests", "Requests decoding in the batch", registry=r).set_function(
            lambda: pipeline.engine.running)


_ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/images/generations")


class _CountRequests:
    """ASGI middleware: count every answer by endpoint and status, and time it."""

    def __init__(self, app, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else ("/" if path == "/" or path.startswith("/static/") else "other")
        started, status = time.perf_counter(), 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


_END = object()


async def _events(handle: RequestHandle) -> AsyncIterator[Any]:
    """The handle's events on the event loop, fed by a thread that blocks on the handle."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def pump() -> None:
        try:
            for event in handle:
                loop.call_soon_threadsafe(q.put_nowait, event)
        except RuntimeError:  # the loop closed under us (server stopped): the handle is cancelled
            return
        try:
            loop.call_soon_threadsafe(q.put_nowait, _END)
        except RuntimeError:
            pass

    threading.Thread(target=pump, name="openjanus-serve-pump", daemon=True).start()
    while (event := await q.get()) is not _END:
        yield event


def _sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error_for(e: BaseException, param: str | None = None) -> ApiError:
    """An engine error as an HTTP error; never a traceback or internal detail for the client."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, Cancelled):  # by the server: its client left (nobody reads this) or it is shutting down
        return ApiError(503, "the request was cancelled: the server is shutting down", code="server_shutting_down")
    if isinstance(e, QueueFull):
        return ApiError(429, f"the server is busy: {e}", code="rate_limit_exceeded")
    if isinstance(e, UserError):
        msg = str(e)
        # The engine says "... positions" only when a request does not fit the model's context.
        if "positions" in msg:
            return ApiError(400, msg, param=param, code="context_length_exceeded")
        return ApiError(400, msg)
    log.error("request failed", exc_info=e)
    return ApiError(500, "the server failed on this request; see its log", code="internal_error")


def create_app(pipeline: JanusPipeline, config: ServeConfig | None = None, close_engine: bool = False) -> FastAPI:
    """A FastAPI app serving `pipeline` (its engine batches all requests).

    `close_engine`: cancel the engine's requests and stop it when the app shuts down (the CLI
    owns its pipeline; tests that share one do not).
    """
    cfg = config or ServeConfig()
    model_id = cfg.model_id or pipeline.name
    model_cfg = pipeline.model.cfg
    native_size = f"{pipeline.image_size}x{pipeline.image_size}"
    created = int(time.time())
    metrics = _Metrics(pipeline)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if close_engine:
            await run_in_threadpool(pipeline.engine.close, True)

    app = FastAPI(title="openjanus", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pipeline, app.state.config, app.state.metrics = pipeline, cfg, metrics
    app.add_middleware(_CountRequests, metrics=metrics)

    # --- errors ---------------------------------------------------------------------------

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif err.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        return error_response(ApiError(err.status_code, message))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, err: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=err)
        return error_response(ApiError(500, "the server failed on this request; see its log", code="internal_error"))

    # --- helpers --------------------------------------------------------------------------

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer KEY'.")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body is {declared} bytes; this server takes up to {limit}",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def check_model(name: str | None) -> None:
        if name is not None and name != model_id:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves '{model_id}'",
                           param="model", code="model_not_found")

    def check_chars(text: str, param: str) -> None:
        if len(text) > cfg.max_prompt_chars:
            raise ApiError(400, f"{param} is {len(text)} characters; this server takes up to {cfg.max_prompt_chars}",
                           param=param, code="context_length_exceeded")

    async def submit(request: ChatRequest | ImageRequest, param: str) -> RequestHandle:
        try:
            # Encoding (tokens, image preprocessing) happens in submit: keep it off the event loop.
            return await run_in_threadpool(pipeline.submit, request)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy ({e}); retry shortly", code="rate_limit_exceeded",
                           headers={"Retry-After": str(cfg.retry_after_s)}) from None
        except Exception as e:
            raise _error_for(e, param) from None

    def abandon(handle: RequestHandle) -> None:
        """Cancel an engine request nobody waits for any more (its client left, or the server stops)."""
        if not handle.done() and not handle.cancelled:
            handle.cancel()
            metrics.cancelled.inc()

    async def watch(request: Request, handle: RequestHandle) -> None:
        """Cancel the engine request when the client disconnects."""
        while not handle.done():
            if await request.is_disconnected():
                abandon(handle)
                return
            await asyncio.sleep(0.1)

    def streaming(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- endpoints ------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model_id})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_object() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "openjanus"}

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_object()]})

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> JSONResponse:
        authorize(request)
        check_model(name)
        return JSONResponse(model_object())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = parse_body(ChatCompletionRequest, await read_body(request))
        body.check()
        check_model(body.model)
        for i, m in enumerate(body.messages):
            texts = [m.content] if isinstance(m.content, str) else [getattr(p, "text", "") for p in m.content or []]
            check_chars("".join(texts), f"messages.[{i}].content")
        messages = await run_in_threadpool(to_messages, body.messages, cfg.images)
        temperature = 1.0 if body.temperature is None else body.temperature
        try:
            chat = ChatRequest(messages, max_new_tokens=body.max_completion_tokens or body.max_tokens,
                               sampling=SamplingParams(temperature=temperature, top_p=body.top_p),
                               seed=body.seed, stop=body.stops)
        except UserError as e:
            raise ApiError(400, str(e)) from None
        handle = await submit(chat, "messages")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())

        def usage(result) -> dict[str, int]:
            return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                    "total_tokens": result.prompt_tokens + result.completion_tokens}

        def count(result) -> None:
            metrics.tokens.labels("text").inc(result.completion_tokens)
            metrics.prompt_tokens.inc(result.prompt_tokens)

        if not body.stream:
            watcher = asyncio.create_task(watch(request, handle))
            try:
                async for _ in _events(handle):
                    pass
                result = handle.result()
            except Exception as e:
                raise _error_for(e) from None
            finally:
                watcher.cancel()
                abandon(handle)
            count(result)
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None,
                                                     "annotations": []},
                             "logprobs": None, "finish_reason": result.finish_reason}],
                "usage": usage(result), "system_fingerprint": None,
            })

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict, finish_reason: str | None = None) -> dict[str, Any]:
            out = {"id": completion_id, "object": "chat.completion.chunk", "created": now, "model": model_id,
                   "system_fingerprint": None,
                   "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if include_usage:
                out["usage"] = None
            return out

        async def stream() -> AsyncIterator[str]:
            watcher = asyncio.create_task(watch(request, handle))
            try:
                yield _sse(chunk({"role": "assistant", "content": "", "refusal": None}))
                started = False
                async for event in _events(handle):
                    if not isinstance(event, TextDelta):
                        continue
                    text = event.text if started else event.text.lstrip()  # the answer starts at its first word
                    if text:
                        started = True
                        yield _sse(chunk({"content": text}))
                try:
                    result = handle.result()
                except Exception as e:
                    yield _sse(_error_for(e).body)
                    return
                count(result)
                yield _sse(chunk({}, result.finish_reason))
                if include_usage:
                    yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": now,
                                "model": model_id, "system_fingerprint": None, "choices": [], "usage": usage(result)})
                yield "data: [DONE]\n\n"
            finally:
                watcher.cancel()
                abandon(handle)

        return streaming(stream())

    @app.post("/v1/images/generations")
    async def images_generations(request: Request) -> Response:
        authorize(request)
        body = parse_body(ImageGenerationRequest, await read_body(request))
        body.check()
        check_model(body.model)
        check_chars(body.prompt, "prompt")
        if body.size not in (None, "auto", native_size):
            raise ApiError(400, f"size {body.size!r} is not supported; this model makes {native_size} images "
                                f"(or pass 'auto')", param="size", code="invalid_size")
        n = 1 if body.n is None else body.n
        if not 1 <= n <= cfg.max_images_per_request:
            raise ApiError(400, f"n must be between 1 and {cfg.max_images_per_request}, got {n}", param="n")
        try:
            req = ImageRequest(body.prompt, n=n,
                               cfg_weight=cfg.default_guidance if body.guidance_scale is None else body.guidance_scale,
                               sampling=SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                                                       top_k=body.top_k, top_p=body.top_p),
                               seed=body.seed)
        except UserError as e:
            raise ApiError(400, str(e)) from None
        handle = await submit(req, "prompt")
        now = int(time.time())
        if not body.stream:
            watcher = asyncio.create_task(watch(request, handle))
            try:
                async for _ in _events(handle):
                    pass
                result = handle.result()
                images = await run_in_threadpool(lambda: [png_b64(im) for im in result.images])
            except Exception as e:
                raise _error_for(e) from None
            finally:
                watcher.cancel()
                abandon(handle)
            metrics.tokens.labels("image").inc(result.tokens.numel())
            return JSONResponse({"created": now, "data": [{"b64_json": b} for b in images], "size": native_size,
                                 "output_format": "png"})

        partials = body.partial_images or 0
        total = model_cfg.num_gen_tokens
        prompt_tokens = len(pipeline.processor.tokenizer.encode(pipeline.processor.t2i_prompt(body.prompt)))
        common = {"size": native_size, "quality": "auto", "background": "opaque", "output_format": "png"}

        def render_partials(chunk_offset: int) -> list[tuple[int, str]]:
            tokens = handle.partial_tokens()  # [rows of the running chunk, steps so far]
            if tokens is None or tokens.shape[1] == 0:
                return []
            grid, fraction = partial_image_tokens(tokens, total)
            images = pipeline.decode_tokens(grid)
            return [(chunk_offset + i, png_b64(blank_below(im, fraction))) for i, im in enumerate(images)]

        async def stream() -> AsyncIterator[str]:
            watcher = asyncio.create_task(watch(request, handle))
            try:
                # Partial images at evenly spaced points of each chunk's decoding (chunks: see Engine).
                targets = [total * (k + 1) // (partials + 1) for k in range(partials)]
                per_chunk = max(1, handle.jobs[0].n_rows // 2) if handle.jobs else n
                chunk_index, last_steps, sent = 0, 0, 0
                async for event in _events(handle):
                    if not isinstance(event, ImageProgress):
                        continue
                    if event.steps < last_steps:  # the next chunk of a large request started
                        chunk_index, sent = chunk_index + 1, 0
                    last_steps = event.steps
                    if sent < len(targets) and event.steps >= targets[sent] and event.steps < event.total:
                        rendered = await run_in_threadpool(render_partials, chunk_index * per_chunk)
                        for index, b64 in rendered:
                            yield _sse({"type": "image_generation.partial_image", "b64_json": b64,
                                        "created_at": int(time.time()), **common, "partial_image_index": sent,
                                        "index": index}, event="image_generation.partial_image")
                        sent += 1
                try:
                    result = handle.result()
                    images = await run_in_threadpool(lambda: [png_b64(im) for im in result.images])
                except Exception as e:
                    yield _sse(_error_for(e).body, event="error")
                    return
                metrics.tokens.labels("image").inc(result.tokens.numel())
                for index, b64 in enumerate(images):
                    yield _sse({"type": "image_generation.completed", "b64_json": b64, "created_at": int(time.time()),
                                **common, "index": index,
                                "usage": {"input_tokens": prompt_tokens,
                                          "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt_tokens},
                                          "output_tokens": total, "total_tokens": prompt_tokens + total}},
                               event="image_generation.completed")
            finally:
                watcher.cancel()
                abandon(handle)

        return streaming(stream())

    # --- the web page ---------------------------------------------------------------------

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def api_key_from_env() -> str | None:
    return os.environ.get("OPENJANUS_API_KEY") or None
