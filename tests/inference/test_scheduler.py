"""The scheduler without a model (in the style of vLLM's tests/v1/core/test_scheduler.py):
requests are plain objects with a row count and a length; each test schedules, finishes and
drops them and checks which ran where."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from openjanus.errors import UserError
from openjanus.inference.scheduler import QueueFull, Scheduler, chunk_sizes, kv_bytes_per_token, rows_that_fit


@dataclass(eq=False)
class FakeJob:
    n_rows: int
    length: int = 10
    name: str = ""

    def __repr__(self) -> str:
        return self.name or f"FakeJob({self.n_rows}x{self.length})"


def create_scheduler(rows: int = 8, max_cached_tokens: int = 10_000, queue: int = 16) -> Scheduler:
    return Scheduler(rows, max_cached_tokens, queue)


def placed(out) -> list[tuple[str, str, int]]:
    return [(owner, job.name, start) for owner, job, start in out.admitted]


def test_admits_in_arrival_order_on_the_lowest_free_rows():
    s = create_scheduler(rows=8)
    for name, rows in (("a", 2), ("b", 4), ("c", 2)):
        s.add(name, [FakeJob(rows, name=name)])
    assert s.waiting == 3
    assert placed(s.schedule()) == [("a", "a", 0), ("b", "b", 2), ("c", "c", 6)]
    assert s.waiting == 0 and not s.idle


def test_the_head_of_the_queue_blocks_later_requests_that_would_fit():
    """A large request waits for rows rather than being overtaken forever by small ones."""
    s = create_scheduler(rows=8)
    s.add("a", [FakeJob(6, name="a")])
    s.schedule()
    s.add("big", [FakeJob(4, name="big")])
    s.add("small", [FakeJob(2, name="small")])  # would fit in rows 6-7, but queues behind "big"
    assert placed(s.schedule()) == []
    assert s.finish(s.running[0]) is True
    assert placed(s.schedule()) == [("big", "big", 0), ("small", "small", 4)]


def test_first_fit_reuses_a_hole_left_by_a_finished_job():
    s = create_scheduler(rows=8)
    jobs = {name: FakeJob(n, name=name) for name, n in (("a", 2), ("b", 2), ("c", 4))}
    for name, job in jobs.items():
        s.add(name, [job])
    s.schedule()
    s.finish(jobs["a"])  # rows 0-1 free, 2-7 taken
    s.add("d", [FakeJob(4, name="d")])  # no 4 free rows in a row
    s.add("e", [FakeJob(2, name="e")])
    assert placed(s.schedule()) == []
    s.finish(jobs["b"])  # rows 0-3 free
    assert placed(s.schedule()) == [("d", "d", 0)]
    assert placed(s.schedule()) == []  # "e" waits: rows full
    assert s.start_row(jobs["c"]) == 4


def test_the_kv_budget_bounds_what_runs_together():
    s = create_scheduler(rows=64, max_cached_tokens=100)
    for name in "abc":
        s.add(name, [FakeJob(2, length=20, name=name)])  # 40 cached positions each
    assert [o for o, _, _ in s.schedule().admitted] == ["a", "b"]
    assert s.used_tokens() == 80
    s.finish(s.running[0])
    assert [o for o, _, _ in s.schedule().admitted] == ["c"]


def test_a_job_that_can_never_fit_is_refused_when_added():
    s = create_scheduler(rows=4, max_cached_tokens=100)
    with pytest.raises(UserError, match="cannot fit"):
        s.add("wide", [FakeJob(6)])
    with pytest.raises(UserError, match="cannot fit"):
        s.add("long", [FakeJob(2, length=60)])
    assert s.idle and s.waiting == 0


def test_the_queue_counts_requests_not_chunks():
    s = create_scheduler(rows=2, queue=2)
    s.add("a", [FakeJob(2, name="a1"), FakeJob(2, name="a2"), FakeJob(2, name="a3")])
    s.add("b", [FakeJob(2, name="b")])
    with pytest.raises(QueueFull, match="2 requests"):
        s.add("c", [FakeJob(2)])
    s.schedule()  # "a" starts: one request waits
    assert s.waiting == 1 and s.has_room


def test_chunks_run_one_after_another_behind_what_arrived_meanwhile():
    s = create_scheduler(rows=2)
    a1, a2 = FakeJob(2, name="a1"), FakeJob(2, name="a2")
    s.add("a", [a1, a2])
    assert placed(s.schedule()) == [("a", "a1", 0)]
    s.add("b", [FakeJob(2, name="b")])  # arrives while a1 runs
    assert s.finish(a1) is False  # "a" has a chunk to come
    assert placed(s.schedule()) == [("b", "b", 0)]
    s.finish(s.running[0])
    assert placed(s.schedule()) == [("a", "a2", 0)]
    assert s.finish(a2) is True and s.idle


def test_together_jobs_queue_at_once_and_end_with_the_last():
    s = create_scheduler(rows=8)
    jobs = [FakeJob(2, name=f"i{k}") for k in range(3)]
    s.add("jacobi", jobs, together=True)
    assert placed(s.schedule()) == [("jacobi", "i0", 0), ("jacobi", "i1", 2), ("jacobi", "i2", 4)]
    assert [s.finish(j) for j in (jobs[1], jobs[0], jobs[2])] == [False, False, True]
    assert s.idle


def test_cancelled_requests_leave_the_queue_and_drop_frees_their_rows():
    s = create_scheduler(rows=4)
    a1, a2 = FakeJob(4, name="a1"), FakeJob(4, name="a2")
    s.add("a", [a1, a2])
    s.add("b", [FakeJob(2, name="b")])
    s.add("c", [FakeJob(2, name="c")])
    s.schedule()
    out = s.schedule(cancelled=lambda owner: owner == "b")
    assert out.dropped == {"b": []} and out.admitted == [] and s.waiting == 1
    out = s.schedule(cancelled=lambda owner: owner == "a")  # running: its rows free at once
    assert out.dropped == {"a": [a1]}  # its running chunk; its next chunk is gone too
    assert placed(out) == [("c", "c", 0)]
    s.finish(s.running[0])
    assert s.idle and s.owners() == []


def test_drop_forgets_a_failed_request():
    s = create_scheduler(rows=4)
    a1, a2 = FakeJob(2, name="a1"), FakeJob(2, name="a2")
    s.add("a", [a1, a2], together=True)
    s.add("b", [FakeJob(4, name="b")])
    s.schedule()
    assert s.drop("a") == [a1, a2] and s.drop("a") == []
    assert placed(s.schedule()) == [("b", "b", 0)]


def test_a_request_cannot_be_added_twice():
    s = create_scheduler()
    s.add("a", [FakeJob(2)])
    with pytest.raises(ValueError, match="queued already"):
        s.add("a", [FakeJob(2)])


def test_budget_rules():
    assert chunk_sizes(5, 2) == [2, 2, 1] and chunk_sizes(4, 4) == [4]
    # Janus-Pro-7B's LLM in bfloat16: 30 layers x 32 kv heads x 128 dims, keys and values.
    assert kv_bytes_per_token(30, 32, 128, 2) == 2 * 30 * 32 * 128 * 2
    assert rows_that_fit(row_tokens=100, rows=64, max_cached_tokens=1_000) == 10
    assert rows_that_fit(row_tokens=10, rows=64, max_cached_tokens=1_000) == 64

