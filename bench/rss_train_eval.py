"""Memory of a training run that evaluates every few steps: resident memory and live engine
threads after each evaluation, so a leak (a pipeline, its engine thread and KV cache kept per
evaluation) shows as a rising line.

    python bench/rss_train_eval.py --steps 40 --every 2          # the hook as it is
    python bench/rss_train_eval.py --steps 40 --every 2 --leak   # pipelines never closed (the old hook)

Runs `openjanus train` on the tiny preset with its stand-in tokenizer and a little synthetic
data (in a temporary folder: `tests/train_data.py`, the training tests' tiny run), evaluating
geneval_shapes (one prompt) through the real hook.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import threading
from pathlib import Path

# The tests' tiny training run on disk (data and config writer), shared with the training tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_data import write_train_config, write_train_data  # noqa: E402


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=2, help="evaluate every N steps")
    ap.add_argument("--leak", action="store_true", help="never close the evaluation pipelines (the old hook)")
    args = ap.parse_args()

    import openjanus.eval.hook as hook_module
    from openjanus.cli import main as cli
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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_train_config(
            root / "train.json", log_every=10**6, output_dir=str(root / "run"), data=write_train_data(root / "data"),
            model={"preset": "tiny"}, stage={"preset": "stage2", "steps": args.steps, "warmup_steps": 1,
                                             "global_batch": 2},
            checkpoint_every=10**6,
            eval={"every": args.every, "benchmarks": ["geneval_shapes"],
                  "options": {"geneval_shapes": {"per_category": 1, "n_per_prompt": 1, "tags": ["single_object"]}}})
        code = cli(["train", config])
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
