"""Speculative Jacobi decoding against plain decoding: forward passes per image and wall-clock.

    python bench/bench_jacobi.py                                  # shipped demo model, CPU
    python bench/bench_jacobi.py --model janus-pro-1b --dtype bfloat16 --tokens 48 --images 1

For each window N in --windows (0 = plain decoding) it samples --images images of each prompt
(one job per image, as the engine runs Jacobi requests; plain decoding batches the images of a
prompt) and prints forward passes per image, tokens per forward pass and seconds, greedy and
sampled (temperature 1, cfg 5). With random weights (presets) the model's distributions are
nearly flat, so drafts are rarely accepted: use real or trained weights for acceptance figures;
the preset still shows what one window costs against one token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="folder or preset (default: the shipped demo model)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--windows", type=int, nargs="+", default=[0, 2, 4, 8])
    ap.add_argument("--images", type=int, default=4, help="images per prompt")
    ap.add_argument("--tokens", type=int, default=None, help="image tokens per image (default: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.inference.engine import run_jobs
    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.inference.runner import BatchRunner, image_job
    from openjanus.requests import SamplingParams

    pipe = JanusPipeline.load(args.model, device="cpu", dtype=args.dtype)
    tok = pipe.processor.tokenizer
    n_tokens = args.tokens or pipe.model.cfg.num_gen_tokens
    prompts = ["a red circle", "two blue squares left of a green star", "three yellow triangles"]
    ids = [tok.encode(pipe.processor.t2i_prompt(p)) for p in prompts]

    def run(window: int, sampling: SamplingParams, seed: int) -> tuple[float, float]:
        g = torch.Generator().manual_seed(seed)
        forwards = 0
        t = time.perf_counter()
        for prompt in ids:
            if window:
                jobs = [image_job(prompt, tok.pad_id, 1, 5.0, sampling, g, n_tokens, jacobi=window)
                        for _ in range(args.images)]
            else:
                jobs = [image_job(prompt, tok.pad_id, args.images, 5.0, sampling, g, n_tokens)]
            states = run_jobs(BatchRunner(pipe.model, rows=2 * args.images), jobs)
            # Plain decoding feeds all images of the prompt in each pass: one pass serves each image.
            forwards += max(s.forward_passes for s in states) if not window else \
                sum(s.forward_passes for s in states) / args.images
        return time.perf_counter() - t, forwards / len(ids)

    rows = []
    print(f"model {pipe.name} ({args.dtype}), {len(prompts)} prompts x {args.images} images x {n_tokens} tokens, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'mode':<8} {'window':>6} {'passes/image':>13} {'tokens/pass':>12} {'seconds':>8} {'vs plain':>9}")
    for mode, sampling in (("greedy", SamplingParams(0.0)), ("sampled", SamplingParams(1.0))):
        run(args.windows[0], sampling, 0)  # warm-up
        base = None
        for window in args.windows:
            runs = [run(window, sampling, seed) for seed in range(args.repeats)]
            secs = statistics.median(r[0] for r in runs)
            passes = statistics.median(r[1] for r in runs)
            base = base or secs
            rows.append({"mode": mode, "window": window, "passes_per_image": round(passes, 1),
                         "tokens_per_pass": round(n_tokens / passes, 2), "seconds": round(secs, 3),
                         "speedup": round(base / secs, 2)})
            print(f"{mode:<8} {window:>6} {passes:>13.1f} {n_tokens / passes:>12.2f} {secs:>8.2f} {base / secs:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": pipe.name, "dtype": args.dtype, "tokens": n_tokens, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
