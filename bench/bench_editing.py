"""Image-conditioned generation measured on the shapes world with the demo model: completion,
edits, mask shapes and images wider than the model's native size.

    python bench/bench_editing.py                       # all tasks, demo model, CPU (a few minutes)
    python bench/bench_editing.py --tasks wide --overlaps 0.25 0.5 0.75
    python bench/bench_editing.py --grids docs/         # also write the README's image grids

Tasks (each prints a table; `--json` writes every figure):

* completion: a rendered scene of prompt P with a region of tokens regenerated from the rest,
  for several mask shapes (lower half, upper half, right half, left half, centre box, a
  checkerboard of tokens); the scorer's accuracy on P against generating P from scratch with the
  same seeds. Raster order sees only what comes before a token: the lower and right halves are
  conditioned on what is kept, the upper and left halves only through later rows.
* edit: a two-object scene; the tokens under one object regenerated (its box, padded to whole
  tokens) with a prompt that names another colour or shape for it. Counted: the new object is
  found where the old one was, and the untouched one is still found in its place.
* wide: scenes at 2x the native width (a sliding window of the native grid) against the native
  size, for each window overlap; forward passes and seconds per image.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MASKS = ("lower half", "upper half", "right half", "left half", "centre box", "checkerboard")
CATEGORIES = ("single_object", "colors", "two_object", "position")


def token_mask(shape: str, grid: int) -> torch.Tensor:
    """bool [grid, grid], True = regenerate."""
    m = torch.zeros(grid, grid, dtype=torch.bool)
    h = grid // 2
    q = grid // 4
    if shape == "lower half":
        m[h:] = True
    elif shape == "upper half":
        m[:h] = True
    elif shape == "right half":
        m[:, h:] = True
    elif shape == "left half":
        m[:, :h] = True
    elif shape == "centre box":
        m[q:grid - q, q:grid - q] = True
    elif shape == "checkerboard":
        m = (torch.arange(grid)[:, None] + torch.arange(grid)[None, :]) % 2 == 1
    else:
        raise ValueError(shape)
    return m


@dataclass
class Score:
    correct: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.correct += int(ok)
        self.total += 1

    @property
    def rate(self) -> float:
        return self.correct / max(1, self.total)

    def __str__(self) -> str:
        return f"{100 * self.rate:5.1f}% ({self.correct}/{self.total})"


def scenes(n_prompts: int, size: int, seed: int, categories=CATEGORIES):
    from openjanus.shapes import render, rng_for, sample_spec, scene_for_spec

    rng = rng_for(seed, 21)
    for i in range(n_prompts):
        spec = sample_spec(rng, categories[i % len(categories)])
        scene = scene_for_spec(spec, rng, size)
        yield spec, scene, render(scene, size)


def run_completion(pipe, args, grids: dict) -> dict:
    from openjanus.requests import ImageRequest
    from openjanus.shapes import score_image

    grid = pipe.model.cfg.vq.grid
    data = list(scenes(args.prompts, pipe.image_size, args.seed))
    requests = [ImageRequest(spec.prompt, n=args.images, seed=args.seed + i) for i, (spec, _, _) in enumerate(data)]
    scratch = Score()
    for (spec, _, _), r in zip(data, pipe.run(requests, progress=True, desc="from scratch")):
        for im in r.images:
            scratch.add(score_image(im, spec).correct)
    out = {"from scratch": scratch}
    shown = []
    for shape in args.masks:
        mask = token_mask(shape, grid)
        reqs = [ImageRequest(spec.prompt, n=args.images, seed=args.seed + i, image=image, mask=mask)
                for i, (spec, _, image) in enumerate(data)]
        score = Score()
        for k, ((spec, _, image), r) in enumerate(zip(data, pipe.run(reqs, progress=True, desc=shape))):
            for im in r.images:
                score.add(score_image(im, spec).correct)
            if k < 4:
                shown.append((shape, image, r.images[0], mask))
        out[shape] = score
    print(f"\ncompletion: scorer accuracy on the prompt, {args.prompts} prompts x {args.images} images "
          f"({', '.join(CATEGORIES)})")
    print(f"{'regenerated':>14} | accuracy")
    for k, v in out.items():
        print(f"{k:>14} | {v}")
    grids["completion"] = shown
    return {k: vars(v) | {"rate": v.rate} for k, v in out.items()}


def _pad_box(box, size, patch):
    """A pixel box widened by 2 px and rounded out to whole tokens."""
    x0, y0, x1, y1 = box
    def down(v: float) -> int:
        return max(0, int(v) - 2) // patch * patch

    def up(v: float) -> int:
        return min(size, -(-(int(np.ceil(v)) + 2) // patch) * patch)

    return down(x0), down(y0), up(x1), up(y1)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def run_edit(pipe, args, grids: dict) -> dict:
    from openjanus.requests import ImageRequest
    from openjanus.shapes import COLORS, SHAPES, detect, render, rng_for, sample_spec, scene_for_spec
    from openjanus.shapes.spec import Requirement, Spec
    from openjanus.shapes.text import with_prompt

    size, patch = pipe.image_size, pipe.model.cfg.vq.downsample
    rng = rng_for(args.seed, 22)
    colours = list(COLORS)
    cases = []
    while len(cases) < args.prompts:
        spec = sample_spec(rng, "two_object")
        scene = scene_for_spec(spec, rng, size)
        if len(scene.objects) != 2:
            continue
        edit_obj, keep_obj = scene.objects
        change = ("colour", "shape")[len(cases) % 2]
        if change == "colour":
            new = (colours[(colours.index(edit_obj.color) + 1 + int(rng.integers(len(colours) - 1))) % len(colours)],
                   edit_obj.shape)
        else:
            new = (edit_obj.color, SHAPES[(SHAPES.index(edit_obj.shape) + 1 + int(rng.integers(len(SHAPES) - 1)))
                                          % len(SHAPES)])
        if new[1] == keep_obj.shape:
            continue  # the scorer counts by class: keep the two classes apart
        target = with_prompt(Spec("two_object", (Requirement(new[1], color=new[0]),
                                                 Requirement(keep_obj.shape, color=keep_obj.color))))
        cases.append((change, scene, edit_obj, keep_obj, new, target))
    from openjanus.canvas import mask_from_region

    grid = pipe.model.cfg.vq.grid
    out: dict = {}
    print(f"\nedit: the tokens of one object's box regenerated with a prompt naming it in another colour or shape, "
          f"{args.prompts} scenes x {args.images} images")
    print(f"{'variant':>34} | new (colour)        | new (shape)         | other kept          | both"
          f"                | both, best of {args.images}")
    for grow, guidance in args.edit_variants:
        new_ok, kept_ok, both, best = {"colour": Score(), "shape": Score()}, Score(), Score(), Score()
        reqs, regions = [], []
        for i, (_, scene, edit_obj, _, _, target) in enumerate(cases):
            region = _pad_box(edit_obj.bbox(size), size, patch)
            mask = mask_from_region(region, (size, size), size, size, patch)
            if grow:  # also re-sample the tokens just after the box in raster order: right and below
                rows, cols = torch.nonzero(mask, as_tuple=True)
                r1, c1 = int(rows.max()) + 1, int(cols.max()) + 1
                mask[int(rows.min()):min(grid, r1 + grow), int(cols.min()):min(grid, c1 + grow)] = True
            regions.append(region)
            reqs.append(ImageRequest(target.prompt, n=args.images, seed=args.seed + i, guidance=guidance,
                                     image=render(scene, size), mask=mask))
        shown = []
        for k, ((change, scene, edit_obj, keep_obj, new, _), region, r) in enumerate(
                zip(cases, regions, pipe.run(reqs, progress=True, desc=f"edit +{grow} g{guidance:g}"))):
            any_ok = False
            for im in r.images:
                dets = detect(im)
                got_new = any(d.shape == new[1] and d.color == new[0] and _iou(d.box, region) > 0.2 for d in dets)
                got_kept = any(d.shape == keep_obj.shape and d.color == keep_obj.color
                               and _iou(d.box, keep_obj.bbox(size)) > 0.5 for d in dets)
                new_ok[change].add(got_new)
                kept_ok.add(got_kept)
                both.add(got_new and got_kept)
                any_ok |= got_new and got_kept
            best.add(any_ok)
            if k < 6:
                shown.append((f"{edit_obj.color} {edit_obj.shape} -> {new[0]} {new[1]}", render(scene, size),
                              r.images[0], reqs[k].mask))
        name = f"box{f' + {grow} token right/below' if grow else ''}, guidance {guidance:g}"
        print(f"{name:>34} | {new_ok['colour']!s:>19} | {new_ok['shape']!s:>19} | {kept_ok!s:>19} | {both!s:>19} "
              f"| {best}")
        if (grow, guidance) == tuple(args.edit_variants[0]):
            grids["edit"] = shown
        out[name] = {"new colour": vars(new_ok["colour"]), "new shape": vars(new_ok["shape"]), "kept": vars(kept_ok),
                     "both": vars(both), f"best of {args.images}": vars(best)}
    return out


def _halves(im: Image.Image, side: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, new) pixels [h, w, 3] of an image extended by `size` on `side`."""
    a = np.asarray(im, dtype=np.float32)
    if side in ("up", "down"):
        a = a.transpose(1, 0, 2)  # lines are columns now: the boundary is vertical
    cut = size if side in ("right", "down") else a.shape[1] - size
    kept, new = (a[:, :cut], a[:, cut:]) if side in ("right", "down") else (a[:, cut:], a[:, :cut])
    return kept, new


