"""LoRA against full fine-tuning on one preset: trainable parameters, peak memory, step time.

Each mode runs in its own fresh process (so peak resident memory is that mode's alone): the
preset's random weights, `--steps` AdamW steps of the text-to-image loss (negative
log-likelihood of the image tokens under the CFG-guided distribution, the one GRPO and DPO
differentiate) on `--batch` prompts of `--prompt-len` tokens with random image tokens. Full
fine-tuning trains the LLM, the image head and the generation adaptor (what the demo model's
GRPO trains); LoRA trains rank-`--rank` adapters on the LLM's seven linear layers per block.
Step times are the median of the steps after the first (warm-up), modes run alternately.

    OMP_NUM_THREADS=1 python bench/bench_lora.py --preset small --rank 16 --steps 6
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_mode(mode: str, preset: str, rank: int, steps: int, batch: int, prompt_len: int) -> dict:
    import torch

    from openjanus.config import JanusConfig
    from openjanus.model.janus import Janus
    from openjanus.posttrain.config import DEFAULT_TRAINABLE, LoraSettings
    from openjanus.posttrain.grpo import select_trainable
    from openjanus.train.lora import add_lora
    from openjanus.train.memory import LLM_TARGETS
    from openjanus.train.preference import t2i_token_logprobs

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    cfg = JanusConfig.from_name(preset)
    model = Janus(cfg)
    if mode == "lora":
        targets = rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(LLM_TARGETS)})"
        add_lora(model, LoraSettings(rank=rank, alpha=2.0 * rank, targets=targets))  # type: ignore[arg-type]
    else:
        select_trainable(model, list(DEFAULT_TRAINABLE))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    ids = [[1] + torch.randint(3, cfg.llm.vocab_size, (prompt_len - 2,), generator=g).tolist() + [2]
           for _ in range(batch)]
    tokens = torch.randint(0, cfg.vq.codebook_size, (batch, cfg.num_gen_tokens), generator=g)
    times = []
    model.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = -t2i_token_logprobs(model, ids, tokens, 0, guidance=5.0).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "trainable": sum(p.numel() for p in params),
            "total": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": round(peak / 1024, 1), "rss_growth_mib": round((peak - base_rss) / 1024, 1),
            "step_s": round(statistics.median(times[1:]), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.preset, args.rank, args.steps, args.batch, args.prompt_len)))
        return
    results: dict[str, list[dict]] = {"full": [], "lora": []}
    for _ in range(args.repeats):
        for mode in ("full", "lora"):
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--preset", args.preset,
                                  "--rank", str(args.rank), "--steps", str(args.steps), "--batch", str(args.batch),
                                  "--prompt-len", str(args.prompt_len)], capture_output=True, text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"preset {args.preset}, batch {args.batch} prompts x ({args.prompt_len} + image tokens), CFG rows, "
          f"rank {args.rank}; median over {args.repeats} runs")
    print(f"{'mode':<6} {'trainable':>12} {'of total':>10} {'peak RSS MiB':>13} {'step s':>8}")
    for mode, rs in results.items():
        r = rs[0]
        print(f"{mode:<6} {r['trainable']:>12,} {r['trainable'] / r['total']:>10.2%} "
              f"{statistics.median(x['peak_rss_mib'] for x in rs):>13.1f} "
              f"{statistics.median(x['step_s'] for x in rs):>8.3f}")


if __name__ == "__main__":
    main()
