"""Memory of a training run that evaluates every few steps: resident memory and live engine
threads after each evaluation, so a leak (a pipeline, its engine thread and KV cache kept per
evaluation) shows as a rising line.

    python bench/rss_train_eval.py --steps 40 --every 2          # the hook as it is
    python bench/rss_train_eval.py --steps 40 --every 2 --leak   # pipelines never closed (the old hook)

Runs `openjanus train` on the tiny preset with its stand-in tokenizer and a little synthetic
data (in a temporary folder), evaluating geneval_shapes (one prompt) through the real hook.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_data(root: Path, codebook: int, n_tokens: int) -> dict:
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"imgs/{i}.png")
    rng = random.Random(0)
    und = [{"messages": [{"role": "user", "content": "what is in this picture?"},
                         {"role": "assistant", "content": f"two green stars {i}."}], "images": [f"imgs/{i % 3}.png"]}
           for i in range(6)]
    text = [{"text": "the cat sat on the mat. " * (1 + i % 2)} for i in range(6)]
    gen = [{"caption": f"a red circle above a blue square {i}.",
            "codes": [rng.randrange(codebook) for _ in range(n_tokens)]} for i in range(6)]
    for name, records in (("und", und), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"und": str(root / "und.jsonl"), "text": str(root / "text.jsonl"), "gen": str(root / "gen.jsonl"),
            "num_workers": 0, "pin_memory": False, "shuffle_block": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=2, help="evaluate every N steps")
    ap.add_argument("--leak", action="store_true", help="never close the evaluation pipelines (the old hook)")
    args = ap.parse_args()

    import openjanus.eval.hook as hook_module
    from openjanus.cli import main as cli
    from openjanus.config import JanusConfig
    from openjanus.inference.pipeline import JanusPipeline

    if args.leak:
        JanusPipeline.close = lambda self: None  # what the hook did before: nothing closed its pipeline

    samples: list[tuple[int, float, int]] = []
    make_hook = hook_module.benchmark_eval_hook

    def measured_hook(*a, **k):
        inner = make_hook(*a, **k)

        def hook(model, step):
            results = inner(model, step)
            gc.collect()
            threads = sum(t.name.startswith("openjanus-engine") for t in threading.enumerate())
            samples.append((step, rss_mib(), threads))
            return results

        return hook

    hook_module.benchmark_eval_hook = measured_hook
    cfg = JanusConfig.from_name("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = root / "train.json"
        config.write_text(json.dumps({
            "log_every": 10**6, "progress_bar": False, "tensorboard": False, "seq_len": 192, "micro_batch_rows": 1,
            "output_dir": str(root / "run"), "data": write_data(root / "data", cfg.vq.codebook_size,
                                                                cfg.num_gen_tokens),
            "model": {"preset": "tiny"},
            "stage": {"preset": "stage2", "steps": args.steps, "warmup_steps": 1, "global_batch": 2},
            "checkpoint_every": 10**6,
            "eval": {"every": args.every, "benchmarks": ["geneval_shapes"],
                     "options": {"geneval_shapes": {"per_category": 1, "n_per_prompt": 1, "tags": ["single_object"]}}},
        }))
        code = cli(["train", str(config)])
    if code != 0 or not samples:
        print(f"training failed (exit {code})", file=sys.stderr)
        return 1
    print(f"{'mode':<8} {'step':>5} {'RSS MiB':>9} {'engine threads':>15}")
    for step, rss, threads in samples:
        print(f"{'leak' if args.leak else 'close':<8} {step:>5} {rss:>9.1f} {threads:>15}")
    half = len(samples) // 2
    first, last = samples[half][1], samples[-1][1]  # from the second half: past warm-up allocations
    print(f"{len(samples)} evaluations; RSS from evaluation {half + 1} to {len(samples)}: "
          f"{first:.1f} -> {last:.1f} MiB ({last - first:+.1f}); engine threads after the last: {samples[-1][2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
