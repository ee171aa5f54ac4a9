"""Which request runs next, and on which rows: plain Python, no model, no tensors.

The engine's step is three calls, as in vLLM v1: `Scheduler.schedule()` decides which queued
jobs join the batch and where, the runner prefills and decodes them, and `Scheduler.finish()`
records what left the batch. The scheduler alone decides placement; the runner trusts it.

Rules:
- Queue order: jobs are admitted in arrival order; the first that does not fit blocks those
  behind it (a large request is never overtaken forever).
- Rows: a job takes a contiguous range of rows, the lowest free one (first fit).
- KV budget: the running jobs' rows x cache slots stay within `max_cached_tokens`.
- Chunks: a request may be several jobs. Chunks that share one random stream run one after
  another, each next chunk queued behind what arrived meanwhile; `together` chunks (each with
  its own stream) queue at once. A request may `extend` itself with jobs made from what its
  finished ones produced (the windows of a large image), queued behind what arrived meanwhile.
- The queue holds at most `queue` requests (a request's later chunks are not counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from openjanus.errors import UserError

__all__ = ["Schedulable", "Scheduler", "SchedulerOutput", "QueueFull", "kv_bytes_per_token", "rows_that_fit",
           "chunk_sizes"]


class QueueFull(UserError):
    """The engine's queue is full; try again later."""


class Schedulable(Protocol):
    """What the scheduler needs to know of a job: its rows and the cache slots each row holds."""

    @property
    def n_rows(self) -> int: ...

    @property
    def length(self) -> int: ...


