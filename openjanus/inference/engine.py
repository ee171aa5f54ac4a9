"""The inference engine: one worker owns the model and decodes the requests of many callers in
shared batches.

    with Engine(model, processor, EngineConfig(rows=32)) as engine:   # or pipe.engine
        handle = engine.submit(ImageRequest("a red fox", n=4, seed=7))
        for event in handle: ...                 # ImageProgress / TextDelta as they happen
        result = handle.result()                 # ImageResult / ChatResult, or raises

Callers on any thread submit typed requests (`openjanus.requests`); the request is encoded on
the caller's thread, so a bad image or a prompt too long for the context fails there, for that
caller alone. One worker thread repeats `EngineCore.step`: the scheduler admits what fits
(`openjanus.inference.scheduler`), the runner prefills it and decodes one step for every
running job (`openjanus.inference.runner`), and what finished leaves at once. An image request
larger than the batch runs as consecutive chunks that share its random stream (the official
sampler's one draw over all images per step), or, with `seed_per_image`, each image draws from
its own stream (seeded `image_seed(seed, i)`); either way its output never depends on what else
is running.

The engine is built from a model and a processor; it knows nothing above it. `start()` starts
its worker, `close()` stops it (a context manager does both); a closed engine stays closed.
"""

from __future__ import annotations

import atexit
import dataclasses
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from openjanus.canvas import Canvas, Geometry, image_to_pixels, keep_source_pixels, prepare_canvas
from openjanus.errors import UserError
from openjanus.images import open_image
from openjanus.inference import scheduler as sched
from openjanus.inference.autowindow import WindowChooser
from openjanus.inference.runner import BatchRunner, Job, JobState, image_job
from openjanus.inference.sampling import image_seed
from openjanus.inference.scheduler import QueueFull, Scheduler, chunk_sizes
from openjanus.inference.windows import CanvasRun
from openjanus.model.janus import Janus
from openjanus.model_card import GenerationDefaults, ImageDefaults
from openjanus.numbers import check_integer, check_number
from openjanus.processing import JanusProcessor
from openjanus.requests import (
    ChatRequest,
    ChatResult,
    Cost,
    ImageProgress,
    ImageRequest,
    ImageResult,
    SamplingParams,
    TextDelta,
)

__all__ = ["Engine", "EngineConfig", "EngineCore", "RequestHandle", "Cancelled", "QueueFull", "ContextTooLong",
           "rows_that_fit", "kv_bytes_per_token", "decode_tokens", "tokens_to_pil", "run_jobs",
           "generate_image_tokens", "generate_text"]

Request = ImageRequest | ChatRequest
Result = ImageResult | ChatResult
Event = ImageProgress | TextDelta

# Answers longer than this need an explicit max_new_tokens (it reserves cache memory).
DEFAULT_MAX_NEW_TOKENS = 512


