"""The ASGI app: routes, middleware and lifecycle of the OpenAI-compatible server, a web page and
Prometheus metrics. Every request is an engine request (so concurrent callers share batches);
what the bodies and answers hold is `openjanus.serve.protocol`'s business.

`create_app` assembles the pieces: the app's `Requests` (its handles in the engine, which a
shutdown cancels), `Metrics`, the guard middleware (`openjanus.serve.guard`: Host, Origin, API
key, body size and type, read timeouts, no tracebacks), the error handlers, and three routers
(info, chat, images). `uvicorn_config` is how a server runs it (header timeout included).

Work a request causes is bounded before it is done: a chat body's message count and text
length are checked before anything is tokenized, and its images are read only as far as their
headers until the request is admitted (room in the engine's queue, and room in a server-wide
budget of decoded pixels, held until the request ends). When the server goes idle it returns
freed memory to the system (`allocator.release_freed_memory`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from openjanus.allocator import release_freed_memory
from openjanus.canvas import Geometry
from openjanus.errors import UserError
from openjanus.inference.engine import RequestHandle
from openjanus.inference.pipeline import JanusPipeline
from openjanus.inference.scheduler import QueueFull
from openjanus.requests import ChatRequest, ChatResult, ImageProgress, ImageRequest, ImageResult, TextDelta
from openjanus.serve import protocol
from openjanus.serve.edits import FormError, read_edit_form
from openjanus.serve.favicon import favicon_ico
from openjanus.serve.guard import Guard, h11_protocol
from openjanus.serve.logs import AccessLog
from openjanus.serve.protocol import APIError, ServeSettings

__all__ = ["create_app", "uvicorn_config", "ServeSettings", "Requests", "PixelBudget"]

STATIC = Path(__file__).parent / "static"
STREAM_HEADERS = {"Cache-Control": "no-cache"}


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


class EventStream(StreamingResponse):
    """A server-sent event stream that calls `ended` once it is over: sent whole, failed, or the
    client gone. A generator's `finally` is not enough for what a request holds (its pixels in
    the budget): a client that leaves before the first event means a generator that never
    started, so its `finally` never runs, and one that leaves between two events leaves it
    suspended until it is garbage-collected."""

    def __init__(self, content: AsyncIterator[bytes], ended: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=STREAM_HEADERS)
        self._ended = ended

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ended()


# --- the app's requests in the engine -------------------------------------------------------------


class Requests:
    """The handles this app has in the engine. A handle joins the set in the same locked step
    that submits it, so `cancel_running` (a shutdown's grace ran out) sees every request the
    engine may be running; one submitted after it is cancelled at once."""

    def __init__(self, pipe: JanusPipeline) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()
        self._live: set[RequestHandle] = set()
        self._stopping = False

    def _submit(self, request: ImageRequest | ChatRequest) -> RequestHandle:
        with self._lock:
            handle = self.pipe.engine.submit(request)
            self._live.difference_update([h for h in self._live if h.done()])
            self._live.add(handle)
            if self._stopping:
                handle.cancel()
        return handle

    def check_room(self) -> None:
        """429 now, before a request's images are read, when the engine's queue is full."""
        scheduler = self.pipe.engine.core.scheduler
        if not scheduler.has_room:
            raise QueueFull(f"the queue is full ({scheduler.queue_limit} requests waiting)")

    def ended(self) -> None:
        """A route is done with its request: when none is left, freed memory goes back to the
        system (a burst's peak is not kept)."""
        with self._lock:
            self._live.difference_update([h for h in self._live if h.done()])
            idle = not self._live
        if idle:
            release_freed_memory()

    def stream_ended(self, handle: RequestHandle, release: Callable[[], None]) -> None:
        """A streamed answer is over (sent whole, failed, or its client gone): the request leaves
        the engine (no-op when it finished), gives back what it held (`release`), and `ended`."""
        handle.cancel()
        release()
        self.ended()

    async def submit(self, request: ImageRequest | ChatRequest) -> RequestHandle:
        """Submit on a worker thread (tokenizing may take a while) and register the handle."""
        return await anyio.to_thread.run_sync(self._submit, request)

    def cancel_running(self) -> None:
        """Cancel every request of this app still in the engine. Each handle is cancelled
        itself, wherever the engine holds it (queue, batch, or between two chunks of a large
        image request), so each response ends at once."""
        with self._lock:
            self._stopping = True
            live = list(self._live)
        for handle in live:
            handle.cancel()

    @staticmethod
    async def wait(handle: RequestHandle, request: Request) -> Any:
        """The handle's result; a client that goes away cancels its rows in the engine."""
        while not handle.done():
            if await request.is_disconnected():
                handle.cancel()
                break
            await anyio.to_thread.run_sync(_wait_done, handle, 0.2)
        return handle.result()

    @staticmethod
    async def events(handle: RequestHandle) -> AsyncIterator[Any]:
        """The handle's events, each read on a worker thread."""
        iterator = iter(handle)
        done = object()
        while True:
            event = await anyio.to_thread.run_sync(next, iterator, done)
            if event is done:
                return
            yield event


class PixelBudget:
    """Decoded pixels of chat images the server holds at once (every request together); a
    request's images are decoded only once its pixels fit, and count until it ends."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, pixels: int) -> None:
        if pixels > self.limit:
            raise APIError(413, f"the request's images are {pixels:,} pixels together; this server's limit is "
                                f"{self.limit:,}", param="messages", code="image_too_large")
        with self._lock:
            if self.used + pixels > self.limit:
                raise APIError(429, "the server is busy with other images; try again shortly",
                               code="image_budget_exceeded", kind="rate_limit_error", headers={"Retry-After": "1"})
            self.used += pixels

    def give(self, pixels: int) -> None:
        with self._lock:
            self.used -= pixels


def _wait_done(handle: RequestHandle, timeout: float) -> None:
    try:
        handle.result(timeout)
    except Exception:  # TimeoutError, or the request's own error (read again by the caller)
        pass


# --- metrics, middleware, errors, lifecycle --------------------------------------------------------


class Metrics:
    def __init__(self, pipe: JanusPipeline) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("openjanus_requests", "HTTP API requests", ["endpoint", "status"], registry=registry)
        self.tokens = Counter("openjanus_generated_tokens", "Tokens generated", ["kind"], registry=registry)
        self.images = Counter("openjanus_generated_images", "Images generated", registry=registry)
        queue = Gauge("openjanus_queue_depth", "Requests waiting for room in the batch", registry=registry)
        queue.set_function(lambda: pipe.engine.queue_depth)
        running = Gauge("openjanus_running_requests", "Requests in the running batch", registry=registry)
        running.set_function(lambda: pipe.engine.running)

    def image_result(self, result: Any) -> None:
        self.images.inc(len(result.images))
        self.tokens.labels("image").inc(result.tokens.numel())


def _add_error_handlers(app: FastAPI) -> None:
    async def known(request: Request, e: Exception):  # APIError, the engine's refusals, bad values, bugs
        return _error(protocol.api_error(e))

    async def http_error(request: Request, e: StarletteHTTPException):
        if e.status_code in (404, 405):  # OpenAI's words for a path or method it does not serve
            return _error(APIError(e.status_code, f"Invalid URL ({request.method} {request.url.path})"))
        return _error(APIError(e.status_code, str(e.detail)))

    # APIError and UserError (the engine's refusals among them) are answered where the route
    # raised them; Exception is the last resort (a 500, never a traceback).
    for kind in (APIError, UserError, Exception):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _lifespan(pipe: JanusPipeline, requests: Requests):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = pipe.engine  # the property starts the engine, before the first request
        yield
        # The server stops: its requests end (each answers for itself), then the engine it ran.
        requests.cancel_running()
        await anyio.to_thread.run_sync(lambda: engine.close(cancel=True))

    return lifespan


async def read_json(request: Request, settings: ServeSettings) -> dict:
    """The body as a JSON object, bounded even without a Content-Length."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > settings.max_body_bytes:
            raise APIError(413, f"the request body is over the limit of {settings.max_body_bytes:,} bytes",
                           code="body_too_large")
    return protocol.parse_json(body)


# --- routes ---------------------------------------------------------------------------------------------


def _info_routes(settings: ServeSettings, metrics: Metrics, pipe: JanusPipeline) -> APIRouter:
    router = APIRouter()
    created = int(time.time())
    card = {"id": settings.model_id, "object": "model", "created": created, "owned_by": "openjanus"}
    # What the page shows: the model's examples, vocabulary and defaults (its controls start there).
    model_card = {"model": settings.model_id, "weights": pipe.weights, "fingerprint": pipe.fingerprint,
                  "defaults": pipe.card.defaults.to_dict(),
                  "examples": {"prompts": list(pipe.card.example_prompts),
                               "questions": list(pipe.card.example_questions)},
                  "vocabulary": sorted(pipe.card.vocabulary) if pipe.card.vocabulary is not None else None}

    @router.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(favicon_ico(), media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    @router.get("/model-card")
    async def model_card_route():
        return model_card

    @router.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id}

    @router.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card]}

    @router.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id != settings.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist; this server serves {settings.model_id!r}",
                           param="model", code="model_not_found", kind="not_found_error")
        return card

    return router


