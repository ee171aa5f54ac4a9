"""Load-test helpers shared by the server benchmarks (bench_serve.py, bench_ray_serve.py,
soak_serve.py): a free loopback port, `openjanus serve` as a subprocess, concurrent clients,
percentiles."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, the nearest rank; nan when there are none."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 300, name: str = "the server") -> None:
    """Poll `url`/health until it answers 200; SystemExit (with the end of the server's stderr)
    when the process exits first or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            if proc.poll() is None:
                proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            raise SystemExit(f"{name} did not start: {err[-2000:]}")
        time.sleep(0.3)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen


@contextlib.contextmanager
def serve(flags: list[str], model: str | None = None, name: str = "the server",
          grace: float = 120) -> Iterator[Server]:
    """`openjanus serve` on a free 127.0.0.1 port with `flags` (and `--model`), in its own session
    (Ray's workers included); yields it once /health answers. On leaving: SIGTERM to the
    session, SIGKILL after `grace` seconds (`proc.returncode` then says how it ended)."""
    port = free_port()
    cmd = [sys.executable, "-m", "openjanus", "serve", "--port", str(port), *flags]
    if model:
        cmd += ["--model", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(url, proc, name=name)
        yield Server(url, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_clients(clients: int, count: int, call: Callable[[int], object], seconds: float | None = None) -> float:
    """`clients` threads calling `call(i)` for i in 0..count-1, each taking the next i as it
    finishes one, until all are taken (or `seconds` have passed: no new call starts after that).
    Returns the wall time in seconds."""
    todo = iter(range(count))
    lock = threading.Lock()
    stop_at = None if seconds is None else time.time() + seconds

    def worker() -> None:
        while stop_at is None or time.time() < stop_at:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            call(i)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t
