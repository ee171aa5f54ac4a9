"""Weight formats for decoding: fp32, bf16 and int8 weight-only, side by side on the same weights.

    python bench/bench_formats.py                                   # janus-pro-1b shapes, random weights
    python bench/bench_formats.py --preset small --steps 32 --json out.json

For each format it times the text-to-image decode step (1 image = 2 CFG rows, and 4 images),
prints it against the memory floor (LLM + image-head weight bytes / this machine's measured
read bandwidth), and compares with fp32: the largest difference of the guided first-step logits
and how many greedy tokens agree with fp32's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def bandwidth() -> float:
    """Bytes per second of a large read (a sum over 1 GiB), best of 5."""
    x = torch.ones(2**28)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for root in (model.llm.layers, model.llm.norm, model.gen_head)
               for t in list(root.parameters()) + list(root.buffers()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="janus-pro-1b")
    ap.add_argument("--steps", type=int, default=12, help="decode steps timed per run (after a warm-up)")
    ap.add_argument("--agree", type=int, default=24, help="greedy steps compared with fp32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.config import JanusConfig
    from openjanus.generate import BatchRunner, cfg_combine, image_job
    from openjanus.model.janus import Janus
    from openjanus.quantize import quantize_model
    from openjanus.requests import SamplingParams

    bw = bandwidth()
    torch.manual_seed(0)
    cfg = JanusConfig.from_name(args.preset)
    base = Janus(cfg).eval()
    prompt = [1, *range(10, 40), 2]
    greedy = SamplingParams(temperature=0.0)

    def step_ms(model, images: int) -> float:
        runner = BatchRunner(model, max_rows=2 * images)
        job = image_job(prompt, 0, images, 5.0, greedy, None, args.steps + 3)
        runner.add(job)
        runner.step(), runner.step()  # warm-up
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            runner.step()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    def first_logits_and_tokens(model):
        runner = BatchRunner(model, max_rows=2)
        job = image_job(prompt, 0, 1, 5.0, greedy, None, args.agree)
        runner.add(job)
        logits = cfg_combine(model.image_logits(runner.hidden[:2]), 5.0).float()
        while runner.jobs:
            runner.step()
        return logits, job.tokens[0]

    rows = []
    ref_logits = ref_tokens = None
    print(f"{args.preset}: {torch.get_num_threads()} threads, read bandwidth {bw / 1e9:.1f} GB/s")
    print(f"{'format':<8} {'weights GB':>10} {'floor ms':>9} {'1 image ms':>11} {'x floor':>8} {'4 images ms':>12} "
          f"{'4/1':>5} {'max dlogit':>10} {'greedy agree':>13}")
    for name in ("float32", "bfloat16", "int8"):
        with torch.inference_mode():  # one model converted in place: fp32 -> bf16 -> int8 (memory)
            model = base
            if name == "bfloat16":
                model = model.to(torch.bfloat16)
            if name == "int8":
                quantize_model(model, "int8")
            floor = weight_bytes(model) / bw * 1000
            one, four = step_ms(model, 1), step_ms(model, 4)
            logits, tokens = first_logits_and_tokens(model)
        if ref_logits is None:
            ref_logits, ref_tokens = logits, tokens
        diff = (logits - ref_logits).abs().max().item()
        agree = int((tokens == ref_tokens).cumprod(0).sum())
        rows.append({"format": name, "weights_gb": round(weight_bytes(model) / 1e9, 2), "floor_ms": round(floor, 1),
                     "step_1_image_ms": round(one, 1), "x_floor": round(one / floor, 2), "step_4_images_ms": round(four, 1),
                     "four_over_one": round(four / one, 2), "max_logit_diff": round(diff, 4),
                     "greedy_tokens_agreeing": agree, "of": args.agree})
        r = rows[-1]
        print(f"{name:<8} {r['weights_gb']:>10} {r['floor_ms']:>9} {r['step_1_image_ms']:>11} {r['x_floor']:>8} "
              f"{r['step_4_images_ms']:>12} {r['four_over_one']:>5} {r['max_logit_diff']:>10} {agree:>8}/{args.agree}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "bandwidth_gb_s": round(bw / 1e9, 1), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
