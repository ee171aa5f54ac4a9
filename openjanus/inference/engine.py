"""The inference engine: one worker owns the model and decodes the requests of many callers in
shared batches.

    engine = Engine(pipeline)                      # or pipeline.engine
    handle = engine.submit(ImageRequest("a red fox", n=4, seed=7))
    for event in handle: ...                       # ImageProgress / TextDelta as they happen
    result = handle.result()                       # ImageResult / ChatResult, or raises

Callers on any thread submit typed requests (`openjanus.requests`); the request is encoded on
the caller's thread, so a bad image or a prompt too long for the context fails there, for that
caller alone. One worker thread runs `BatchRunner` steps: a request that arrives while others
are decoding joins the batch at the next step, and finished requests leave at once. Requests
queue in arrival order when the batch has no room (a row cap and a cached-token cap bound
memory); an image request larger than the batch runs as consecutive chunks that share its
random stream, so its output never depends on what else is running.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from openjanus.errors import UserError
from openjanus.inference.runner import BatchRunner, Job, image_job
from openjanus.requests import ChatRequest, ChatResult, Cost, ImageProgress, ImageRequest, ImageResult, TextDelta

if TYPE_CHECKING:
    from openjanus.inference.pipeline import JanusPipeline

__all__ = ["Engine", "EngineConfig", "RequestHandle", "Cancelled", "QueueFull", "ContextTooLong", "rows_that_fit"]

Request = ImageRequest | ChatRequest
Result = ImageResult | ChatResult
Event = ImageProgress | TextDelta

# Answers longer than this need an explicit max_new_tokens (it reserves cache memory).
DEFAULT_MAX_NEW_TOKENS = 512


class Cancelled(UserError):
    """The request was cancelled before it finished."""


class QueueFull(UserError):
    """The engine's queue is full; try again later."""


class ContextTooLong(UserError):
    """The prompt, or the prompt plus the tokens asked for, does not fit the model's context
    (or the engine's KV-cache budget)."""


