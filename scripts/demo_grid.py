"""A before/after grid of held-out prompts: two models, the same prompts and seeds.

Rows are held-out prompts of the geneval-shapes benchmark (seed 0, two per composition
category); each row shows `-n` images of the first model, then `-n` of the second, each framed
green when the shapes scorer finds the prompt satisfied and red when not (so images that
please the scorer without showing the prompt stand out when you look).

    python scripts/demo_grid.py --before runs/v2 --after openjanus/assets/janus-shapes --out docs/demo-v3-grid.png
"""

from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import ImageRequest
from openjanus.shapes.scorer import score_image
from openjanus.shapes.splits import spec_heldout_reasons
from openjanus.shapes.tasks import HELDOUT_TAGS, benchmark_specs

CELL, FRAME, LABEL_W, HEAD = 64, 3, 300, 22


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--per-tag", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    specs = benchmark_specs(per_category=16, seed=0)
    chosen = []
    for tag in HELDOUT_TAGS:
        chosen += [(i, s) for i, s in enumerate(specs) if s.tag == tag and spec_heldout_reasons(s)][:args.per_tag]
    columns = []
    for model in (args.before, args.after):
        pipe = JanusPipeline.load(model, dtype=args.dtype)
        results = pipe.run([ImageRequest(s.prompt, n=args.n, seed=i) for i, s in chosen])
        columns.append([[(im, score_image(im, s).correct) for im in r.images] for (_, s), r in zip(chosen, results)])
        pipe.close()
    step = CELL + 2 * FRAME + 2
    width = LABEL_W + 2 * args.n * step + 12
    grid = Image.new("RGB", (width, HEAD + len(chosen) * step), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((LABEL_W, 4), "before", fill="black")
    draw.text((LABEL_W + args.n * step + 12, 4), "after", fill="black")
    for r, (_, spec) in enumerate(chosen):
        y = HEAD + r * step
        draw.text((4, y + CELL // 2 - 6), f"{spec.prompt[:46]}", fill="black")
        for c, col in enumerate(columns):
            for k, (im, ok) in enumerate(col[r]):
                x = LABEL_W + c * (args.n * step + 12) + k * step
                draw.rectangle([x, y, x + CELL + 2 * FRAME - 1, y + CELL + 2 * FRAME - 1],
                               fill=(40, 160, 60) if ok else (200, 40, 40))
                grid.paste(im.resize((CELL, CELL)), (x + FRAME, y + FRAME))
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(chosen)} held-out prompts x {args.n} images per model)")


if __name__ == "__main__":
    main()
