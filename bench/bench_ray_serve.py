"""The Ray Serve app against the plain server: p50 latency with 1 client, throughput with 8.

    python bench/bench_ray_serve.py                   # demo model, CPU: plain, Ray 1 replica, Ray 2 replicas
    python bench/bench_ray_serve.py --model DIR --requests 64 --clients 8 --json out.json

Each configuration runs as `openjanus serve ...` in a subprocess on a free 127.0.0.1 port:
  plain       openjanus serve                                  (torch's threads: every core)
  ray-1       openjanus serve --replicas 1 --replica-cpus C    (C = every core: Ray's proxy hop alone)
  ray-2       openjanus serve --replicas 2 --replica-cpus C/2  (the cores split between two engines)
After 4 warm-up requests: --latency-requests image requests one after another (p50, p95), then
--requests requests from --clients concurrent clients (images/s). Every request is one image
of the demo prompt with its own seed. The configurations run in turn, --repeats rounds (a
fresh server each time); each round's figures are printed, then the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import percentile, run_clients, serve  # noqa: E402


def measure(name: str, flags: list[str], args: argparse.Namespace) -> dict:
    with serve(flags, args.model, name=name) as server:
        http = httpx.Client(base_url=server.url, timeout=600, limits=httpx.Limits(max_connections=args.clients))

        def image(seed: int) -> float:
            t = time.perf_counter()
            r = http.post("/v1/images/generations", json={"prompt": "a red circle above a blue square", "n": 1,
                                                          "seed": seed})
            r.raise_for_status()
            return time.perf_counter() - t

        for i in range(4):
            image(10_000 + i)
        latency = [image(i) for i in range(args.latency_requests)]
        hop = []  # a request that runs no model: what the HTTP path (and Ray's proxy hop) costs
        for _ in range(50):
            t = time.perf_counter()
            http.get("/v1/models").raise_for_status()
            hop.append(time.perf_counter() - t)
        wall = run_clients(args.clients, args.requests, lambda i: image(1000 + i))
        return {"config": name, "flags": " ".join(flags), "p50_s": statistics.median(latency),
                "p95_s": percentile(latency, 0.95), "models_p50_s": statistics.median(hop),
                "images_per_s": args.requests / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--latency-requests", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--only", default="plain,ray-1,ray-2", help="which configurations, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    configs = {"plain": [], "ray-1": ["--replicas", "1", "--replica-cpus", str(cores)],
               "ray-2": ["--replicas", "2", "--replica-cpus", f"{cores / 2:g}"]}
    names = args.only.split(",")
    rows = [dict(measure(name, configs[name], args), round=k) for k in range(args.repeats) for name in names]
    print(f"{cores} CPUs; 1 client: {args.latency_requests} requests in a row; {args.clients} clients: "
          f"{args.requests} requests; one image each")
    print(f"{'round':<6} {'config':<8} {'p50 (1 client)':>15} {'p95':>8} {'GET /v1/models p50':>19} "
          f"{f'images/s ({args.clients} clients)':>22}")
    for r in rows:
        print(f"{r['round']:<6} {r['config']:<8} {r['p50_s'] * 1000:>12.0f} ms {r['p95_s'] * 1000:>5.0f} ms "
              f"{r['models_p50_s'] * 1000:>16.1f} ms {r['images_per_s']:>22.2f}")
    for name in names:
        mine = [r for r in rows if r["config"] == name]
        print(f"median {name:<8} {statistics.median(r['p50_s'] for r in mine) * 1000:>12.0f} ms {'':>8} "
              f"{statistics.median(r['models_p50_s'] for r in mine) * 1000:>16.1f} ms "
              f"{statistics.median(r['images_per_s'] for r in mine):>22.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