class Cancelled(UserError):
    """The request was cancelled before it finished."""


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
    prefix_cache: keep finished conversations' keys and values so that a later prompt starting
        the same way (a chat's next turn) skips recomputing them; shared by all callers, held
        within the KV budget beside the running requests, least recently used evicted first.
    """

    rows: int = 64
    max_cached_tokens: int | None = None
    kv_cache_gib: float = 4.0
    queue: int = 256
    max_n: int = 1000
    length_bucket: int = 128
    compile: bool = False
    prefix_cache: bool = True

    def __post_init__(self) -> None:
        check_number(self.kv_cache_gib, low=0, low_open=True, name="kv_cache_gib")
        for name in ("rows", "queue", "max_n", "length_bucket"):
            check_integer(getattr(self, name), low=1, name=name)
        if self.rows < 2:
            raise UserError(f"rows must be >= 2 (an image takes two rows), got {self.rows}")


def kv_bytes_per_token(model: Janus) -> int:
    """Bytes of keys and values one cached position of one row takes for `model` as loaded."""
    llm = model.llm.cfg
    return sched.kv_bytes_per_token(llm.n_layers, llm.n_kv_heads, llm.head_dim, model.llm.embed.weight.element_size())


def max_cached_tokens(model: Janus, config: EngineConfig) -> int:
    """The KV budget of `config` in cached positions (rows x slots) for `model`."""
    return config.max_cached_tokens or max(1, int(config.kv_cache_gib * 2**30 // kv_bytes_per_token(model)))


def rows_that_fit(model: Janus, row_tokens: int, config: EngineConfig) -> int:
    """Rows of `row_tokens` cached positions each that run together under `config`'s row cap
    and KV budget (an image takes two); `openjanus info` states it with the same rule."""
    return sched.rows_that_fit(row_tokens, config.rows, max_cached_tokens(model, config))


def tokens_to_pil(images: Tensor) -> list[Image.Image]:
    """Decoded images [P, 3, H, W] in about [-1, 1] -> PIL, truncating to uint8 as the official code does."""
    arr = images.float().cpu().numpy().transpose(0, 2, 3, 1)  # [P, H, W, 3]
    arr = np.clip((arr + 1) / 2 * 255, 0, 255).astype(np.uint8)  # astype truncates toward zero
    return [Image.fromarray(a) for a in arr]


@torch.inference_mode()
def decode_tokens(model: Janus, tokens: Tensor, grid: tuple[int, int] | None = None,
                  separately: bool = False) -> list[Image.Image]:
    """Image tokens [P, rows * columns] -> P PIL images, through the VQ decoder; `grid` is
    (rows, columns), the native square when None. All P in one batch, as the official code
    decodes them, or `separately`, one image at a time: convolution kernels pick their algorithm
    by batch size, so a batch of P rounds differently from each image alone, and an image
    regenerated by itself (its own seed, n=1) must give the same pixels."""
    device = model.llm.embed.weight.device
    tokens = tokens.to(device)
    rows, cols = grid or (model.cfg.vq.grid, model.cfg.vq.grid)
    if tokens.ndim != 2 or tokens.shape[1] != rows * cols:
        raise UserError(f"expected image tokens of shape [n, {rows * cols}] ({rows} x {cols}), "
                        f"got {list(tokens.shape)}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.vq.codebook_size:
        raise UserError(f"image tokens must lie in [0, {model.cfg.vq.codebook_size})")
    if not separately:
        return tokens_to_pil(model.decode_image_tokens(tokens, grid))
    return [im for row in tokens for im in tokens_to_pil(model.decode_image_tokens(row[None], grid))]


def _seed_per_image(request: ImageRequest, native_px: int) -> bool:
    """Whether the request's images draw from streams of their own: asked for, or Jacobi (each
    image keeps its own window) or a canvas (its windows run as separate jobs)."""
    canvas = request.image is not None or (request.size is not None and request.size != (native_px, native_px))
    return request.seed_per_image or bool(request.jacobi) or canvas


# --- the core: one step of scheduler and runner, no threads -----------------------------------


@dataclass
class StepOutput:
    """What one `EngineCore.step` did, per request (`owner`)."""

    started: list[tuple[Hashable, JobState]] = field(default_factory=list)
    failed: list[tuple[Hashable, BaseException]] = field(default_factory=list)  # at prefill; already dropped
    cancelled: list[Hashable] = field(default_factory=list)  # already dropped
    finished: list[tuple[Hashable, JobState]] = field(default_factory=list)  # done or failed (state.error)


class EngineCore:
    """`schedule()` -> prefill and decode -> `finish()`: the engine's step, without threads.

    The engine's worker repeats `step()`; `run_jobs` drives the same core on the caller's
    thread (tests, benchmarks). `lock` guards the scheduler, which callers on other threads
    reach through `add`.
    """

    def __init__(self, runner: BatchRunner, scheduler: Scheduler) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self.lock = threading.Condition()
        self._states: dict[Job, JobState] = {}

    @property
    def idle(self) -> bool:
        return self.scheduler.idle

    def add(self, owner: Hashable, jobs: Sequence[Job], together: bool = False) -> None:
        with self.lock:
            self.scheduler.add(owner, jobs, together)
            self.lock.notify_all()

    def extend(self, owner: Hashable, jobs: Sequence[Job]) -> None:
        """Queue more jobs of a request already admitted (see `Scheduler.extend`)."""
        with self.lock:
            self.scheduler.extend(owner, jobs)
            self.lock.notify_all()

    def drop(self, owner: Hashable) -> None:
        """Forget a request: its queued jobs go, its running ones leave the batch."""
        with self.lock:
            jobs = self.scheduler.drop(owner)
            self.lock.notify_all()  # room in the queue
        self._let_go(jobs)

    def _let_go(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            state = self._states.pop(job, None)
            if state is not None:
                self.runner.remove(state)

    def end(self, state: JobState) -> None:
        """A running job leaves before its last step (a chat reached a stop string)."""
        self.runner.remove(state, keep_prefix=True)
        state.finished = True
        self._finish(state)

    def _finish(self, state: JobState) -> None:
        self._states.pop(state.job, None)
        with self.lock:
            self.scheduler.finish(state.job)

    def step(self, cancelled: Callable[[Hashable], bool] = lambda owner: False) -> StepOutput:
        out = StepOutput()
        with self.lock:
            decided = self.scheduler.schedule(cancelled)
            if decided.admitted or decided.dropped:
                self.lock.notify_all()  # room in the queue for a waiting submitter
        for owner, jobs in decided.dropped.items():
            self._let_go(jobs)
            out.cancelled.append(owner)
        if decided.admitted:
            owner_of = {j: o for o, j, _ in decided.admitted}
            try:
                states, failed = self.runner.add_all([(j, s) for _, j, s in decided.admitted])
            except Exception as e:  # the shared prefill failed: none of these requests can go on
                states, failed = [], [(j, e) for _, j, _ in decided.admitted]
            for job, error in failed:
                if owner_of[job] not in [o for o, _ in out.failed]:
                    out.failed.append((owner_of[job], error))
            for state in states:
                self._states[state.job] = state
                out.started.append((owner_of[state.job], state))
            for owner, _ in out.failed:
                self.drop(owner)
            # After the prefills (which may read entries): trim to what the new jobs leave.
            self._bound_prefix_cache()
        if self.runner.states:
            for state in self.runner.step():
                owner = self.scheduler.owner_of(state.job)
                self._finish(state)
                out.finished.append((owner, state))
            self._bound_prefix_cache()
        return out

    def _bound_prefix_cache(self) -> None:
        """The prefix cache holds what the KV budget leaves beside the running jobs."""
        prefixes = self.runner.prefix_cache
        if prefixes is not None:
            with self.lock:
                prefixes.capacity = max(0, self.scheduler.max_cached_tokens - self.scheduler.used_tokens())
            prefixes.trim()


def run_jobs(runner: BatchRunner, jobs: Sequence[Job], max_cached_tokens: int | None = None) -> list[JobState]:
    """Decode `jobs` to the end on `runner` through the engine's core, on this thread: admitted
    in order as rows free up. Raises the first job's error."""
    core = EngineCore(runner, Scheduler(runner.rows, max_cached_tokens or sys.maxsize, queue=max(1, len(jobs))))
    for i, job in enumerate(jobs):
        core.add(i, [job])
    states: dict[Job, JobState] = {}
    while not core.idle:
        out = core.step()
        for _, error in out.failed:
            raise error
        states.update((s.job, s) for _, s in out.started)
        for _, state in out.finished:
            if state.error is not None:
                raise state.error
    return [states[j] for j in jobs]


