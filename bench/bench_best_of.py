"""Best-of-N with self-verification against plain sampling, at equal images returned.

For every prompt of the geneval-shapes benchmark set (seed 0, `--per-category` per tag, half of
each composition tag held out) it samples N x k candidates (cfg 5, temperature 1, seed = prompt
index, as `openjanus eval geneval-shapes` does), scores every candidate with the shapes scorer,
and reports per split:

* plain: the accuracy of one plain sample (the mean over all candidates: each is a plain sample,
  and the mean over N x k of them is the lowest-variance estimate of it);
* best-of-N: the accuracy of the k candidates the model rates highest itself
  (P("Yes") / (P("Yes") + P("No")) for "Does this image show: <prompt>?");
* oracle: the k candidates the shapes scorer prefers (the ceiling of any verifier).

    python bench/bench_best_of.py --per-category 16 -N 4 -k 1 [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from openjanus.inference.pipeline import JanusPipeline
from openjanus.posttrain.best_of import best_of
from openjanus.posttrain.rewards import SelfReward, spec_reward
from openjanus.requests import ImageRequest
from openjanus.shapes.scorer import score_image
from openjanus.shapes.splits import spec_heldout_reasons
from openjanus.shapes.tasks import benchmark_specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--per-category", type=int, default=16)
    ap.add_argument("-N", type=int, default=4, help="candidates per image returned")
    ap.add_argument("-k", type=int, default=1, help="images returned per prompt")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    pipe = JanusPipeline.load(args.model, dtype=args.dtype)
    specs = benchmark_specs(per_category=args.per_category, seed=0)
    verifier = SelfReward(pipe.model, pipe.processor)
    t0 = time.perf_counter()
    requests = [ImageRequest(s.prompt, n=args.k, seed=i) for i, s in enumerate(specs)]
    # best_of samples N x k candidates per request; the plain and oracle figures use the same ones.
    wide = pipe.run([ImageRequest(s.prompt, n=args.k * args.N, seed=i) for i, s in enumerate(specs)])
    seconds = time.perf_counter() - t0
    rows = {"train": {"plain": [], "best": [], "oracle": []}, "heldout": {"plain": [], "best": [], "oracle": []}}
    per_tag: dict[str, dict[str, list[float]]] = {}
    for spec, res in zip(specs, wide):
        correct = [float(score_image(im, spec).correct) for im in res.images]
        shaped = [spec_reward(im, spec) for im in res.images]
        rating = verifier([spec.prompt] * len(res.images), res.images)
        best = sorted(range(len(rating)), key=lambda i: -rating[i])[:args.k]
        oracle = sorted(range(len(shaped)), key=lambda i: -shaped[i])[:args.k]
        split = "heldout" if spec_heldout_reasons(spec) else "train"
        r = rows[split]
        r["plain"].append(float(np.mean(correct)))
        r["best"].append(float(np.mean([correct[i] for i in best])))
        r["oracle"].append(float(np.mean([correct[i] for i in oracle])))
        t = per_tag.setdefault(f"{split}/{spec.tag}", {"plain": [], "best": []})
        t["plain"].append(float(np.mean(correct)))
        t["best"].append(float(np.mean([correct[i] for i in best])))
    # The library function gives the same selection (it is what `--best-of` runs).
    check, _ = best_of(pipe, requests[:2], args.N, verifier)
    assert all(c.tokens.shape[0] == args.k for c in check)
    report = {"model": pipe.weights, "N": args.N, "k": args.k, "prompts": len(specs),
              "seconds_sampling": round(seconds, 1)}
    for split, r in rows.items():
        report[split] = {k: round(float(np.mean(v)), 3) for k, v in r.items()}
        report[split]["prompts"] = len(r["plain"])
    report["by_tag"] = {k: {m: round(float(np.mean(v)), 3) for m, v in d.items()} for k, d in sorted(per_tag.items())}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