def _chat_usage(request: Request, result: ChatResult) -> None:
    """What the access line reports for an answer."""
    request.state.usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}


def _chat_routes(requests: Requests, settings: ServeSettings, metrics: Metrics, pipe: JanusPipeline,
                 budget: PixelBudget) -> APIRouter:
    router = APIRouter()
    defaults, fingerprint = pipe.card.defaults, pipe.fingerprint

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request, settings)
        checked = protocol.check_chat(body, settings)  # counts and lengths, before any tokenizing
        if checked.images:
            requests.check_room()  # before the images cost anything
            checked = await anyio.to_thread.run_sync(protocol.read_images, checked, settings)  # headers only
        pixels = checked.pixels
        budget.take(pixels)
        try:
            chat = await anyio.to_thread.run_sync(protocol.chat_from, checked, defaults)  # decodes the images;
            # fields left out take the model's defaults
            del checked
            handle = await requests.submit(chat)
            del chat
        except BaseException:
            budget.give(pixels)
            raise
        cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if protocol.wants_stream(body):
            chunks = protocol.ChatChunks(cid, now, settings.model_id, protocol.usage_wanted(body), fingerprint)
            return EventStream(stream(handle, chunks, request),
                               ended=lambda: requests.stream_ended(handle, lambda: budget.give(pixels)))
        try:
            result = await requests.wait(handle, request)
        finally:
            budget.give(pixels)
            requests.ended()
        metrics.tokens.labels("text").inc(result.completion_tokens)
        _chat_usage(request, result)
        return protocol.chat_completion(result, cid, now, settings.model_id, fingerprint)

    async def stream(handle: RequestHandle, chunks: protocol.ChatChunks, request: Request) -> AsyncIterator[bytes]:
        yield chunks.first()
        async for event in requests.events(handle):
            if isinstance(event, TextDelta) and (chunk := chunks.text(event.text)) is not None:
                yield chunk
        try:
            result = handle.result()
        except Exception as e:
            yield chunks.error(e)
            return
        metrics.tokens.labels("text").inc(result.completion_tokens)
        _chat_usage(request, result)
        for chunk in chunks.end(result):
            yield chunk

    return router


