"""`openjanus demo`: show the whole system working in a few minutes on a CPU.

With the shipped demo model (or any `--model`), it generates images for a handful of prompts
(held-out compositions among them), answers questions about freshly rendered scenes, runs
small versions of the two shapes-world benchmarks, and writes `report.html` + `scores.json`.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openjanus.eval.report import GenerationReport, UnderstandingReport
from openjanus.options import EngineOptions, ModelOptions, add_seed, integer_flag, open_pipeline

if TYPE_CHECKING:
    from openjanus.inference.pipeline import JanusPipeline

# Prompts shown in the gallery; the last three ask for held-out compositions (see docs/shapes-world.md).
GALLERY_PROMPTS = (
    "a photo of a blue circle",
    "a photo of two yellow squares",
    "a photo of a black triangle left of a pink star",
    "a photo of a purple cross above an orange circle",
    "a photo of a red star",
    "a photo of three circles",
    "a photo of a green circle and a blue triangle",
)


def headline_scores(geneval: GenerationReport, pope: UnderstandingReport) -> dict[str, Any]:
    """The numbers the README quotes, per split (held-out compositions first): generation
    overall (GenEval-style categories), yes/no accuracy (POPE questions, all three settings)
    and counting accuracy, as the two benchmark reports carry them."""
    out: dict[str, Any] = {}
    for name in ("heldout", "train"):
        split = geneval.by_split.get(name)
        out[name] = {
            "generation_overall": split.overall if split is not None else None,
            "yes_no_accuracy": pope.yes_no_by_split.get(name),
            "counting_accuracy": pope.vqa_by_split.get(name, {}).get("count"),
        }
    return out


def run_demo(pipe: JanusPipeline, out: Path, seed: int, per_category: int, n_images: int) -> dict[str, Any]:
    """Generate the gallery, answer questions about rendered scenes and run both shapes-world
    benchmarks with `pipe`; write report.html and scores.json to `out`."""
    from openjanus.eval.runners import GenerationSettings, run_geneval_shapes, run_pope_shapes
    from openjanus.requests import ImageRequest
    from openjanus.shapes.tasks import sample_scene_in_split
    from openjanus.shapes.text import scene_questions
    from openjanus.shapes.world import render, rng_for

    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    out.mkdir(parents=True, exist_ok=True)
    log(f"model {pipe.name}: generating the gallery")
    gallery = pipe.run([ImageRequest(p, n=4, seed=seed + i) for i, p in enumerate(GALLERY_PROMPTS)], progress=True)
    (out / "gallery").mkdir(exist_ok=True)
    cards = []
    for i, (prompt, result) in enumerate(zip(GALLERY_PROMPTS, gallery)):
        names = []
        for j, im in enumerate(result.images):
            name = f"gallery/p{i}_{j}.png"
            im.resize((im.width * 2, im.height * 2)).save(out / name)
            names.append(name)
        cards.append((prompt, names))

    log("answering questions about rendered scenes")
    qa_rows = []
    size = max(pipe.und_image_size, 64)
    (out / "scenes").mkdir(exist_ok=True)
    for i, split in enumerate(("train", "train", "heldout", "heldout")):
        scene = sample_scene_in_split(rng_for(seed, 9001, i), split, image_size=size)
        image = render(scene)
        name = f"scenes/s{i}.png"
        image.save(out / name)
        qs = scene_questions(scene, rng_for(seed, 9002, i))[:5]
        answers = pipe.answer([image] * len(qs), [q.question for q in qs], max_new_tokens=24)
        qa_rows.append((name, split, [(q.question, q.answer, a) for q, a in zip(qs, answers)]))

    log("benchmark: GenEval-style generation (shapes world)")
    n = 2
    rows = pipe.engine.config.rows
    settings = GenerationSettings(n_per_prompt=n, seed=seed, batch_size=max(1, rows // (2 * n)))
    geneval = run_geneval_shapes(pipe, out / "geneval", per_category=per_category, settings=settings, log=log)
    log("benchmark: POPE/MME-style understanding (shapes world)")
    pope = run_pope_shapes(pipe, out / "pope", n_images=n_images, seed=seed, batch_size=rows, log=log)
    scores = {
        "model": pipe.name,
        "headline": headline_scores(geneval, pope),
        "geneval_shapes": {k: v for k, v in geneval.to_dict().items() if k in ("overall", "categories", "by_split")},
        "pope_shapes": {k: v for k, v in pope.to_dict().items() if k in ("overall", "categories", "vqa_by_split")},
        "settings": {"seed": seed, "per_category": per_category, "n_images": n_images},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    write_report(out, scores, cards, qa_rows)
    return scores


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def write_report(out: Path, scores: dict[str, Any], cards, qa_rows) -> Path:
    h = html.escape
    parts = ["<!doctype html><meta charset=utf-8><title>openjanus demo</title><style>"
             "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
             "table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}"
             ".g{display:flex;flex-wrap:wrap;gap:12px}.c{border:1px solid #ddd;border-radius:6px;padding:6px}"
             "img{image-rendering:pixelated;margin:1px}.ok{color:#2a9d3a}.bad{color:#d33}</style>",
             f"<h1>openjanus demo — {h(str(scores['model']))}</h1>",
             f"<p>{scores['seconds']} s on this machine. Benchmarks: <a href='geneval/index.html'>GenEval-style "
             f"generation</a>, <a href='pope/index.html'>POPE/MME-style understanding</a>.</p>",
             "<h2>Scores</h2><table><tr><th></th><th>held-out compositions</th><th>training compositions</th></tr>"]
    for key, label in (("generation_overall", "generation, overall (GenEval-style)"),
                       ("yes_no_accuracy", "yes/no accuracy (POPE-style)"),
                       ("counting_accuracy", "counting accuracy")):
        parts.append(f"<tr><td>{label}</td><td>{_pct(scores['headline']['heldout'][key])}</td>"
                     f"<td>{_pct(scores['headline']['train'][key])}</td></tr>")
    parts.append("</table><h2>Text to image</h2><div class=g>")
    for prompt, names in cards:
        imgs = "".join(f"<img src='{n}' width=128 height=128>" for n in names)
        parts.append(f"<div class=c><div>{h(prompt)}</div>{imgs}</div>")
    parts.append("</div><h2>Questions about images</h2><div class=g>")
    for name, split, rows in qa_rows:
        lines = "".join(
            f"<tr><td>{h(q)}</td><td class={'ok' if a.strip().lower() == t.lower() else 'bad'}>{h(a)}</td>"
            f"<td>{h(t)}</td></tr>" for q, t, a in rows)
        parts.append(f"<div class=c><img src='{name}' width=160 height=160><div>{split} scene</div>"
                     f"<table><tr><th>question</th><th>answer</th><th>truth</th></tr>{lines}</table></div>")
    parts.append("</div>")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path


def cmd_demo(args: argparse.Namespace) -> None:
    """Generate, answer and benchmark with the demo model; write report.html and scores.json."""
    out = Path(args.out)
    with open_pipeline(args) as pipe:
        scores = run_demo(pipe, out, args.seed, args.per_category, args.n_images)
    hd = scores["headline"]["heldout"]
    print(f"held-out compositions: generation {_pct(hd['generation_overall'])}, yes/no {_pct(hd['yes_no_accuracy'])}, "
          f"counting {_pct(hd['counting_accuracy'])}")
    print(f"wrote {out / 'report.html'} and {out / 'scores.json'} in {scores['seconds']} s")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="generate images, answer questions and benchmark the demo model")
    p.add_argument("--out", required=True, help="output folder (report.html, scores.json, images)")
    ModelOptions.add_to(p)
    EngineOptions.add_to(p)
    add_seed(p)
    p.add_argument("--per-category", type=integer_flag(1), default=6, help="GenEval-style prompts per category")
    p.add_argument("--n-images", type=integer_flag(1), default=40, help="scenes for the understanding benchmark")
    p.set_defaults(func=cmd_demo)


__all__ = ["run_demo", "headline_scores", "register"]