def generate_image_tokens(
    model: Janus,
    prompt_ids: Sequence[int],
    pad_id: int,
    n: int = 1,
    guidance: float = ImageDefaults.guidance,
    sampling: SamplingParams = SamplingParams(),
    generator: torch.Generator | None = None,
    compile: bool = False,
    jacobi: int = 0,
    jacobi_sampler: str = "mcsjd",
) -> Tensor:
    """Sample `n` images' tokens for one prompt (ids ending with `<begin_of_image>`) with
    classifier-free guidance: [n, num_gen_tokens] int64 in raster order. With `jacobi`, each
    image is its own job (they all draw from `generator`, in turn)."""
    num = model.cfg.num_gen_tokens
    if jacobi:
        jobs = [image_job(prompt_ids, pad_id, 1, guidance, sampling, generator, num, jacobi, jacobi_sampler)
                for _ in range(n)]
    else:
        jobs = [image_job(prompt_ids, pad_id, n, guidance, sampling, generator, num)]
    states = run_jobs(BatchRunner(model, rows=2 * n, compile=compile), jobs)
    return torch.cat([s.tokens for s in states])


def generate_text(
    model: Janus,
    prompts: Sequence[Sequence[int]],
    eos_id: int | None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    sampling: SamplingParams = SamplingParams(temperature=0.0),
    generator: torch.Generator | None = None,
) -> Iterator[list[int | None]]:
    """Decode each prompt (one row each, decoded together); yields once per step each row's
    new token id, or None for rows already done (EOS is yielded, then None)."""
    jobs = [Job("text", [list(p)], max_new_tokens, sampling, generator, eos_id=eos_id) for p in prompts]
    runner = BatchRunner(model, rows=max(2, len(jobs)))
    core = EngineCore(runner, Scheduler(runner.rows, sys.maxsize, queue=max(1, len(jobs))))
    for i, job in enumerate(jobs):
        core.add(i, [job])
    states: dict[int, JobState] = {}
    while not core.idle:
        before = {i: len(s.token_ids) for i, s in states.items()}
        out = core.step()
        for _, error in out.failed:
            raise error
        for _, state in out.finished:
            if state.error is not None:
                raise state.error
        states.update(out.started)
        yield [s.token_ids[-1] if (s := states.get(i)) is not None and len(s.token_ids) > before.get(i, 0) else None
               for i in range(len(jobs))]


