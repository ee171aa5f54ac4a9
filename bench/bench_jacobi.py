"""Speculative Jacobi decoding against plain decoding: forward passes and wall-clock per request.

    python bench/bench_jacobi.py                                  # shipped demo model, CPU
    python bench/bench_jacobi.py --model janus-pro-1b --dtype bfloat16 --tokens 48 --images 1 --windows 8

For each number of images per request in --images, and greedy and sampled (temperature 1, cfg
5: the default settings), it runs 3 prompts through the runner as the engine does (plain: one
job of n images sharing one random stream; Jacobi: one job per image, every window of the
request verified in the same forward passes) and prints the request's forward passes, the
tokens each image gains per pass, seconds per request and per image, and the ratio to plain:

- plain decoding;
- SJD (arXiv 2410.01699: drafts redrawn independently every pass) with each window;
- MC-SJD (arXiv 2510.24211: drafts redrawn coupled to the previous ones) with each window;
- Gumbel Jacobi (fixed Gumbel noise per image position, Song et al. 2021: the image depends on
  the seed only; `openjanus.inference.sampling`) with each window;
- with `--branches K ...`: each sampler with its window verified on K rows at once, each with
  another candidate for its first draft (`ImageRequest.jacobi_branches`; K - 1 extra rows of
  the window a pass, so K times the positions);
- `auto`: the window the engine would choose (`openjanus.inference.autowindow`), measured on
  this machine, with the acceptance seen in the runs before it; with the Gumbel sampler, as the
  engine runs it (no window: a plain job sampling by the same noise, so the same images).

With random weights (presets) the model's distributions are nearly flat and barely depend on the
prefix, so acceptance is not representative: use the demo model or real weights for it; a
preset still shows what a window costs against one token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

NAMES = {"sjd": "SJD", "mcsjd": "MC-SJD", "gumbel": "Gumbel"}
AUTO_SAMPLER = "gumbel"  # what `jacobi="auto"` runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="folder or preset (default: the shipped demo model)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (timings synchronise the device)")
    ap.add_argument("--windows", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--images", type=int, nargs="+", default=[1, 4, 16], help="images per request")
    ap.add_argument("--tokens", type=int, default=None, help="image tokens per image (default: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["greedy", "sampled"], choices=["greedy", "sampled"])
    ap.add_argument("--samplers", nargs="+", default=["sjd", "mcsjd", "gumbel"], choices=list(NAMES))
    ap.add_argument("--branches", type=int, nargs="*", default=[],
                    help="also Gumbel Jacobi verifying each window on this many rows (first-draft candidates)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.inference.autowindow import WindowChooser
    from openjanus.inference.engine import run_jobs
    from openjanus.inference.pipeline import JanusPipeline
    from openjanus.inference.runner import BatchRunner, image_job
    from openjanus.requests import SamplingParams

    pipe = JanusPipeline.load(args.model, device=args.device, dtype=args.dtype)

    def sync() -> None:  # a GPU's work is queued: time it done
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)

    def generator(seed: int) -> torch.Generator:  # on the model's device, as the engine's
        return torch.Generator(device=pipe.device).manual_seed(seed)

    tok = pipe.processor.tokenizer
    n_tokens = args.tokens or pipe.model.cfg.num_gen_tokens
    prompts = ["a red circle", "two blue squares left of a green star", "three yellow triangles"]
    ids = [tok.encode(pipe.processor.t2i_prompt(p)) for p in prompts]

    def run(runner: BatchRunner, images: int, window: int, sampler: str, sampling: SamplingParams,
            seed: int, branches: int = 1) -> tuple[float, float]:
        """(seconds per request, forward passes per request), over the prompts."""
        passes = 0
        t = time.perf_counter()
        for k, prompt in enumerate(ids):
            streams = [generator(1000 * seed + 100 * k + i) for i in range(images)]
            if window:
                jobs = [image_job(prompt, tok.pad_id, 1, 5.0, sampling, g, n_tokens, jacobi=window,
                                  jacobi_sampler=sampler, branches=branches) for g in streams]
            elif sampler == "gumbel" and sampling.temperature > 0:  # auto's plain decoding: the same images
                jobs = [image_job(prompt, tok.pad_id, images, 5.0, sampling, streams, n_tokens, gumbel=True)]
            else:
                jobs = [image_job(prompt, tok.pad_id, images, 5.0, sampling,
                                  generator(1000 * seed + 100 * k), n_tokens)]
            before = runner.passes
            run_jobs(runner, jobs)
            passes += runner.passes - before  # every job of the request shares these passes
        sync()
        return (time.perf_counter() - t) / len(ids), passes / len(ids)

    rows = []
    print(f"model {pipe.name} ({args.dtype}), {len(prompts)} prompts x {n_tokens} tokens per image, "
          f"{torch.get_num_threads()} threads; {args.repeats} repeats (seeds): passes their mean, seconds the "
          "median, the contenders interleaved within each; 'spread' is the lowest and highest of the repeats' "
          "ratios to plain")
    print(f"{'mode':<8}{'images':>7} {'method':<11}{'window':>7}{'passes':>8}{'tokens/pass':>12}"
          f"{'s/request':>10}{'s/image':>9}{'vs plain':>9}{'spread':>13}")
    for mode in args.modes:
        sampling = SamplingParams(0.0) if mode == "greedy" else SamplingParams(1.0)
        for images in args.images:
            runner = BatchRunner(pipe.model, rows=2 * images * max([1, *args.branches]))
            chooser = WindowChooser(pipe.model, lambda greedy, r=runner: tuple(r.draft_stats[greedy]))
            contenders = [("plain", 0, "", 1)]
            for w in args.windows:
                contenders += [(NAMES[s], w, s, 1) for s in args.samplers]
                contenders += [(f"{NAMES[s]} x{k}", w, s, k) for s in args.samplers for k in args.branches if k > 1]
            contenders.append(("auto", None, AUTO_SAMPLER, 1))
            run(runner, images, 0, "", sampling, 99)  # warm-up (allocates the cache)
            results: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(contenders))}
            auto_window = 0
            for seed in range(args.repeats):
                for i, (_, window, sampler, branches) in enumerate(contenders):
                    if window is None:  # from the acceptance the runs before it fed the counters with
                        window = auto_window = chooser.choose(images, greedy=mode == "greedy")
                    results[i].append(run(runner, images, window, sampler, sampling, seed, branches))
            plain = [secs for secs, _ in results[0]]
            for i, (method, window, _, _) in enumerate(contenders):
                window = auto_window if window is None else window
                secs = statistics.median(r[0] for r in results[i])
                passes = statistics.mean(r[1] for r in results[i])  # exact counts: every image weighs the same
                ratios = [p / r[0] for p, r in zip(plain, results[i])]
                ratio = statistics.median(ratios)
                row = {"mode": mode, "images": images, "method": method, "window": window,
                       "passes": round(passes, 1), "tokens_per_pass": round(n_tokens / passes, 2),
                       "seconds_per_request": round(secs, 3), "seconds_per_image": round(secs / images, 4),
                       "vs_plain": round(ratio, 2), "vs_plain_spread": [round(min(ratios), 2), round(max(ratios), 2)]}
                rows.append(row)
                print(f"{mode:<8}{images:>7} {method:<11}{window:>7}{passes:>8.1f}{n_tokens / passes:>12.2f}"
                      f"{secs:>10.3f}{secs / images:>9.4f}{ratio:>8.2f}x  {min(ratios):.2f}-{max(ratios):.2f}x",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": pipe.name, "dtype": args.dtype, "tokens": n_tokens, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