@dataclass(frozen=True)
class EngineConfig:
    """Bounds of the shared batch. An image takes two rows (classifier-free guidance), an answer one.

    rows: LLM rows decoded together (the KV cache holds this many rows at most).
    max_cached_tokens: sum over running requests of rows x (prompt + new tokens); None = what
        `kv_cache_gib` of keys and values hold for this model and dtype.
    kv_cache_gib: the KV-cache memory the running requests may reserve when max_cached_tokens
        is None (the allocation rounds rows up to a power of two and lengths to a bucket).
    queue: requests waiting beyond the running ones; more are refused with `QueueFull`.
    max_n: images one request may ask for (larger ones run in chunks of the batch size).
    length_bucket: cache lengths and attention spans round up to multiples of this.
    compile: compile the decode step (and capture it as a CUDA graph on a GPU).
    """

    rows: int = 64
    max_cached_tokens: int | None = None
    kv_cache_gib: float = 4.0
    queue: int = 256
    max_n: int = 1000
    length_bucket: int = 128
    compile: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.kv_cache_gib < float("inf"):
            raise UserError(f"kv_cache_gib must be a positive number, got {self.kv_cache_gib}")
        for name in ("rows", "queue", "max_n", "length_bucket"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.rows < 2:
            raise UserError(f"rows must be >= 2 (an image takes two rows), got {self.rows}")


_DONE = object()


class RequestHandle:
    """A submitted request: wait for its result, iterate its events, or cancel it."""

    def __init__(self, engine: Engine, request: Request, seed: int) -> None:
        self.engine = engine
        self.request = request
        self.seed = seed
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
        self.jobs: list[Job] = []  # image chunks run one after another; a chat has one job
        self._decoding = False  # the worker handed its tokens to the VQ decoder

    # --- for callers ------------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> Result:
        """Block until the request ends; its result, or the error that ended it."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __iter__(self) -> Iterator[Event]:
        """Events as they happen (text pieces, image progress) until the request ends; call
        `result()` afterwards for the result or the error."""
        while True:
            event = self._events.get()
            if event is _DONE:
                return
            yield event

    def cancel(self) -> None:
        """Stop the request at the next step (or before it starts); `result()` raises `Cancelled`."""
        self._cancel.set()
        self.engine._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def partial_tokens(self) -> torch.Tensor | None:
        """Image requests: the tokens sampled so far of the images being generated, [n, steps]
        on the CPU (the running chunk; all images with speculative Jacobi decoding)."""
        # Read each job's tensor once: the worker drops it when the request's tokens are complete.
        running = [(j.done_steps, t) for j in self.jobs if (t := j.tokens) is not None
                   and (not j.finished or _parallel(self.jobs))]
        if not running:
            return None
        steps = min(s for s, _ in running)
        return torch.cat([t[:, :steps] for _, t in running]).cpu()

    def _image_progress(self, job: Job) -> ImageProgress:
        steps = min(j.done_steps for j in self.jobs) if _parallel(self.jobs) else job.done_steps
        return ImageProgress(steps, job.steps)

    # --- for the worker -------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        if self._done.is_set():
            return
        self._result, self._error = result, error
        self._done.set()
        self._events.put(_DONE)

    def _cost(self) -> Cost:
        now = time.perf_counter()
        started = self.started if self.started is not None else now
        return Cost(seconds=now - self.submitted, queued_seconds=started - self.submitted,
                    forward_passes=sum(j.forward_passes for j in self.jobs))


def _tokens_in(gib: float, model) -> int:
    """Cache positions (one row, one slot) that `gib` GiB of keys and values hold for `model`."""
    llm = model.llm.cfg
    per_token = 2 * llm.n_layers * llm.n_kv_heads * llm.head_dim * model.llm.embed.weight.element_size()
    return max(1, int(gib * 2**30 // per_token))


def rows_that_fit(model, row_tokens: int, config: EngineConfig) -> int:
    """Rows of `row_tokens` cached positions each that run together under `config`'s row cap
    and KV budget (an image takes two); `openjanus info` states it with the same rule."""
    tokens = config.max_cached_tokens or _tokens_in(config.kv_cache_gib, model)
    return min(config.rows, tokens // row_tokens)


def _parallel(jobs: list[Job]) -> bool:
    return any(j.jacobi for j in jobs)


class _Chat:
    """Worker-side state of a chat request: streaming detokenisation and stop strings."""

    def __init__(self, handle: RequestHandle, job: Job, prompt_tokens: int, decoder) -> None:
        self.handle, self.job, self.prompt_tokens, self.decoder = handle, job, prompt_tokens, decoder
        self.text = ""
        self.emitted = 0  # characters of `text` already sent
        self.stopped = False

    def feed(self, token_ids: list[int], eos_id: int) -> None:
        stops = self.handle.request.stop
        new = [t for t in token_ids if t != eos_id]
        self.text += "".join(self.decoder.put(t) for t in new)
        if stops:
            cut = min((i for i in (self.text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
        # Hold back a tail that could still become a stop string.
        hold = 0 if self.stopped else max((k for s in stops for k in range(1, len(s))
                                           if self.text.endswith(s[:k])), default=0)
        out = self.text[self.emitted:len(self.text) - hold]
        self.emitted += len(out)
        self.handle._emit(TextDelta(out, tuple(token_ids)))

    def flush(self) -> None:
        if not self.stopped:
            self.text += self.decoder.flush()
        if len(self.text) > self.emitted:
            self.handle._emit(TextDelta(self.text[self.emitted:], ()))
            self.emitted = len(self.text)


class Engine:
    """Owns a pipeline's model; batches the requests of every caller (see the module doc)."""

    def __init__(self, pipeline: JanusPipeline, config: EngineConfig | None = None) -> None:
        self.pipeline = pipeline
        self.config = config or EngineConfig()
        self.max_cached_tokens = self.config.max_cached_tokens or _tokens_in(self.config.kv_cache_gib, pipeline.model)
        self.runner = BatchRunner(pipeline.model, max_rows=self.config.rows,
                                  length_bucket=self.config.length_bucket, compile_step=self.config.compile)
        self._lock = threading.Condition()
        self._queue: deque[tuple[RequestHandle, Job]] = deque()
        self._waiting = 0  # requests in the queue (a request's later chunks are not counted)
        self._live: dict[Job, tuple[RequestHandle, _Chat | None]] = {}
        self._thread: threading.Thread | None = None
        self._post = ThreadPoolExecutor(1, thread_name_prefix="openjanus-vq")
        self._closed = False
        self._cancel_all = False  # set by close(cancel=True); the worker cancels what it holds
        self.steps = 0  # decode steps run so far (for tests and metrics)

    # --- submission (caller threads) ------------------------------------------------------

    def submit(self, request: Request, wait: bool = False) -> RequestHandle:
        """Queue `request`; returns at once (with `wait`, first waits for room in a full queue).
        Raises UserError for a request that cannot run, `QueueFull` when the queue is full."""
        seed = request.seed if request.seed is not None else random.randrange(2**63)
        handle = RequestHandle(self, request, seed)
        if isinstance(request, ImageRequest):
            jobs = self._image_jobs(request, seed)
        elif isinstance(request, ChatRequest):
            jobs = [self._chat_job(request, seed)]
        else:
            raise UserError(f"unknown request type {type(request).__name__}")
        handle.jobs = jobs
        with self._lock:
            if self._closed:
                raise UserError("the engine is shut down")
            while wait and self._waiting >= self.config.queue and not self._closed:
                self._lock.wait()
            if self._waiting >= self.config.queue:
                raise QueueFull(f"the queue is full ({self.config.queue} requests waiting)")
            self._waiting += 1
            # Chunks that share one random stream run one after another; Jacobi images at once.
            self._queue.extend((handle, j) for j in (jobs if _parallel(jobs) else jobs[:1]))
            self._start()
            self._lock.notify_all()
        return handle

    def run(self, requests: Sequence[Request]) -> list[Result]:
        """Submit all `requests` at once (they share batches) and wait for every result."""
        handles = [self.submit(r) for r in requests]
        return [h.result() for h in handles]

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.runner.device).manual_seed(seed)

    def _image_jobs(self, request: ImageRequest, seed: int) -> list[Job]:
        pipe, cfg = self.pipeline, self.pipeline.model.cfg
        if request.n > self.config.max_n:
            raise UserError(f"{request.n} images requested; this engine allows up to {self.config.max_n} "
                            "per request")
        tok = pipe.processor.tokenizer
        ids = tok.encode(pipe.processor.t2i_prompt(request.prompt))
        limit = cfg.llm.max_seq_len - cfg.num_gen_tokens
        if len(ids) > limit:
            raise ContextTooLong(f"the prompt is {len(ids)} tokens; this model allows {limit} before its "
                            f"{cfg.num_gen_tokens} image tokens ({cfg.llm.max_seq_len} positions in all)")
        per_image = 2 * (len(ids) + cfg.num_gen_tokens)
        per_chunk = rows_that_fit(pipe.model, len(ids) + cfg.num_gen_tokens, self.config) // 2
        if per_chunk < 1:
            raise UserError(f"one image needs {per_image} cached tokens; the engine allows {self.max_cached_tokens}")
        if request.jacobi:
            # One job per image (each keeps its own window), all running at once; image i draws
            # from its own stream, so the request's output does not depend on admission order.
            return [image_job(ids, tok.pad_id, 1, request.guidance, request.sampling,
                              self._generator((seed + i * 0x9E3779B97F4A7C15) % 2**63), cfg.num_gen_tokens,
                              jacobi=request.jacobi) for i in range(request.n)]
        generator = self._generator(seed)  # shared by the chunks, which run one after another
        sizes = [min(per_chunk, request.n - s) for s in range(0, request.n, per_chunk)]
        return [image_job(ids, tok.pad_id, k, request.guidance, request.sampling, generator, cfg.num_gen_tokens)
                for k in sizes]

    def _chat_job(self, request: ChatRequest, seed: int) -> Job:
        pipe, cfg = self.pipeline, self.pipeline.model.cfg
        context = cfg.llm.max_seq_len
        try:
            sample = pipe.processor.encode_chat(request.messages, request.system_prompt)
        except ValueError as e:  # placeholders vs images, roles, unreadable images
            raise UserError(str(e)) from None
        n = len(sample.input_ids)
        room = context - n
        max_new = request.max_new_tokens if request.max_new_tokens is not None else min(DEFAULT_MAX_NEW_TOKENS, room)
        if room < 1 or max_new > room:
            advice = f"lower max_new_tokens to at most {room}" if room >= 1 else \
                "shorten the prompt, which alone fills the context"
            raise ContextTooLong(f"prompt is {n} tokens and {max(max_new, 1)} new tokens were requested, but the "
                            f"model's context is {context} tokens: {advice}")
        limit = self.max_cached_tokens
        if n + max_new > limit:
            raise ContextTooLong(f"the request needs {n + max_new} cached tokens; the engine allows {limit}")
        job = Job("text", [sample.input_ids], max_new, request.sampling, self._generator(seed),
                  eos_id=pipe.processor.tokenizer.eos_id if request.stop_at_eos else None,
                  image_mask=torch.tensor(sample.image_mask, dtype=torch.bool),
                  pixel_values=sample.pixel_values.to(pipe.dtype) if sample.num_images else None)
        return job

    # --- worker -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="openjanus-engine", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def close(self, cancel: bool = True) -> None:
        """Stop accepting requests; cancel the queued and running ones (or let them finish), then
        stop the worker."""
        with self._lock:
            self._closed = True
            self._cancel_all = self._cancel_all or cancel
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._post.shutdown(wait=True)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return len({id(h) for h, _ in list(self._live.values())})  # (the worker may be changing it)

    def _used_tokens(self) -> int:
        return sum(j.n_rows * j.length for j in self.runner.jobs)

    def _admit(self) -> None:
        """Move queued jobs into the batch in arrival order while they fit; jobs admitted
        together are prefilled together."""
        limit = self.max_cached_tokens
        admitted: list[tuple[RequestHandle, Job]] = []
        used = self._used_tokens()
        with self._lock:
            while self._queue:
                handle, job = self._queue[0]
                if handle.cancelled or handle.done():  # (done: another of its jobs failed)
                    self._queue.popleft()
                    self._waiting -= job is handle.jobs[0]
                    handle._finish(error=Cancelled("the request was cancelled"))
                    continue
                if not self.runner._fits_with([j for _, j in admitted], job) or used + job.n_rows * job.length > limit:
                    break
                self._queue.popleft()
                self._waiting -= job is handle.jobs[0]
                used += job.n_rows * job.length
                admitted.append((handle, job))
            if admitted:
                self._lock.notify_all()  # room in the queue for a waiting submitter
        if not admitted:
            return
        now = time.perf_counter()
        for handle, _ in admitted:
            if handle.started is None:
                handle.started = now
        try:
            failed = dict(self.runner.add_all([j for _, j in admitted]))
        except Exception as e:  # the shared prefill failed: none of these requests can go on
            for handle, _ in admitted:
                self._fail(handle, e)
            return
        for handle, job in admitted:
            if job in failed:  # this request's own input (e.g. its images): it alone fails
                self._fail(handle, failed[job])
                continue
            chat = None
            if job.kind == "text":
                tok = self.pipeline.processor.tokenizer
                chat = _Chat(handle, job, len(job.prompt_ids[0]), tok.stream_decoder())
            self._live[job] = (handle, chat)

    def _fail(self, handle: RequestHandle, error: BaseException) -> None:
        for job in handle.jobs:
            self.runner.remove(job)
            self._live.pop(job, None)
        if not isinstance(error, UserError):
            error = RuntimeError(f"the request failed: {type(error).__name__}: {error}")
        handle._finish(error=error)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self.runner.jobs and not self._closed:
                    self._lock.wait()
                if self._closed and not self._queue and not self.runner.jobs:
                    return
            try:
                self._iteration()
            except Exception as e:  # a bug or a device error: end the running requests, keep serving
                for handle, _ in list(self._live.values()):
                    self._fail(handle, e)

    def _iteration(self) -> None:
        """Admit what fits, drop cancelled requests, run one step, hand out what it produced."""
        if self._cancel_all:
            # Here, on the worker, which alone moves jobs between the queue, the batch and the
            # VQ decoder: a request between two of its chunks cannot be missed.
            with self._lock:
                for handle, _ in [*self._queue, *self._live.values()]:
                    handle._cancel.set()
        self._admit()
        for job, (handle, _) in list(self._live.items()):
            if handle.cancelled:
                self.runner.remove(job)
                del self._live[job]
                handle._finish(error=Cancelled("the request was cancelled"))
        if not self.runner.jobs:
            return
        finished = self.runner.step()
        self.steps += 1
        eos = self.pipeline.processor.tokenizer.eos_id
        for job, (handle, chat) in list(self._live.items()):
            if job.error is not None:
                continue
            if chat is None:
                if not job.finished:
                    handle._emit(handle._image_progress(job))
                continue
            chat.feed(job.token_ids[-1:], eos)
            if chat.stopped and not job.finished:  # a stop string: leave the batch now
                self.runner.remove(job)
                job.finished = True
                finished.append(job)
        for job in finished:
            handle, chat = self._live.pop(job)
            if job.error is not None:
                self._fail(handle, job.error)
            elif chat is not None:
                self._finish_chat(handle, chat)
            else:
                self._finish_image_chunk(handle, job)

    def _finish_chat(self, handle: RequestHandle, chat: _Chat) -> None:
        chat.flush()
        job = chat.job
        eos = self.pipeline.processor.tokenizer.eos_id
        ids = [t for t in job.token_ids if t != eos]
        reason = "stop" if chat.stopped or (job.token_ids and job.token_ids[-1] == eos) else "length"
        handle._finish(ChatResult(handle.request, chat.text.strip(), ids, chat.prompt_tokens, reason,
                                  handle.seed, handle._cost()))

    def _finish_image_chunk(self, handle: RequestHandle, job: Job) -> None:
        if handle.done() or handle._decoding:
            return  # already decoding (several of its Jacobi images finished in one step)
        handle._emit(handle._image_progress(job))
        if not all(j.finished for j in handle.jobs):
            index = handle.jobs.index(job)
            if not _parallel(handle.jobs) and index + 1 < len(handle.jobs):
                with self._lock:  # behind what arrived meanwhile: a large request does not starve them
                    self._queue.append((handle, handle.jobs[index + 1]))
            return
        handle._decoding = True
        tokens = torch.cat([j.tokens for j in handle.jobs]).cpu()
        for j in handle.jobs:
            j.tokens = None  # the CPU copy is the result; free the device memory
        # VQ decoding runs beside the worker, which goes on decoding the other requests' tokens.
        self._post.submit(self._decode_images, handle, tokens)

    def _decode_images(self, handle: RequestHandle, tokens: torch.Tensor) -> None:
        try:
            images = self.pipeline.decode_tokens(tokens)
        except Exception as e:  # the request's jobs have already left the batch
            handle._finish(error=e if isinstance(e, UserError) else RuntimeError(f"VQ decoding failed: {e}"))
            return
        handle._finish(ImageResult(handle.request, images, tokens, handle.seed, handle._cost()))
