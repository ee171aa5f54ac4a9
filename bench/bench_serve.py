"""Load on the HTTP server: concurrent clients against `openjanus serve` on loopback.

    python bench/bench_serve.py                         # the demo model, CPU
    python bench/bench_serve.py --model DIR --clients 8 --requests 32 --json out.json

Starts the server as a subprocess on a free 127.0.0.1 port, then
  1. sends 8 image requests one after another, then the same 8 at once (batching ratio);
  2. runs --clients concurrent clients sending --requests mixed requests in all (every third a
     chat about an image, the others image generations), bounded by --timeout seconds,
and prints throughput, p50/p95 latency and errors.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import percentile, run_clients, serve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600, help="stop sending after this many seconds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    with serve([], args.model, grace=60) as server:
        http = httpx.Client(base_url=server.url, timeout=600)

        def image(i: int) -> httpx.Response:
            return http.post("/v1/images/generations", json={"prompt": f"a red circle and a blue square {i}",
                                                              "n": 1, "seed": i})

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
        picture = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

        def chat(i: int) -> httpx.Response:
            return http.post("/v1/chat/completions", json={"max_tokens": 16, "seed": i, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": picture}},
                                             {"type": "text", "text": "How many shapes are there?"}]}]})

        image(0)  # warm-up
        t = time.perf_counter()
        seq = [image(i) for i in range(8)]
        sequential = time.perf_counter() - t
        out: list = [None] * 8
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, image(i))) for i in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        concurrent = time.perf_counter() - t
        batch_errors = sum(r.status_code != 200 for r in seq + out)
        same = sum(a.json()["data"][0]["b64_json"] == b.json()["data"][0]["b64_json"] for a, b in zip(seq, out)
                   if a.status_code == b.status_code == 200)

        latencies: dict[str, list[float]] = {"image": [], "chat": []}
        errors: list[str] = []

        def request(i: int) -> None:
            kind = "chat" if i % 3 == 2 else "image"
            t0 = time.perf_counter()
            try:
                r = chat(i) if kind == "chat" else image(100 + i)
            except httpx.HTTPError as e:
                errors.append(type(e).__name__)
                return
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:100]}")
                return
            latencies[kind].append(time.perf_counter() - t0)

        wall = run_clients(args.clients, args.requests, request, seconds=args.timeout)
        metrics = http.get("/metrics").text
    server_exit = server.proc.returncode

    done = sum(len(v) for v in latencies.values())
    figures = {
        "sequential_8_images_s": round(sequential, 2), "concurrent_8_images_s": round(concurrent, 2),
        "batching_speedup": round(sequential / concurrent, 2), "batch_errors": batch_errors,
        "same_images_alone_and_concurrent": same, "clients": args.clients, "requests_done": done,
        "errors": len(errors), "seconds": round(wall, 2), "requests_per_s": round(done / wall, 2),
        **{f"{k}_p50_s": round(percentile(v, 0.5), 3) for k, v in latencies.items()},
        **{f"{k}_p95_s": round(percentile(v, 0.95), 3) for k, v in latencies.items()},
        "server_exit_code": server_exit,
    }
    print(f"8 image requests: one after another {sequential:.2f} s, at once {concurrent:.2f} s "
          f"({sequential / concurrent:.2f}x), errors {batch_errors}, identical images {same}/8")
    print(f"{args.clients} clients, {done} requests in {wall:.2f} s ({done / wall:.2f}/s), errors {len(errors)}")
    for kind, v in latencies.items():
        if v:
            print(f"  {kind:<5} n={len(v):<3} p50 {percentile(v, 0.5):.2f} s  p95 {percentile(v, 0.95):.2f} s  "
                  f"mean {statistics.mean(v):.2f} s")
    print("  " + " ".join(line for line in metrics.splitlines() if line.startswith("openjanus_generated_images_total")))
    print(f"server stopped with SIGTERM, exit code {server_exit}")
    for e in errors[:5]:
        print("  error:", e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
