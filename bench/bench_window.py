"""What a speculative Jacobi window costs against a plain decode step, and what `jacobi="auto"`
picks from it, on a model's shapes with random weights (the cost does not depend on them).

    python bench/bench_window.py --preset janus-pro-1b --dtype bfloat16     # memory-bound on a CPU
    python bench/bench_window.py --preset tiny

Builds only what decoding reads (LLM, image head and embeddings; no vision parts), directly in
--dtype (no fp32 copy on the way), one model in this process. Prints, for 1 and --images
images: the forward pass over 2 rows per image of w + 1 positions against one position, and a
whole runner step with a window of w drafts against a plain step (the quantities the auto
window weighs, `openjanus.inference.autowindow`), then the window auto picks at a few
acceptance rates. With --branches K ...: the forward pass of windows 8 and 16 fed on K branches
per image (2K rows each), against one position.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

WINDOWS = (0, 1, 2, 4, 8, 16)
PARTS = ("llm.embed", "llm.layers", "llm.norm", "gen_head", "gen_aligner", "gen_embed")


@torch.no_grad()
def build(preset: str, dtype: torch.dtype, device: str = "cpu"):
    from openjanus.config import JanusConfig
    from openjanus.model.janus import Janus

    cfg = JanusConfig.from_name(preset)
    with torch.device("meta"):
        model = Janus(cfg).to(dtype)
    g = torch.Generator().manual_seed(0)
    for name in PARTS:
        mod = model.get_submodule(name).to_empty(device=device)
        for p in mod.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(device, dtype) * 0.02)
    from openjanus.model.llm import RMSNorm

    for m in model.modules():
        if isinstance(m, RMSNorm) and not m.weight.is_meta:
            m.weight.fill_(1.0)
    return model.eval()


@torch.inference_mode()
def pass_seconds(model, rows: int, positions: int, context: int, repeats: int) -> float:
    from openjanus.model.llm import KVCache, cache_mask

    cfg, ref = model.llm.cfg, model.llm.embed.weight
    device = ref.device
    cache = KVCache.allocate(cfg.n_layers, rows, context + positions, cfg.n_kv_heads, cfg.head_dim, device=device,
                             dtype=ref.dtype)
    x = torch.randn(rows, positions, cfg.dim).to(device, ref.dtype)
    slots = torch.arange(context, context + positions, device=device)
    mask = cache_mask(slots, torch.ones(rows, context + positions, dtype=torch.bool, device=device))
    model.llm(x, slots.expand(rows, -1), mask=mask, cache=cache, slots=slots)  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        model.image_logits(model.llm(x, slots.expand(rows, -1), mask=mask, cache=cache, slots=slots))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="janus-pro-1b")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (timings synchronise the device)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--context", type=int, default=300, help="cached positions per row (prompt + image so far)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--branches", type=int, nargs="*", default=[],
                    help="also the forward pass of a window fed on this many branches per image "
                         "(--jacobi-branches: 2 rows per branch) at windows 8 and 16")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from openjanus.inference.autowindow import WindowChooser

    model = build(args.preset, getattr(torch, args.dtype), args.device)
    report: dict = {"preset": args.preset, "dtype": args.dtype, "threads": torch.get_num_threads(), "rows": []}
    print(f"{args.preset} ({args.dtype}, random weights), {torch.get_num_threads()} threads, {args.context} cached "
          f"positions per row; best of {args.repeats}")
    print(f"{'images':>6}{'window':>7}{'pass ms':>9}{'x 1 pos':>8}{'step ms':>9}{'x plain':>8}")
    choosers = {}
    for images in sorted({1, args.images}):
        chooser = WindowChooser(model, lambda greedy: (0, 0))
        chooser.context = min(32, model.cfg.llm.max_seq_len - model.cfg.num_gen_tokens)
        steps = chooser.costs(images, greedy=False)
        choosers[images] = chooser
        one = None
        for w in WINDOWS:
            secs = pass_seconds(model, 2 * images, w + 1, args.context, args.repeats)
            one = one or secs
            row = {"images": images, "window": w, "pass_ms": 1000 * secs, "pass_vs_one": secs / one,
                   "step_ms": 1000 * steps[w], "step_vs_plain": steps[w] / steps[0]}
            report["rows"].append(row)
            print(f"{images:>6}{w:>7}{1000 * secs:>9.1f}{secs / one:>8.2f}{1000 * steps[w]:>9.1f}"
                  f"{steps[w] / steps[0]:>8.2f}", flush=True)
        for k in args.branches:  # K pairs of rows per image: the pass of a branched window
            for w in (8, 16):
                secs = pass_seconds(model, 2 * images * k, w + 1, args.context, args.repeats)
                report["rows"].append({"images": images, "window": w, "branches": k, "pass_ms": 1000 * secs,
                                       "pass_vs_one": secs / one})
                print(f"{images:>6}{w:>7}{1000 * secs:>9.1f}{secs / one:>8.2f}   ({k} branches)", flush=True)
    print("\nwindow auto picks (sampled) at a draft acceptance rate of:")
    for rate in (0.3, 0.5, 0.7, 0.9):
        picks = {}
        for images, chooser in choosers.items():
            chooser.draft_stats = lambda greedy, r=rate: (round(1000 * r), 1000)
            chooser.prior = (0, 0)
            picks[images] = chooser.choose(images, greedy=False)
        report.setdefault("auto", {})[rate] = picks
        print(f"  {rate:.1f}: " + ", ".join(f"{n} image{'s' if n > 1 else ''} -> {w}" for n, w in picks.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