# --- requests -------------------------------------------------------------------------------

class RequestHandle:
    """A submitted request: wait for its result, iterate its events, or cancel it."""

    def __init__(self, engine: Engine, request: Request, seed: int, jobs: list[Job], prompt_tokens: int) -> None:
        self._engine = engine
        self.request = request
        self.seed = seed
        self.jobs = jobs  # image chunks run one after another (Jacobi images at once); a chat has one job
        self.prompt_tokens = prompt_tokens
        self.states: dict[Job, JobState] = {}  # the jobs that started, filled by the worker
        self.canvas: CanvasRun | None = None  # image-conditioned requests: their windows and tokens
        self.submitted = time.perf_counter()
        self.started: float | None = None
        self._events: list[Event] = []  # every event so far: each iteration replays them from the start
        self._new_event = threading.Condition()
        self._done = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._cancel = threading.Event()
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

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the request to end; whether it has."""
        return self._done.wait(timeout)

    def __iter__(self) -> Iterator[Event]:
        """Events as they happen (text pieces, image progress) until the request ends; call
        `result()` afterwards for the result or the error. Each iteration sees every event from
        the first, so a handle may be iterated again, or from several threads at once."""
        seen = 0
        while True:
            with self._new_event:
                while seen == len(self._events) and not self._done.is_set():
                    self._new_event.wait()
                if seen == len(self._events):  # ended, and every event was seen
                    return
                event = self._events[seen]
            seen += 1
            yield event

    def cancel(self) -> None:
        """Stop the request at the next step (or before it starts); `result()` raises `Cancelled`."""
        self._cancel.set()
        self._engine._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    @property
    def together(self) -> bool:
        """Whether the request's jobs run at once (Jacobi images) rather than one after another."""
        return self.canvas is not None or any(j.jacobi for j in self.jobs)

    def progress(self) -> tuple[int, int]:
        """(tokens sampled so far, tokens planned) over all its images or its answer's budget."""
        if self.canvas is not None:
            steps, total = self.canvas.progress(list(self.states.values()))
            n = self.request.n
            return (n * total, n * total) if self.done() else (n * steps, n * total)
        planned = sum((j.images or 1) * j.steps for j in self.jobs)
        if self.done():
            return planned, planned
        return sum((j.images or 1) * self._steps_of(j) for j in self.jobs), planned

    def partial_tokens(self) -> torch.Tensor | None:
        """Image requests: the tokens sampled so far of the images being generated, [n, steps]
        on the CPU (the running chunk; all images with speculative Jacobi decoding)."""
        if self.canvas is not None:
            return None  # a canvas previews through `partial_canvas`
        # Read each state's tensor once: the worker drops it when the request's tokens are complete.
        running = [(s.done_steps, t) for s in list(self.states.values()) if (t := s.tokens) is not None
                   and (not s.finished or self.together)]
        if not running:
            return None
        steps = min(s for s, _ in running)
        return torch.cat([t[:, :steps] for _, t in running]).cpu()

    def partial_canvas(self) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """Image-conditioned requests: the canvas tokens so far [n, rows * columns] (positions not
        decoded yet filled for a preview) and the grid (rows, columns)."""
        if self.canvas is None:
            return None
        return self.canvas.partial(), self.canvas.canvas.grid

    def _steps_of(self, job: Job) -> int:
        state = self.states.get(job)
        return state.done_steps if state is not None else 0

    def _image_progress(self, state: JobState) -> ImageProgress:
        if self.canvas is not None:
            return ImageProgress(*self.canvas.progress(list(self.states.values())))
        steps = min(self._steps_of(j) for j in self.jobs) if self.together else state.done_steps
        return ImageProgress(steps, state.job.steps)

    # --- for the worker -------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        with self._new_event:
            self._events.append(event)
            self._new_event.notify_all()

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        with self._new_event:
            if self._done.is_set():
                return
            self._result, self._error = result, error
            self._done.set()
            self._new_event.notify_all()

    def _cost(self) -> Cost:
        now = time.perf_counter()
        started = self.started if self.started is not None else now
        return Cost(seconds=now - self.submitted, queued_seconds=started - self.submitted,
                    forward_passes=len(set().union(*(s.pass_ids for s in self.states.values()))),
                    cached_tokens=sum(s.cached_prefix for s in self.states.values()))