def _continuity(im: Image.Image, side: str, size: int) -> tuple[float, float]:
    """(seam, tint): the mean colour step across the boundary over the mean step between
    neighbouring pixel lines elsewhere; and the distance between the median colours of the kept
    and the new part (the backgrounds dominate both), in 0..255 units."""
    kept, new = _halves(im, side, size)
    a = np.concatenate([kept, new], axis=1) if side in ("right", "down") else np.concatenate([new, kept], axis=1)
    cut = kept.shape[1] if side in ("right", "down") else new.shape[1]
    steps = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))  # [W - 1]: step between neighbouring lines
    seam = float(steps[cut - 1] / np.delete(steps, cut - 1).mean())
    tint = float(np.abs(np.median(kept.reshape(-1, 3), 0) - np.median(new.reshape(-1, 3), 0)).mean())
    return seam, tint


def run_outpaint(pipe, args, grids: dict) -> dict:
    """A scene extended by the native side to the right, left, down or up. Measured: how the new
    part continues the source (seam and background tint, `_continuity`), against the source's
    tokens with a separate image of the same prompt beside them, decoded together the same way;
    and whether the source's objects are still found."""
    from openjanus.requests import ImageRequest
    from openjanus.shapes import detect

    size, grid = pipe.image_size, pipe.model.cfg.vq.grid
    data = list(scenes(args.prompts, size, args.seed + 1, ("single_object", "colors")))
    out, shown = {}, []
    print(f"\noutpaint: {args.prompts} scenes x {args.images} images, extended by {size} px")
    print(f"{'extended':>30} | seam: mean, median | tint: mean, median | source objects still found")

    def report(name: str, values: list[tuple[float, float]], found: Score | None) -> dict:
        seam, tint = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        print(f"{name:>30} | {seam.mean():5.2f}, {np.median(seam):5.2f}      | {tint.mean():5.1f}, "
              f"{np.median(tint):5.1f}      | {found if found is not None else ''}")
        return {"seam mean": float(seam.mean()), "seam median": float(np.median(seam)), "tint mean": float(tint.mean()),
                "tint median": float(np.median(tint)), **({"objects found": vars(found)} if found else {})}

    for side in ("right", "left", "down", "up"):
        reqs = [ImageRequest(spec.prompt, n=args.images, seed=args.seed + i, image=image, outpaint={side: size})
                for i, (spec, _, image) in enumerate(data)]
        values, found = [], Score()
        results = pipe.run(reqs, progress=True, desc=f"outpaint {side}")
        for (_, scene, _), r in zip(data, results):
            for im in r.images:
                values.append(_continuity(im, side, size))
                kept, _ = _halves(im, side, size)
                crop = Image.fromarray((kept.transpose(1, 0, 2) if side in ("up", "down") else kept).astype(np.uint8))
                dets = detect(crop)
                found.add(all(any(d.shape == o.shape and d.color == o.color for d in dets) for o in scene.objects))
        shown.append((side, data[0][2], results[0].images[0]))
        out[side] = report(side, values, found)
    plain = pipe.run([ImageRequest(spec.prompt, n=args.images, seed=args.seed + i)
                      for i, (spec, _, _) in enumerate(data)], progress=True, desc="beside")
    values = []
    for (_, _, image), r in zip(data, plain):
        source = pipe.encode_images([image]).cpu().view(1, grid, grid)
        beside = torch.cat([source.expand(len(r.images), -1, -1), r.tokens.view(-1, grid, grid)], dim=2)
        for im in pipe.decode_tokens(beside.reshape(len(r.images), -1), (grid, 2 * grid)):
            values.append(_continuity(im, "right", size))
    out["another image beside"] = report("another image beside (right)", values, None)
    grids["outpaint"] = shown
    return out


