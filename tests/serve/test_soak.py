"""A bounded soak (issue 23): mixed clients for a minute, disconnects and bad requests included,
against `openjanus serve` as a process; then the server is idle, answers /health fast, never
answered 500, and its resident memory is back within a stated margin of where it started."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import httpx
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak_serve.py"
_spec = importlib.util.spec_from_file_location("soak_serve", _PATH)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)

# Idle RSS after the soak may exceed idle RSS before it by this much: allocator caches, the
# understanding-feature cache and KV cache buckets kept for reuse; a leak or a kept burst peak
# (hundreds of MB per round before issue 23) is well above it.
MARGIN_MB = 120


@pytest.mark.slow
def test_a_minute_of_mixed_clients_leaves_the_server_idle_and_its_memory_back():
    port = soak.free_port()
    url = f"http://127.0.0.1:{port}"
    args = soak.argparse.Namespace(model=None, dtype="float32")
    proc = soak.start_server(args, port)
    try:
        soak.wait_up(url, proc)
        driver = soak.Driver(url, "soak")
        httpx.post(url + "/v1/images/generations", json={"prompt": "warm up", "n": 4}, timeout=300)
        driver.run(clients=8, seconds=10)  # warm the caches the server keeps on purpose
        assert soak.idle(url)
        time.sleep(3)
        start = soak.rss_mb(proc.pid)
        driver.run(clients=12, seconds=60)
        assert soak.idle(url), "the server did not go idle"
        time.sleep(3)
        began = time.perf_counter()
        assert httpx.get(url + "/health", timeout=30).status_code == 200
        assert time.perf_counter() - began < 0.5
        end = soak.rss_mb(proc.pid)
        assert not [k for k in driver.counts if k.endswith(" 500")], driver.counts
        assert sum(v for k, v in driver.counts.items() if k.endswith(" 200")) > 20, driver.counts
        assert end - start < MARGIN_MB, f"idle RSS {start:.0f} -> {end:.0f} MB ({driver.counts})"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(60)
