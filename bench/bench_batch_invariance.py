"""Batch invariance (issue 23): where a row's bits depend on its neighbours, and what the cure costs.

    python bench/bench_batch_invariance.py                  # demo model, CPU
    python bench/bench_batch_invariance.py --model DIR --repeats 5

1. Probe: for each linear layer shape of the model, in fp32, bf16 and int8, whether rows 0-1
   of a product come out bit-identical when the call holds more rows (M = 2 -> 3..64). Where
   they do not, a request's tokens can change with what shares its batch.
2. Prefill: K requests with prompts of the same length prefilled in one pass (what the engine
   did before) against one pass per request (what it does now): time per request, ratio.
3. int8 decode: the kernel chosen by rows in the call (int8 kernel up to 16 rows, else a bf16
   GEMM: before) against the int8 kernel in 16-row calls for every one-token row (now), over
   all int8 layers of the model, at 2-64 rows: time, ratio.
Timings are medians of --repeats runs after a warm-up, side by side in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from openjanus.inference.pipeline import JanusPipeline
from openjanus.inference.runner import BatchRunner, image_job
from openjanus.quantize import PACK_ROWS, Int8Linear
from openjanus.requests import SamplingParams


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def probe(model, dtype: torch.dtype, int8: bool) -> list[str]:
    """Linear layers whose first two rows change when the call holds more rows."""
    out, seen = [], set()
    g = torch.Generator().manual_seed(0)
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, Int8Linear)):
            continue
        key = (m.in_features, m.out_features)
        if key in seen:
            continue
        seen.add(key)
        x = torch.randn(64, m.in_features, generator=g).to(dtype)
        with torch.inference_mode():
            ref = m(x[:2])
            bad = [M for M in (3, 4, 8, 16, 17, 32, 64) if not torch.equal(m(x[:M])[:2], ref)]
        if bad:
            out.append(f"{name} {key}: rows 0-1 differ at M = {bad}")
    return out


def prefill_times(pipe: JanusPipeline, k: int, repeats: int) -> tuple[float, float]:
    tok = pipe.processor.tokenizer
    ids = tok.encode(pipe.processor.t2i_prompt("a red circle above a blue square"))
    runner = BatchRunner(pipe.model, rows=2 * k)
    jobs = [image_job(ids, tok.pad_id, 1, 5.0, SamplingParams(1.0), torch.Generator().manual_seed(i),
                      pipe.model.cfg.num_gen_tokens) for i in range(k)]
    with torch.inference_mode():
        h = pipe.model.embed_text(torch.tensor([j.prompt_ids for j in jobs]).flatten(0, 1))  # [2k, T, D]
    runner._ensure_cache(2 * k, jobs[0].length)
    llm = pipe.model.llm
    T = h.shape[1]
    slots = torch.arange(T)

    @torch.inference_mode()
    def one_pass(rows: slice) -> None:
        from openjanus.model.llm import cache_mask

        R = rows.stop - rows.start
        mask = cache_mask(slots, torch.ones(R, T, dtype=torch.bool))
        llm(h[rows], slots.expand(R, T), mask=mask, cache=runner.cache.rows(rows.start, rows.stop), slots=slots,
            kv_len=T)

    together = median_ms(lambda: one_pass(slice(0, 2 * k)), repeats)
    apart = median_ms(lambda: [one_pass(slice(2 * i, 2 * i + 2)) for i in range(k)], repeats)
    return together / k, apart / k


def int8_times(model, rows: int, repeats: int) -> tuple[float, float]:
    layers = [m for m in model.modules() if isinstance(m, Int8Linear) and m.in_features % 16 == 0]
    xs = [torch.randn(rows, m.in_features).bfloat16() for m in layers]
    scales = [m.scale.to(torch.bfloat16) for m in layers]

    def before() -> None:
        for m, x, s in zip(layers, xs, scales):
            if rows <= PACK_ROWS:
                torch._weight_int8pack_mm(x, m.weight, s)
            else:
                torch.mm(x, m.weight.to(torch.bfloat16).t()) * s

    def now() -> None:
        for m, x, s in zip(layers, xs, scales):
            torch.cat([torch._weight_int8pack_mm(c.contiguous(), m.weight, s) for c in x.split(PACK_ROWS)])

    return median_ms(before, repeats), median_ms(now, repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the demo model)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dtype, quantize in (("float32", None), ("bfloat16", None), ("bfloat16", "int8")):
        pipe = JanusPipeline.load(args.model, device="cpu", dtype=dtype, quantize=quantize)
        found = probe(pipe.model, pipe.model.llm.embed.weight.dtype, quantize == "int8")
        label = f"{dtype}{' int8' if quantize else ''}"
        print(f"\n[{label}] row-dependence probe: {'none' if not found else ''}")
        for line in found:
            print("  " + line)
        if quantize is None:
            for k in (2, 4, 8):
                together, apart = prefill_times(pipe, k, args.repeats)
                print(f"[{label}] prefill of {k} same-length requests: {together:.2f} ms/request together, "
                      f"{apart:.2f} apart ({apart / together:.2f}x)")
        else:
            for rows in (2, 16, 32, 64):
                before, now = int8_times(pipe.model, rows, args.repeats)
                print(f"[{label}] int8 layers of one decode step at {rows} rows: {before:.2f} ms before, "
                      f"{now:.2f} now ({now / before:.2f}x)")
        pipe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