WIDE_PROMPTS = [("a red circle to the left of a blue square", ("square", "blue"), ("circle", "red")),
                ("a green star to the left of a yellow triangle", ("triangle", "yellow"), ("star", "green")),
                ("a blue diamond to the left of an orange cross", ("cross", "orange"), ("diamond", "blue")),
                ("a purple square to the left of a green circle", ("circle", "green"), ("square", "purple"))]


def run_wide(pipe, args, grids: dict) -> dict:
    from openjanus.canvas import Geometry, plan_windows
    from openjanus.requests import ImageRequest
    from openjanus.shapes import score_image
    from openjanus.shapes.spec import Requirement, Spec

    size = pipe.image_size
    specs = [Spec("position", (Requirement(b[0], color=b[1]), Requirement(a[0], color=a[1], position=("left of", 0))),
                  prompt=p) for p, b, a in WIDE_PROMPTS]
    out: dict = {}
    rows = []
    configs = [("native", None, None)] + [("2x wide", (2 * size, size), ov) for ov in args.overlaps]
    for name, wh, overlap in configs:
        reqs = [ImageRequest(s.prompt, n=args.images, seed=args.seed + 1000 * i + k, size=wh,
                             **({"overlap": overlap} if overlap is not None else {}))
                for i, s in enumerate(specs) for k in range(args.wide_repeats)]
        t0 = time.perf_counter()
        results = pipe.run(reqs, progress=True, desc=f"{name} {overlap or ''}")
        seconds = time.perf_counter() - t0
        score = Score()
        for s, r in zip([s for s in specs for _ in range(args.wide_repeats)], results):
            for im in r.images:
                score.add(score_image(im, s).correct)
        images = sum(len(r.images) for r in results)
        passes = sum(r.cost.forward_passes for r in results) / len(results)
        key = f"{name} overlap {overlap}" if overlap is not None else name
        geo = Geometry.of(pipe.model.cfg)
        windows = 1 if wh is None else len(plan_windows(torch.ones(wh[1] // geo.patch, wh[0] // geo.patch,
                                                                   dtype=torch.bool), geo.native, overlap))
        out[key] = vars(score) | {"rate": score.rate, "seconds_per_image": seconds / images,
                                  "forward_passes_per_request": passes, "windows": windows}
        rows.append((key, score, seconds / images, passes, windows))
        if overlap == args.overlaps[len(args.overlaps) // 2] or (overlap is None and not args.overlaps):
            grids["wide"] = [(s.prompt, r.images[0]) for s, r in zip(specs, results[::args.wide_repeats])]
        if overlap is None:
            grids["native"] = [(s.prompt, r.images[0]) for s, r in zip(specs, results[::args.wide_repeats])]
    print(f"\nwide: '<a> to the left of <b>', {len(specs)} prompts x {args.wide_repeats} seeds x {args.images} images")
    print(f"{'':>24} | windows | accuracy             | s/image | forward passes/request")
    for key, score, spi, passes, windows in rows:
        print(f"{key:>24} | {windows:7d} | {score!s:>20} | {spi:7.3f} | {passes:.0f}")
    return out


def write_grids(grids: dict, folder: Path, scale: int) -> None:
    """Image grids for the README: each row source | mask | result."""
    from PIL import ImageDraw

    folder.mkdir(parents=True, exist_ok=True)

    def big(im: Image.Image) -> Image.Image:
        return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)

    def masked(image: Image.Image, mask: torch.Tensor) -> Image.Image:
        patch = image.width // mask.shape[1]
        out = image.copy()
        draw = ImageDraw.Draw(out, "RGBA")
        for r, c in torch.nonzero(mask).tolist():
            draw.rectangle([c * patch, r * patch, (c + 1) * patch - 1, (r + 1) * patch - 1], fill=(255, 0, 255, 110))
        return out

    def sheet(rows: list[list[Image.Image]], pad: int = 4) -> Image.Image:
        w = sum(im.width for im in rows[0]) + pad * (len(rows[0]) + 1)
        h = sum(r[0].height for r in rows) + pad * (len(rows) + 1)
        out = Image.new("RGB", (w, h), "white")
        y = pad
        for r in rows:
            x = pad
            for im in r:
                out.paste(im, (x, y))
                x += im.width + pad
            y += r[0].height + pad
        return out

    if "completion" in grids:
        by_mask: dict[str, list] = {}
        for shape, src, res, mask in grids["completion"]:
            by_mask.setdefault(shape, []).append((src, res, mask))
        rows = []
        for items in by_mask.values():
            row = []
            for src, res, mask in items[:3]:
                row += [big(masked(src, mask)), big(res)]
            rows.append(row)
        sheet(rows).save(folder / "editing-completion.png")
    if "edit" in grids:
        rows = [[big(masked(src, mask)), big(res)] for _, src, res, mask in grids["edit"]]
        half = (len(rows) + 1) // 2
        sheet([a + b for a, b in zip(rows[:half], rows[half:])] if len(rows) > 1 else rows).save(
            folder / "editing-edit.png")
    if "outpaint" in grids:
        rows = []
        for side, src, res in grids["outpaint"]:
            pad = Image.new("RGB", res.size, "white")
            pad.paste(src, {"right": (0, 0), "down": (0, 0), "left": (res.width - src.width, 0),
                            "up": (0, res.height - src.height)}[side])
            rows.append([big(pad), big(res)])
        wide = [r for r, (side, _, _) in zip(rows, grids["outpaint"]) if side in ("right", "left")]
        tall = [r for r, (side, _, _) in zip(rows, grids["outpaint"]) if side in ("down", "up")]
        sheet(wide).save(folder / "editing-outpaint-wide.png")
        sheet([a + b for a, b in zip(tall[:1], tall[1:])] or tall).save(folder / "editing-outpaint-tall.png")
    if "wide" in grids:
        rows = [[big(n), big(w)] for (_, n), (_, w) in zip(grids.get("native", grids["wide"]), grids["wide"])]
        sheet(rows).save(folder / "editing-wide.png")


