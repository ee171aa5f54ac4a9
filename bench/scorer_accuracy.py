"""How accurate is the shapes scorer? Clean renders, simulated VQ round trips, wrong images.

    python bench/scorer_accuracy.py                          # 600 specs at 64 px
    python bench/scorer_accuracy.py --sizes 64 128 384 -n 300
    python bench/scorer_accuracy.py --model CHECKPOINT       # adds a real VQ round trip

Same measurement as `openjanus eval scorer-accuracy` (see openjanus/shapes/scorer_accuracy.py),
over several image sizes in one go; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    from openjanus.shapes.scorer_accuracy import format_table, measure, vq_roundtrip

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=600, help="specs per image size")
    p.add_argument("--sizes", type=int, nargs="+", default=[64])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="checkpoint or preset whose VQ round trip is also measured")
    p.add_argument("--device", default="auto")
    p.add_argument("--background", choices=["plain", "noise", "gradient", "paper"], default=None,
                   help="every scene on this background kind (default: the world's mix)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)

    rt = None
    if args.model:
        from openjanus.inference.pipeline import JanusPipeline

        rt = vq_roundtrip(JanusPipeline.load(args.model, device=args.device))
    results = {}
    for size in args.sizes:
        r = measure(n=args.n, image_size=size, strengths=args.strengths, seed=args.seed, roundtrip=rt,
                    background=args.background, log=lambda m: print(m, file=sys.stderr))
        results[size] = r
        print(format_table(r))
        print(f"({r['seconds']} s)\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
