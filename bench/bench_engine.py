"""What batching across requests buys: the engine with several image requests at once vs one
after another, and the latency of a request that arrives while a batch is running.

    python bench/bench_engine.py                       # the shipped demo model, CPU
    python bench/bench_engine.py --model DIR --requests 8 --repeats 3 --json out.json

Figures (each the median of --repeats runs, after a warm-up run):
  sequential  8 image requests submitted one after another, each waiting for the previous one
  concurrent  the same 8 submitted at once (the engine decodes them in one batch)
  joining     a request submitted when a running batch of the others is half done: its
              latency, against the same request on an idle engine, and against what it would
              be if it had to wait for the batch to finish (what the batch still ran, plus its
              own run alone), as with engines that run one batch to the end
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint folder or preset (default: the shipped demo model)")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.inference.engine import EngineConfig
    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.requests import ImageProgress, ImageRequest

    pipe = JanusPipeline.load(args.model, device="cpu", dtype=args.dtype)
    pipe.start_engine(EngineConfig(rows=2 * (args.requests + 1)))
    n_tokens = pipe.model.cfg.num_gen_tokens
    prompts = ["a red circle", "two blue squares", "a green star above a yellow triangle", "three purple circles",
               "a small orange square", "a blue triangle left of a red star", "two green circles", "a yellow star"]
    requests = [ImageRequest(prompts[i % len(prompts)], n=1, seed=i) for i in range(args.requests)]
    late = ImageRequest("a red triangle below a blue circle", n=1, seed=99)

    def sequential() -> float:
        t = time.perf_counter()
        for r in requests:
            pipe.generate(r)
        return time.perf_counter() - t

    def concurrent() -> float:
        t = time.perf_counter()
        pipe.run(requests)
        return time.perf_counter() - t

    def joining() -> tuple[float, float, float]:
        """Latency of `late` submitted when the batch is half done; the same request on an idle
        engine; and the time the batch still ran after `late` arrived (what `late` would have
        waited on top of its own run if it could not join)."""
        handles = [pipe.submit(r) for r in requests]
        for event in handles[0]:
            if isinstance(event, ImageProgress) and event.steps >= n_tokens // 2:
                break
        t = time.perf_counter()
        late_handle = pipe.submit(late)
        late_handle.result()
        joined = time.perf_counter() - t
        for h in handles:
            h.result()
        batch_left = max(h.submitted + h.result().cost.seconds for h in handles) - t
        t = time.perf_counter()
        pipe.generate(late)
        return joined, time.perf_counter() - t, batch_left

    sequential(), concurrent()  # warm-up
    seq = [sequential() for _ in range(args.repeats)]
    con = [concurrent() for _ in range(args.repeats)]
    joins = [joining() for _ in range(args.repeats)]
    s, c = statistics.median(seq), statistics.median(con)
    j_in = statistics.median(x for x, _, _ in joins)
    j_idle = statistics.median(y for _, y, _ in joins)
    j_wait = statistics.median(y + z for _, y, z in joins)
    n = args.requests
    figures = {
        "model": pipe.name, "threads": torch.get_num_threads(), "dtype": args.dtype, "requests": n,
        "image_tokens": n_tokens, "sequential_s": round(s, 3), "concurrent_s": round(c, 3),
        "sequential_images_per_s": round(n / s, 3), "concurrent_images_per_s": round(n / c, 3),
        "speedup": round(s / c, 2), "join_latency_s": round(j_in, 3), "idle_latency_s": round(j_idle, 3),
        "wait_for_batch_latency_s": round(j_wait, 3),
    }
    print(f"model {pipe.name}, {n} image requests x {n_tokens} tokens, {torch.get_num_threads()} threads, "
          f"{args.dtype}, median of {args.repeats}")
    print(f"  one after another: {s:6.2f} s  {n / s:6.2f} images/s")
    print(f"  all at once:       {c:6.2f} s  {n / c:6.2f} images/s   ({s / c:.2f}x)")
    print(f"  a request arriving when the batch is half done: {j_in:.2f} s joining it; {j_idle:.2f} s alone on an "
          f"idle engine; {j_wait:.2f} s if it had to wait for the batch to finish "
          f"({j_wait / j_in:.2f}x its joined latency)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    pipe.engine.close()


if __name__ == "__main__":
    sys.exit(main())