class _Chat:
    """Worker-side state of a chat request: streaming detokenisation and stop strings."""

    def __init__(self, handle: RequestHandle, state: JobState, decoder) -> None:
        self.handle, self.state, self.decoder = handle, state, decoder
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


# Engines whose worker may still run. A script that exits while one is busy closes it first
# (cancelling its requests): a daemon worker still inside torch while the interpreter finalizes
# aborts the process ("terminate called without an active exception", exit status 134).
_running: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for engine in list(_running):
        engine.close(cancel=True)


class Engine:
    """Batches the requests of every caller on `model` (see the module doc)."""

    def __init__(self, model: Janus, processor: JanusProcessor, config: EngineConfig | None = None,
                 defaults: GenerationDefaults | None = None) -> None:
        self.model = model
        self.processor = processor
        self.config = config or EngineConfig()
        # What a request leaves None (sampling, guidance, answer length): the model's defaults.
        self.defaults = defaults or GenerationDefaults()
        self.max_cached_tokens = max_cached_tokens(model, self.config)
        runner = BatchRunner(model, rows=self.config.rows, length_bucket=self.config.length_bucket,
                             compile=self.config.compile, prefix_cache=self.config.prefix_cache)
        self.core = EngineCore(runner, Scheduler(self.config.rows, self.max_cached_tokens, self.config.queue))
        self.window_chooser = WindowChooser(model, lambda greedy: tuple(runner.draft_stats[greedy]))
        self._lock = self.core.lock
        self._live: dict[JobState, tuple[RequestHandle, _Chat | None]] = {}
        self._thread: threading.Thread | None = None
        self._post: ThreadPoolExecutor | None = None
        self._closed = False
        self._cancel_all = False  # set by close(cancel=True); the worker cancels what it holds

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the worker (once; again is a no-op). A closed engine cannot start again."""
        with self._lock:
            if self._closed:
                raise UserError("the engine is closed; start a new one")
            if self._thread is None:
                _running.add(self)
                self._post = ThreadPoolExecutor(1, thread_name_prefix="openjanus-vq")
                self._thread = threading.Thread(target=self._loop, name="openjanus-engine", daemon=True)
                self._thread.start()
        return self

    def close(self, cancel: bool = True) -> None:
        """Stop accepting requests; cancel the queued and running ones (or let them finish), then
        stop the worker and free the KV cache."""
        with self._lock:
            self._closed = True
            self._cancel_all = self._cancel_all or cancel
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._post is not None:
            self._post.shutdown(wait=True)
        runner = self.core.runner
        runner.cache = runner.hidden = None
        runner._features.clear()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queue_depth(self) -> int:
        return self.core.scheduler.waiting

    @property
    def running(self) -> int:
        return len({id(h) for h, _ in list(self._live.values())})  # (the worker may be changing it)

    # --- submission (caller threads) ------------------------------------------------------

    def submit(self, request: Request, wait: bool = False) -> RequestHandle:
        """Queue `request`; returns at once (with `wait`, first waits for room in a full queue).
        Raises UserError for a request that cannot run, `QueueFull` when the queue is full.
        Settings the request left None take the engine's defaults (the handle and the result
        carry the request as run)."""
        if not isinstance(request, (ImageRequest, ChatRequest)):
            raise UserError(f"the engine takes an ImageRequest or a ChatRequest, got {type(request).__name__}")
        request = self.defaults.apply(request)
        seed = request.seed if request.seed is not None else random.randrange(2**63)
        canvas = None
        if isinstance(request, ImageRequest):
            jobs, prompt_tokens, canvas = self._image_jobs(request, seed)
        elif isinstance(request, ChatRequest):
            jobs, prompt_tokens = [self._chat_job(request, seed)], None
            prompt_tokens = jobs[0].prompt_len
        else:
            raise UserError(f"unknown request type {type(request).__name__}")
        handle = RequestHandle(self, request, seed, jobs, prompt_tokens)
        handle.canvas = canvas
        with self._lock:
            if self._closed:
                raise UserError("the engine is shut down")
            if self._thread is None:
                raise UserError("the engine is not started: call start() or use it in a with statement")
            while wait and not self.core.scheduler.has_room and not self._closed:
                self._lock.wait()
            if self._closed:
                raise UserError("the engine is shut down")
            self.core.add(handle, jobs, together=handle.together)
        return handle

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.core.runner.device).manual_seed(seed)

    def _seed_per_image(self, request: ImageRequest) -> bool:
        return _seed_per_image(request, Geometry.of(self.model.cfg).native_px)

    def _image_jobs(self, request: ImageRequest, seed: int) -> tuple[list[Job], int, CanvasRun | None]:
        cfg = self.model.cfg
        if request.n > self.config.max_n:
            raise UserError(f"{request.n} images requested; this engine allows up to {self.config.max_n} "
                            "per request")
        tok = self.processor.tokenizer
        ids = tok.encode(self.processor.t2i_prompt(request.prompt))
        limit = cfg.llm.max_seq_len - cfg.num_gen_tokens
        if len(ids) > limit:
            raise ContextTooLong(f"the prompt is {len(ids)} tokens; this model allows {limit} before its "
                                 f"{cfg.num_gen_tokens} image tokens ({cfg.llm.max_seq_len} positions in all)")
        per_image = 2 * (len(ids) + cfg.num_gen_tokens)
        per_chunk = rows_that_fit(self.model, len(ids) + cfg.num_gen_tokens, self.config) // 2
        if per_chunk < 1:
            raise UserError(f"one image needs {per_image} cached tokens; the engine allows {self.max_cached_tokens}")
        if request.jacobi_branches > per_chunk:
            raise UserError(f"jacobi_branches={request.jacobi_branches} takes {2 * request.jacobi_branches} rows per "
                            f"image; this engine fits {2 * per_chunk} (--rows, --kv-cache-gib)")
        own_streams = self._seed_per_image(request)  # before auto picks a window: "auto" draws per image
        gumbel = False
        if request.jacobi == "auto":  # the window, or plain decoding, from what this machine measures
            window = self.window_chooser.choose(request.n, greedy=request.sampling.temperature == 0)
            # Gumbel images are the same whichever it picks: with no window, the plain jobs sample
            # by the same noise per position as a window would (a function of each image's seed).
            gumbel = window == 0 and request.jacobi_sampler == "gumbel" and request.sampling.temperature > 0
            request = dataclasses.replace(request, jacobi=window)
        geo = Geometry.of(cfg)
        if request.image is not None or (request.size is not None and request.size != (geo.native_px,) * 2):
            run = self._canvas_run(request, seed, ids, per_chunk, geo, gumbel)
            return run.next_stage(), len(ids), run
        if own_streams:
            # Image i draws from its own stream, seeded image_seed(seed, i): it does not depend on
            # how many images the request asks for, on chunking, or on admission order, and `n=1`
            # with that seed gives it alone.
            generators = [self._generator(image_seed(seed, i)) for i in range(request.n)]
            if request.jacobi:  # one job per image (each keeps its own window), all running at once
                return [image_job(ids, tok.pad_id, 1, request.guidance, request.sampling, g, cfg.num_gen_tokens,
                                  jacobi=request.jacobi, jacobi_sampler=request.jacobi_sampler,
                                  branches=request.jacobi_branches)
                    for g in generators], len(ids), None
            jobs, start = [], 0
            for k in chunk_sizes(request.n, per_chunk):
                jobs.append(image_job(ids, tok.pad_id, k, request.guidance, request.sampling,
                                      generators[start:start + k], cfg.num_gen_tokens, gumbel=gumbel))
                start += k
            return jobs, len(ids), None
        # The official sampler's stream: one draw over all the request's images per step, from one
        # generator that the chunks share (they run one after another).
        generator = self._generator(seed)
        return [image_job(ids, tok.pad_id, k, request.guidance, request.sampling, generator, cfg.num_gen_tokens)
                for k in chunk_sizes(request.n, per_chunk)], len(ids), None

    def _canvas_run(self, request: ImageRequest, seed: int, ids: list[int], per_chunk: int,
                    geo: Geometry, gumbel: bool = False) -> CanvasRun:
        """An image-conditioned request's canvas: the source read, fitted and VQ-encoded here,
        on the caller's thread (a bad image fails for its caller alone), and its windows."""
        image = mask = None
        if request.image is not None:
            image = open_image(request.image, keep_alpha=True)
        if request.mask is not None:
            mask = request.mask if isinstance(request.mask, Tensor) else open_image(request.mask, keep_alpha=True)
        canvas = prepare_canvas(geo, request.size, image, mask, request.region, request.outpaint)
        source = None
        if canvas.image is not None:
            device, dtype = self.core.runner.device, self.model.llm.embed.weight.dtype
            pixels = image_to_pixels(canvas.image)[None].to(device, dtype)  # [1, 3, h, w]
            x0, y0, x1, y1 = (v // geo.patch for v in canvas.image_box)
            source = torch.full(canvas.grid, -1, dtype=torch.long)
            with torch.inference_mode():
                encoded = self.model.gen_tokenizer.encode(pixels).cpu()  # [1, h/patch * w/patch]
            source[y0:y1, x0:x1] = encoded.view(y1 - y0, x1 - x0)
        return CanvasRun(request, canvas, source, ids, self.processor.tokenizer.pad_id, geo.native, per_chunk, seed,
                         self._generator, self.core.runner.device, gumbel)

    def _chat_job(self, request: ChatRequest, seed: int) -> Job:
        context = self.model.cfg.llm.max_seq_len
        try:
            sample = self.processor.encode_chat(request.messages, request.system_prompt)
        except ValueError as e:  # placeholders vs images, roles, unreadable images
            raise UserError(str(e)) from None
        n = len(sample.input_ids)
        room = context - n
        # Not asked: the model's default length, else what the context leaves up to 512.
        max_new = request.max_new_tokens if request.max_new_tokens is not None else \
            min(self.defaults.chat.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, room)
        if room < 1 or max_new > room:
            advice = f"lower max_new_tokens to at most {room}" if room >= 1 else \
                "shorten the prompt, which alone fills the context"
            raise ContextTooLong(f"prompt is {n} tokens and {max(max_new, 1)} new tokens were requested, but the "
                                 f"model's context is {context} tokens: {advice}")
        limit = self.max_cached_tokens
        if n + max_new > limit:
            raise ContextTooLong(f"the request needs {n + max_new} cached tokens; the engine allows {limit}")
        dtype = self.model.llm.embed.weight.dtype
        return Job("text", [sample.input_ids], max_new, request.sampling, self._generator(seed),
                   eos_id=self.processor.tokenizer.eos_id if request.stop_at_eos else None,
                   image_mask=torch.tensor(sample.image_mask, dtype=torch.bool),
                   pixel_values=sample.pixel_values.to(dtype) if sample.num_images else None)

    # --- worker -------------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self.core.idle and not self._closed:
                    self._lock.wait()
                if self._closed and self.core.idle:
                    return
            try:
                self._iteration()
            except Exception as e:  # a bug or a device error: end the running requests, keep serving
                for handle, _ in list(self._live.values()):
                    self._fail(handle, e)

    def _iteration(self) -> None:
        """One core step: admit what fits, drop cancelled requests, decode, hand out the results."""
        if self._cancel_all:
            # Here, on the worker, which alone moves jobs between the queue, the batch and the
            # VQ decoder: a request between two of its chunks cannot be missed.
            with self._lock:
                for handle in self.core.scheduler.owners():
                    handle._cancel.set()
        out = self.core.step(cancelled=lambda h: h.cancelled or h.done())
        for handle in out.cancelled:
            self._forget(handle)
            handle._finish(error=Cancelled("the request was cancelled"))
        now = time.perf_counter()
        for handle, state in out.started:
            if handle.started is None:
                handle.started = now
            handle.states[state.job] = state
            chat = _Chat(handle, state, self.processor.tokenizer.stream_decoder()) if state.job.kind == "text" else None
            self._live[state] = (handle, chat)
        for handle, error in out.failed:
            self._fail(handle, error)
        finished = [state for _, state in out.finished]
        eos = self.processor.tokenizer.eos_id
        for state, (handle, chat) in list(self._live.items()):
            if state.error is not None:
                continue
            if chat is None:
                if not state.finished:
                    handle._emit(handle._image_progress(state))
                continue
            chat.feed(state.token_ids[-1:], eos)
            if chat.stopped and not state.finished:  # a stop string: leave the batch now
                self.core.end(state)
                finished.append(state)
        for state in finished:
            handle, chat = self._live.pop(state)
            if state.error is not None:
                self._fail(handle, state.error)
            elif chat is not None:
                self._finish_chat(handle, chat)
            else:
                self._finish_image_chunk(handle, state)

    def _forget(self, handle: RequestHandle) -> None:
        for state in list(handle.states.values()):
            self._live.pop(state, None)

    def _fail(self, handle: RequestHandle, error: BaseException) -> None:
        self.core.drop(handle)
        self._forget(handle)
        if not isinstance(error, UserError):
            error = RuntimeError(f"the request failed: {type(error).__name__}: {error}")
        handle._finish(error=error)

    def _finish_chat(self, handle: RequestHandle, chat: _Chat) -> None:
        chat.flush()
        state = chat.state
        eos = self.processor.tokenizer.eos_id
        ids = [t for t in state.token_ids if t != eos]
        reason = "stop" if chat.stopped or (state.token_ids and state.token_ids[-1] == eos) else "length"
        handle._finish(ChatResult(handle.request, chat.text.strip(), ids, handle.prompt_tokens, reason,
                                  handle.seed, handle._cost()))

    def _finish_image_chunk(self, handle: RequestHandle, state: JobState) -> None:
        if handle.done() or handle._decoding:
            return  # already decoding (several of its Jacobi images finished in one step)
        handle._emit(handle._image_progress(state))
        if handle.canvas is not None:
            try:
                self._finish_window(handle, state)
            except Exception as e:  # its jobs have left the batch: fail it here, or it would wait forever
                self._fail(handle, e)
            return
        if not all(j in handle.states and handle.states[j].finished for j in handle.jobs):
            return  # the scheduler has queued its next chunk
        handle._decoding = True
        tokens = torch.cat([handle.states[j].tokens for j in handle.jobs]).cpu()
        for s in handle.states.values():
            s.tokens = None  # the CPU copy is the result; free the device memory
        # VQ decoding runs beside the worker, which goes on decoding the other requests' tokens.
        self._post.submit(self._decode_images, handle, tokens)

    def _finish_window(self, handle: RequestHandle, state: JobState) -> None:
        """A window job of an image-conditioned request finished: keep its tokens; when its stage
        is complete, queue the next stage made from them, or decode the finished canvas."""
        run = handle.canvas
        if not run.finished(state):
            return
        state.tokens = None
        jobs = run.next_stage()
        if jobs:
            handle.jobs.extend(jobs)
            self.core.extend(handle, jobs)
            return
        handle._decoding = True
        for s in handle.states.values():
            s.tokens = None
        grid = run.canvas.grid
        native = (self.model.cfg.vq.grid,) * 2
        self._post.submit(self._decode_images, handle, run.tokens.tokens.clone(), None if grid == native else grid,
                          run.canvas)

    def _decode_images(self, handle: RequestHandle, tokens: torch.Tensor, grid: tuple[int, int] | None = None,
                       canvas: Canvas | None = None) -> None:
        crop = None if canvas is None else canvas.crop
        try:
            images = decode_tokens(self.model, tokens, grid, separately=self._seed_per_image(handle.request))
            if canvas is not None and handle.request.keep_pixels:
                patch = Geometry.of(self.model.cfg).patch
                images = [keep_source_pixels(im, canvas, patch) for im in images]
            if crop is not None:
                images = [im.crop(crop) for im in images]
        except Exception as e:  # the request's jobs have already left the batch
            handle._finish(error=e if isinstance(e, UserError) else RuntimeError(f"VQ decoding failed: {e}"))
            return
        handle._finish(ImageResult(handle.request, images, tokens, handle.seed,
                                   seeds=[image_seed(handle.seed, i) for i in range(len(images))]
                                   if self._seed_per_image(handle.request) else None,
                                   prompt_tokens=handle.prompt_tokens, cost=handle._cost(), grid=grid))