def kv_bytes_per_token(n_layers: int, n_kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes of keys and values that one cached position of one row takes."""
    return 2 * n_layers * n_kv_heads * head_dim * element_size


def rows_that_fit(row_tokens: int, rows: int, max_cached_tokens: int) -> int:
    """Rows of `row_tokens` cached positions each that run together under a row cap and a KV
    budget of `max_cached_tokens` (an image takes two rows)."""
    return min(rows, max_cached_tokens // row_tokens)


def chunk_sizes(n: int, per_chunk: int) -> list[int]:
    """`n` items in consecutive chunks of at most `per_chunk`."""
    if per_chunk < 1:
        raise ValueError(f"per_chunk must be >= 1, got {per_chunk}")
    return [min(per_chunk, n - s) for s in range(0, n, per_chunk)]


@dataclass
class _Request:
    owner: Hashable
    pending: deque  # later chunks, queued one at a time
    jobs: list  # all its jobs, for drop()


@dataclass
class SchedulerOutput:
    """What one `schedule()` decided: jobs to start, with their first row, in admission order;
    and the cancelled requests it dropped, each with its jobs that were running (their rows
    are free now; the runner must let them go)."""

    admitted: list[tuple[Hashable, Schedulable, int]] = field(default_factory=list)
    dropped: dict[Hashable, list[Schedulable]] = field(default_factory=dict)


class Scheduler:
    """Queue and placement of jobs on `rows` rows within `max_cached_tokens` cached positions."""

    def __init__(self, rows: int, max_cached_tokens: int, queue: int) -> None:
        if rows < 1 or max_cached_tokens < 1 or queue < 1:
            raise ValueError(f"rows, max_cached_tokens and queue must be positive, got {rows}, "
                             f"{max_cached_tokens}, {queue}")
        self.rows = rows
        self.max_cached_tokens = max_cached_tokens
        self.queue_limit = queue
        self._queue: deque[tuple[_Request, Schedulable, bool]] = deque()  # (request, job, first job?)
        self._requests: dict[Hashable, _Request] = {}
        self._running: dict[Schedulable, tuple[Hashable, int]] = {}  # job -> (owner, first row)
        self.waiting = 0  # requests whose first job is queued

    # --- state ---------------------------------------------------------------------------------

    @property
    def running(self) -> list[Schedulable]:
        return list(self._running)

    def owner_of(self, job: Schedulable) -> Hashable:
        return self._running[job][0]

    def start_row(self, job: Schedulable) -> int:
        return self._running[job][1]

    def used_tokens(self) -> int:
        return sum(j.n_rows * j.length for j in self._running)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    @property
    def has_room(self) -> bool:
        """Whether another request may queue."""
        return self.waiting < self.queue_limit

    def fits_alone(self, job: Schedulable) -> bool:
        """Whether `job` could ever run (on an empty batch)."""
        return job.n_rows <= self.rows and job.n_rows * job.length <= self.max_cached_tokens

    # --- requests ------------------------------------------------------------------------------

    def add(self, owner: Hashable, jobs: Sequence[Schedulable], together: bool = False) -> None:
        """Queue a request's jobs: all at once (`together`) or one after another, each next one
        queued when the one before it finishes. Raises `QueueFull` beyond `queue` requests."""
        if not jobs:
            raise ValueError("a request needs at least one job")
        if owner in self._requests:
            raise ValueError(f"{owner!r} is queued already")
        for job in jobs:
            if not self.fits_alone(job):
                raise UserError(f"a job of {job.n_rows} rows x {job.length} positions cannot fit in {self.rows} rows "
                                f"and {self.max_cached_tokens} cached positions")
        if not self.has_room:
            raise QueueFull(f"the queue is full ({self.queue_limit} requests waiting)")
        now, later = (list(jobs), []) if together else (list(jobs[:1]), list(jobs[1:]))
        request = _Request(owner, deque(later), list(jobs))
        self._requests[owner] = request
        self.waiting += 1
        self._queue.extend((request, j, i == 0) for i, j in enumerate(now))

    def extend(self, owner: Hashable, jobs: Sequence[Schedulable]) -> None:
        """Queue more jobs of a request already admitted (the next wave of a large image's
        windows, made from what the last wave sampled): all at once, behind what is queued
        meanwhile, and not counted against the queue limit (the request holds its place)."""
        for job in jobs:
            if not self.fits_alone(job):
                raise UserError(f"a job of {job.n_rows} rows x {job.length} positions cannot fit in {self.rows} rows "
                                f"and {self.max_cached_tokens} cached positions")
        request = self._requests.get(owner)
        if request is None:  # its last job finished in this step
            request = self._requests[owner] = _Request(owner, deque(), [])
        request.jobs.extend(jobs)
        self._queue.extend((request, j, False) for j in jobs)

    def schedule(self, cancelled: Callable[[Hashable], bool] = lambda owner: False) -> SchedulerOutput:
        """Drop the requests that are `cancelled` (queued or running), then admit queued jobs in
        arrival order while they find rows and budget."""
        out = SchedulerOutput()
        for owner in [o for o in self._requests if cancelled(o)]:
            out.dropped[owner] = self.drop(owner)
        used = self.used_tokens()
        while self._queue:
            request, job, first = self._queue[0]
            start = self._free_start(job.n_rows)
            if start is None or used + job.n_rows * job.length > self.max_cached_tokens:
                break
            self._queue.popleft()
            self.waiting -= first
            used += job.n_rows * job.length
            self._running[job] = (request.owner, start)
            out.admitted.append((request.owner, job, start))
        return out

    def finish(self, job: Schedulable) -> bool:
        """`job` left the batch (done): free its rows, queue its request's next chunk. True when
        the request has no job left, running or to come."""
        owner, _ = self._running.pop(job)
        request = self._requests[owner]
        if request.pending:
            self._queue.append((request, request.pending.popleft(), False))  # behind what arrived meanwhile
            return False
        if any(self._running.get(j, (None,))[0] == owner for j in request.jobs) or \
                any(r is request for r, _, _ in self._queue):
            return False
        del self._requests[owner]
        return True

    def drop(self, owner: Hashable) -> list[Schedulable]:
        """Forget a request (cancelled or failed): its queued and later jobs go, its running
        jobs free their rows. Returns the jobs that were running."""
        request = self._requests.pop(owner, None)
        if request is None:
            return []
        for r, j, first in list(self._queue):
            if r is request:
                self._queue.remove((r, j, first))
                self.waiting -= first
        running = [j for j, (o, _) in self._running.items() if o == owner]
        for j in running:
            del self._running[j]
        return running

    def owners(self) -> list[Hashable]:
        """Every request that is queued or running."""
        return list(self._requests)

    # --- placement -----------------------------------------------------------------------------

    def _free_start(self, n_rows: int) -> int | None:
        """First row of the lowest free contiguous range of `n_rows` rows."""
        start = 0
        for a, b in sorted((s, s + j.n_rows) for j, (_, s) in self._running.items()):
            if a - start >= n_rows:
                break
            start = max(start, b)
        return start if start + n_rows <= self.rows else None
