"""openjanus on the official code's own reference work, at fp32 on the CPU, beside its figures.

    python bench/bench_official_work.py                 # 2 threads, as the official figures were taken
    python bench/bench_official_work.py --repeats 5 --json out.json

The work: a checkpoint in the official layout with a 2-layer grouped-query LLM (hidden 256,
4 heads, 2 KV heads, intermediate 688, vocabulary 849) and the full SigLIP-L and VQ-16; load
it, run SigLIP on one image, sample 576 image tokens with classifier-free guidance for 2 images
(4 rows), decode 1 and 2 images with the VQ, encode one 384x384 image. The official code cannot
run here (it needs timm), so its figures are the ones it measured on this kind of CPU with 2
threads at fp32 (ranges over its runs, in `OFFICIAL`); ours are taken at fp32 (the exact format)
and in bf16 (the default on CPUs with bf16 instructions), with the allocator setting the
openjanus commands use (`openjanus.allocator`; `--no-keep-freed-memory` leaves it out). Compare
the ratio, not the last digit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from openjanus.allocator import keep_freed_memory
from openjanus.checkpoints import save_model
from openjanus.inference.engine import generate_image_tokens
from openjanus.inference.pipeline import JanusPipeline
from openjanus.processing import save_tokenizer_dir

# The official code's seconds on its reference work (2 threads, fp32), low and high of its runs.
OFFICIAL = {
    "load": (0.2, 0.2),
    "SigLIP forward, 1 image": (2.0, 2.25),
    "576-step CFG loop, 2 images": (2.0, 2.9),
    "VQ decode, 1 image": (2.5, 2.9),
    "VQ decode, 2 images": (6.5, 8.2),
    "VQ encode, 1 image": (1.4, 2.1),
}

LLM = dict(n_layers=2, dim=256, n_heads=4, n_kv_heads=2, ffn_dim=688, vocab_size=849)


def seconds(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(folder: str, dtype: str, repeats: int) -> dict[str, float]:
    """Seconds of each piece of the work with the weights in `dtype`."""
    load = seconds(lambda: JanusPipeline.load(folder, dtype=dtype), repeats)
    pipe = JanusPipeline.load(folder, dtype=dtype)
    model, cfg, dt = pipe.model, pipe.model.cfg, pipe.dtype
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(1, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1).to(dt)
    image = (torch.rand(1, 3, cfg.vq.image_size, cfg.vq.image_size, generator=g) * 2 - 1).to(dt)
    codes = torch.randint(0, cfg.vq.codebook_size, (2, cfg.num_gen_tokens), generator=g)
    prompt = pipe.processor.tokenizer.encode(pipe.processor.t2i_prompt("a red circle above a blue square"))
    pad = pipe.processor.tokenizer.pad_id
    work: dict[str, Callable[[], object]] = {
        "SigLIP forward, 1 image": lambda: model.und_encoder(pixels),
        "576-step CFG loop, 2 images": lambda: generate_image_tokens(
            model, prompt, pad, n=2, generator=torch.Generator().manual_seed(0)),
        "VQ decode, 1 image": lambda: model.gen_tokenizer.decode_codes(codes[:1]),
        "VQ decode, 2 images": lambda: model.gen_tokenizer.decode_codes(codes),
        "VQ encode, 1 image": lambda: model.gen_tokenizer.encode(image),
    }
    rows = {"load": statistics.median(load)}
    for name, fn in work.items():
        rows[name] = statistics.median(seconds(fn, repeats))
        print(f"  {dtype} {name}: {rows[name]:.2f} s", file=sys.stderr)
    return rows


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                    help="formats to run (float32 is the one the official figures were taken in)")
    ap.add_argument("--no-keep-freed-memory", action="store_true",
                    help="leave glibc's allocator as it is (the openjanus commands keep freed memory: "
                         "openjanus.allocator)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_keep_freed_memory:
        keep_freed_memory()
    preset = JanusPipeline.from_preset("janus-pro-1b", **{f"llm.{k}": v for k, v in LLM.items()})
    with tempfile.TemporaryDirectory() as tmp:
        save_model(preset.model, tmp, layout="official")
        save_tokenizer_dir(preset.processor.tokenizer.tokenizer, tmp)
        del preset
        figures = {dtype: measure(tmp, dtype, args.repeats) for dtype in args.dtypes}
    print(f"\nthe official code's reference work, {torch.get_num_threads()} threads, median of {args.repeats}; "
          "speed-up = official seconds (its best-worst) / ours")
    print(f"{'work':<30}{'official s':>12}" + "".join(f"{d + ' s':>12}{'speed-up':>13}" for d in args.dtypes))
    report = []
    for name, (lo, hi) in OFFICIAL.items():
        line = f"{name:<30}{f'{lo}-{hi}':>12}"
        row = {"work": name, "official_seconds": [lo, hi]}
        for dtype in args.dtypes:
            sec = figures[dtype][name]
            line += f"{sec:>12.2f}{f'{lo / sec:.2f}-{hi / sec:.2f}x':>13}"
            row[dtype] = {"seconds": sec, "speedup": [lo / sec, hi / sec]}
        print(line)
        report.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": report}, indent=2))


if __name__ == "__main__":
    main()