def _image_routes(requests: Requests, settings: ServeSettings, metrics: Metrics, pipe: JanusPipeline,
                  budget: PixelBudget) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/images/generations")
    async def image_generations(request: Request):
        body = await read_json(request, settings)
        image_request = protocol.image_request(body, Geometry.of(pipe.model.cfg), settings, None, pipe.card.defaults)
        return await respond_images(request, body, image_request, "image_generation")

    @router.post("/v1/images/edits")
    async def image_edits(request: Request):
        """OpenAI's images-edit API: a multipart form with `image`, an optional `mask` (a PNG whose
        transparent pixels mark the area to edit; without it, the image's own transparent pixels),
        `prompt`, `n`, `size`, `response_format`, `stream`, `partial_images`."""
        try:
            form = await read_edit_form(request, settings.max_body_bytes)
        except FormError as e:
            raise APIError(413 if "over the limit" in str(e) else 400, str(e), param=e.param) from None
        requests.check_room()  # before the uploads are decoded
        pixels = await anyio.to_thread.run_sync(protocol.form_pixels, form, settings)  # from their headers
        budget.take(pixels)  # held until the edit ends: its response sent (a stream: whole), or the client gone
        try:
            image_request = await anyio.to_thread.run_sync(protocol.image_request, form.body,
                                                           Geometry.of(pipe.model.cfg), settings, form,
                                                           pipe.card.defaults)
        except BaseException:
            budget.give(pixels)
            raise
        return await respond_images(request, form.body, image_request, "image_edit", lambda: budget.give(pixels))

    async def respond_images(request: Request, body: dict, image_request: ImageRequest, kind: str,
                             ended: Callable[[], None] = lambda: None):
        """The answer to an image request; `ended` is called once when the request is over (for a
        stream, when the stream is)."""
        streamed = False
        try:
            partial = protocol.partial_images(body)
            best_of = protocol.best_of(body)
            if best_of > 1:
                return await _best_of(image_request, best_of, request)
            handle = await requests.submit(image_request)
            w, h = handle.canvas.canvas.output_size if handle.canvas is not None else (pipe.image_size,) * 2
            size = f"{w}x{h}"
            if protocol.wants_stream(body):
                response = EventStream(stream(handle, partial, protocol.ImageEvents(size, kind), request),
                                       ended=lambda: requests.stream_ended(handle, ended))
                streamed = True
                return response
            try:
                result = await requests.wait(handle, request)
            finally:
                requests.ended()
            metrics.image_result(result)
            _image_usage(request, result)
            return protocol.images_response(result, size)
        finally:
            if not streamed:
                ended()

    def _image_usage(request: Request, result: ImageResult) -> None:
        request.state.usage = {"prompt_tokens": result.prompt_tokens, "images": len(result.images)}

    verifier: list[Any] = []  # the model's own judge, made on the first best_of request

    async def _best_of(image_request: ImageRequest, n: int, request: Request) -> dict:
        from openjanus.posttrain.best_of import keep_best, widened
        from openjanus.posttrain.rewards import SelfReward

        handle = await requests.submit(widened(image_request, n))
        w, h = handle.canvas.canvas.output_size if handle.canvas is not None else (pipe.image_size,) * 2
        size = f"{w}x{h}"
        candidates = await requests.wait(handle, request)
        if not verifier:
            verifier.append(SelfReward(pipe.model, pipe.processor))
        result, _ = await anyio.to_thread.run_sync(keep_best, verifier[0], image_request, candidates)
        metrics.image_result(candidates)
        return protocol.images_response(result, size)

    async def stream(handle: RequestHandle, partial: int, events: protocol.ImageEvents,
                     request: Request) -> AsyncIterator[bytes]:
        async for index, images in _partial_images(handle, partial):
            for im in images:
                yield events.partial(im, index)
        try:
            result = handle.result()
        except Exception as e:
            yield events.error(e)
            return
        metrics.image_result(result)
        _image_usage(request, result)
        for event in events.completed(result):
            yield event

    async def _partial_images(handle: RequestHandle, partial: int) -> AsyncIterator[tuple[int, list[Image.Image]]]:
        """`partial` previews at even fractions of the image tokens, as the tokens arrive."""
        marks = [(k + 1) / (partial + 1) for k in range(partial)]
        sent = 0
        async for ev in requests.events(handle):
            if not isinstance(ev, ImageProgress) or sent >= partial or ev.steps >= ev.total:
                continue
            if ev.steps / ev.total >= marks[sent]:
                if handle.canvas is not None:
                    tokens, grid = handle.partial_canvas()
                    yield sent, await anyio.to_thread.run_sync(decode_canvas, pipe, tokens, grid,
                                                               handle.canvas.canvas.crop)
                    sent += 1
                    continue
                tokens = handle.partial_tokens()
                if tokens is None or tokens.shape[1] == 0:
                    continue
                yield sent, await anyio.to_thread.run_sync(decode_partial, pipe, tokens)
                sent += 1

    return router