def _variant(text: str) -> tuple[int, float]:
    grow, guidance = text.split(":")
    return int(grow), float(guidance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="folder or preset (default: the shipped demo model)")
    ap.add_argument("--dtype", default="float32")
    tasks = ["completion", "edit", "outpaint", "wide"]
    ap.add_argument("--tasks", nargs="+", default=tasks, choices=tasks)
    ap.add_argument("--prompts", type=int, default=24, help="scenes per task")
    ap.add_argument("--images", type=int, default=4, help="images per scene")
    ap.add_argument("--masks", nargs="+", default=list(MASKS), choices=MASKS)
    ap.add_argument("--overlaps", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--edit-variants", type=_variant, nargs="+", default=[(0, 5.0), (1, 5.0), (0, 8.0)],
                    help="GROW:GUIDANCE pairs: tokens re-sampled right of and below the box, guidance")
    ap.add_argument("--wide-repeats", type=int, default=6, help="seeds per wide prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=32, help="batch rows of the engine")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grids", type=Path, default=None, help="write the README's image grids to this folder")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from openjanus.inference.engine import EngineConfig
    from openjanus.inference.pipeline import JanusPipeline

    pipe = JanusPipeline.load(args.model, dtype=args.dtype)
    pipe.start_engine(EngineConfig(rows=args.rows))
    print(f"model: {pipe.weights}; {args.prompts} scenes x {args.images} images per task; seed {args.seed}")
    grids: dict = {}
    report = {"model": pipe.weights, "args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    tasks = {"completion": run_completion, "edit": run_edit, "outpaint": run_outpaint, "wide": run_wide}
    for name in args.tasks:
        report[name] = tasks[name](pipe, args, grids)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    pipe.engine.close()
    if args.grids:
        write_grids(grids, args.grids, scale=2 if pipe.image_size <= 64 else 1)
        print(f"grids written to {args.grids}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