def decode_canvas(pipe: JanusPipeline, tokens, grid: tuple[int, int], crop) -> list[Image.Image]:
    """A preview of an image-conditioned request's canvas (positions not decoded yet filled)."""
    native = (pipe.model.cfg.vq.grid,) * 2
    images = pipe.decode_tokens(tokens, None if tuple(grid) == native else grid)
    return [im.crop(crop) for im in images] if crop is not None else images


def decode_partial(pipe: JanusPipeline, tokens) -> list[Image.Image]:
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


# --- the app --------------------------------------------------------------------------------------------


def create_app(pipe: JanusPipeline, settings: ServeSettings | None = None) -> FastAPI:
    """The server for `pipe` (its engine batches every request). `app.state.cancel_running()`
    cancels the app's requests still in the engine (what a shutdown does when its grace runs out)."""
    settings = settings or ServeSettings(model_id=pipe.name)
    metrics = Metrics(pipe)
    requests = Requests(pipe)
    app = FastAPI(title="openjanus", lifespan=_lifespan(pipe, requests), docs_url=None, redoc_url=None)
    app.state.pipeline, app.state.settings, app.state.registry = pipe, settings, metrics.registry
    app.state.cancel_running = requests.cancel_running
    budget = PixelBudget(settings.max_pixels_in_flight)
    _add_error_handlers(app)
    routers: Iterable[APIRouter] = (_info_routes(settings, metrics, pipe),
                                    _chat_routes(requests, settings, metrics, pipe, budget),
                                    _image_routes(requests, settings, metrics, pipe, budget))
    for router in routers:
        app.include_router(router)

    def guard(inner):  # built by Starlette with the middleware stack; kept for `stop()`
        app.state.guard = Guard(inner, settings, count=lambda endpoint, status: metrics.requests.labels(
            endpoint, str(status)).inc())
        return app.state.guard

    app.add_middleware(guard)
    # Outermost: one access line per request, written when its response has gone out whole.
    app.add_middleware(AccessLog)
    app.state.guard = None
    app.state.budget = budget
    return app


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **kwargs):
    """uvicorn's configuration for `app`: its h11 protocol with the header timeout of the app's
    settings (the guard times out bodies)."""
    import uvicorn

    settings: ServeSettings = app.state.settings
    return uvicorn.Config(app, host=host, port=port, http=h11_protocol(settings.header_timeout_s), **kwargs)
