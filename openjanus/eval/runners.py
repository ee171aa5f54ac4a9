"""Benchmark runners: a model in, a run folder out (images, official-format files, report.json,
index.html).

* :func:`run_geneval` -- generate N images per GenEval prompt in GenEval's layout; score them
  with the shapes scorer when every class is a world shape.
* :func:`run_geneval_shapes` -- the shapes-world GenEval (six categories, held-out half).
* :func:`run_pope` / :func:`run_mme` -- answer real POPE question files / an MME folder.
* :func:`run_pope_shapes` -- the shapes-world understanding benchmark: POPE's three settings,
  MME-style pairs, counting, colour, shape, position and open description.

Runners talk to the model through :class:`Pipeline`, the part of ``JanusPipeline`` they use.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from openjanus.errors import UserError
from openjanus.eval import formats
from openjanus.eval.report import (
    Card,
    GenerationReport,
    GenerationSplit,
    PopeScores,
    Section,
    UnderstandingReport,
    write_html,
)
from openjanus.files import write_json
from openjanus.jsonl import write_jsonl
from openjanus.requests import ImageRequest, ImageResult, SamplingParams
from openjanus.shapes.scorer import check_spec, detect
from openjanus.shapes.spec import TAGS, Spec
from openjanus.shapes.splits import HELDOUT_VERSION, spec_heldout_reasons, split_of_scene
from openjanus.shapes.tasks import benchmark_specs, sample_scene_in_split, scene_for_spec
from openjanus.shapes.text import (
    MME_CATEGORIES,
    POPE_SETTINGS,
    QA,
    color_questions,
    count_questions,
    describe_question,
    mme_pairs,
    pope_label,
    pope_questions,
    position_questions,
    score_answer,
    shape_questions,
)
from openjanus.shapes.world import SHAPES, Scene, render, rng_for


class Pipeline(Protocol):
    """What the runners need of a model (``openjanus.inference.pipeline.JanusPipeline`` provides it)."""

    @property
    def image_size(self) -> int: ...

    @property
    def und_image_size(self) -> int: ...

    @property
    def weights(self) -> str: ...  # the model and its weight format, recorded in reports

    def run(self, requests: Sequence[ImageRequest]) -> Sequence[ImageResult]: ...

    def answer(
        self,
        images: list[Image.Image | list[Image.Image]],
        questions: list[str],
        max_new_tokens: int = 32,
    ) -> list[str]: ...


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings recorded in every generation report."""

    n_per_prompt: int = 4
    seed: int = 0
    guidance: float = ImageRequest.guidance
    temperature: float = 1.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.n_per_prompt < 1:
            raise UserError(f"images per prompt must be >= 1, got {self.n_per_prompt}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")

    def request(self, prompt: str, index: int) -> ImageRequest:
        """The engine request for prompt `index` of a run (seed + index: reproducible per prompt)."""
        return ImageRequest(prompt, n=self.n_per_prompt, guidance=self.guidance,
                            sampling=SamplingParams(temperature=self.temperature), seed=self.seed + index)


def is_shapes_spec(spec: Spec) -> bool:
    """True when every class in the spec is a shapes-world shape (so the shapes scorer applies)."""
    return spec.classes <= set(SHAPES)


# --------------------------------------------------------------------------------------------
# Generation


def generate_geneval(
    pipeline: Pipeline,
    specs: Sequence[Spec],
    out: str | Path,
    settings: GenerationSettings = GenerationSettings(),
    log: Log = _quiet,
    records: Sequence[dict[str, Any]] | None = None,
) -> list[list[Path]]:
    """Generate ``n_per_prompt`` images per spec into GenEval's layout; returns sample paths.

    Prompts go to the engine ``batch_size`` at a time (it decodes them in shared batches); prompt
    i uses seed ``seed + i``, so each prompt's images are reproducible on their own. ``records``
    (same length as specs) are written as metadata instead of the specs, to keep any extra keys
    of the original file.
    """
    out = Path(out)
    if out.is_dir() and any(p.is_dir() and p.name.isdigit() for p in out.iterdir()):
        raise UserError(f"{out} already holds numbered GenEval folders; choose an empty output folder")
    out.mkdir(parents=True, exist_ok=True)
    formats.write_geneval_metadata(out / "evaluation_metadata.jsonl", specs)
    paths: list[list[Path]] = []
    bs = settings.batch_size
    for start in range(0, len(specs), bs):
        chunk = list(specs[start : start + bs])
        log(f"generating prompts {start + 1}-{start + len(chunk)} of {len(specs)}")
        results = pipeline.run([settings.request(s.prompt, start + k) for k, s in enumerate(chunk)])
        for k, (spec, result) in enumerate(zip(chunk, results)):
            meta = records[start + k] if records is not None else spec
            paths.append(formats.write_geneval_prompt(out, start + k, meta, result.images))
    return paths


def score_geneval_folder(out: str | Path, log: Log = _quiet) -> list[dict[str, Any]]:
    """Score every sample of a GenEval folder whose classes are world shapes.

    Returns one row per image in the shape of GenEval's ``results.jsonl`` (filename, tag,
    prompt, correct, reason, metadata) plus ``split`` and the detections.
    """
    rows = []
    for entry in formats.read_geneval_samples(out):
        if not is_shapes_spec(entry.spec):
            raise UserError(
                f"{entry.folder}: classes {sorted(entry.spec.classes)} are not shapes of this world; "
                "score real GenEval samples with GenEval's own evaluate_images.py"
            )
        held = spec_heldout_reasons(entry.spec)
        for path in entry.samples:
            with Image.open(path) as im:
                check = check_spec(detect(im), entry.spec)
            rows.append(
                {
                    "filename": str(path),
                    "tag": entry.spec.tag,
                    "prompt": entry.spec.prompt,
                    "correct": check.correct,
                    "reason": check.reason,
                    "metadata": json.dumps(entry.spec.to_geneval()),
                    "split": "heldout" if held else "train",
                    "heldout": held,
                    "detections": [d.to_dict() for d in check.detections],
                }
            )
    log(f"scored {len(rows)} images")
    return rows


def _scored_report(title: str, rows: Sequence[dict[str, Any]], tags: Sequence[str]) -> GenerationReport:
    summary = formats.geneval_summary(rows)
    by_split = {}
    for split in ("train", "heldout"):
        sub = [r for r in rows if r["split"] == split]
        if sub:
            by_split[split] = GenerationSplit(**formats.geneval_summary(sub))
    prompts: dict[str, list[bool]] = {}
    for r in rows:
        prompts.setdefault(r["metadata"], []).append(r["correct"])
    return GenerationReport(
        benchmark=title,
        prompts=len(prompts),
        images=len(rows),
        overall=summary["overall"],
        categories={t: summary["categories"][t] for t in tags if t in summary["categories"]},
        images_per_category=summary["images"],
        prompts_all_correct=sum(all(v) for v in prompts.values()) / max(len(prompts), 1),
        by_split=by_split,
    )


def _geneval_html(out: Path, title: str, report: GenerationReport, rows: Sequence[dict[str, Any]]) -> Path:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["metadata"], []).append(r)
    sections: dict[str, Section] = {}
    for rs in groups.values():
        tag = rs[0]["tag"]
        sec = sections.setdefault(tag, Section(f"{tag}: {report.categories.get(tag, 0.0):.3f}"))
        reasons = sorted({r["reason"] for r in rs if r["reason"]})
        sec.cards.append(
            Card(
                images=tuple(Path(r["filename"]) for r in rs),
                title=rs[0]["prompt"],
                lines=(f"split: {rs[0]['split']}" + (f" ({', '.join(rs[0]['heldout'])})" if rs[0]["heldout"] else ""),
                       *reasons[:3]),
                ok=all(r["correct"] for r in rs),
                marks=tuple(r["correct"] for r in rs),
            )
        )
    summary: list[tuple[str, Any]] = [("overall (mean of categories)", report.overall)]
    summary += [(t, v) for t, v in report.categories.items()]
    summary += [(f"{s} overall", v.overall) for s, v in report.by_split.items()]
    return write_html(out / "index.html", title, summary, list(sections.values()))


def score_geneval(out: str | Path, title: str = "GenEval (shapes world)", log: Log = _quiet) -> GenerationReport:
    """Score a GenEval folder of shapes-world prompts: writes results.jsonl, report.json and
    index.html into it and returns the report."""
    out = Path(out)
    rows = score_geneval_folder(out, log)
    write_jsonl(out / "results.jsonl", rows)
    present = {r["tag"] for r in rows}
    tags = [t for t in TAGS if t in present] + sorted(present - set(TAGS))
    report = _scored_report(title, rows, tags)
    write_json(out / "report.json", report.to_dict())
    _geneval_html(out, title, report, rows)
    return report


def run_geneval(
    pipeline: Pipeline,
    specs: Sequence[Spec],
    out: str | Path,
    settings: GenerationSettings = GenerationSettings(),
    log: Log = _quiet,
    records: Sequence[dict[str, Any]] | None = None,
    title: str = "GenEval",
    world: dict[str, Any] | None = None,
) -> GenerationReport:
    """Generate for GenEval specs; when all classes are world shapes, also score and report.

    Real GenEval prompts (COCO classes) are only generated: run GenEval's ``evaluate_images.py``
    on ``out`` for the official numbers. Returns the report (also ``out/report.json``).
    """
    out = Path(out)
    if not specs:
        raise UserError("no prompts to generate")
    generate_geneval(pipeline, specs, out, settings, log, records)
    made = {"prompts": len(specs), "images": len(specs) * settings.n_per_prompt,
            "settings": dataclasses.asdict(settings), "world": world, "weights": pipeline.weights}
    if all(is_shapes_spec(s) for s in specs):
        report = dataclasses.replace(score_geneval(out, title, log), **made)
        write_json(out / "report.json", report.to_dict())
        return report
    report = GenerationReport(title, **made, scored=False,
                              note="classes outside the shapes world: score with GenEval's evaluate_images.py")
    write_json(out / "report.json", report.to_dict())
    sections: dict[str, Section] = {}
    for e in formats.read_geneval_samples(out):
        sections.setdefault(e.spec.tag, Section(e.spec.tag)).cards.append(Card(e.samples, e.spec.prompt))
    write_html(out / "index.html", title, [("prompts", len(specs))], list(sections.values()))
    return report


def run_geneval_shapes(
    pipeline: Pipeline,
    out: str | Path,
    per_category: int = 8,
    settings: GenerationSettings = GenerationSettings(),
    log: Log = _quiet,
    tags: Sequence[str] = TAGS,
    prompt_seed: int = 0,
) -> GenerationReport:
    """GenEval on the shapes world: ``per_category`` prompts per tag (half of them held out
    where the tag has held-out compositions), scored without a neural network.

    The prompt set depends only on ``per_category`` and ``prompt_seed`` (not on the sampling
    seed), so runs with different sampling seeds or models are compared on the same prompts.
    """
    specs = benchmark_specs(per_category=per_category, seed=prompt_seed, tags=tags)
    world = {"heldout_version": HELDOUT_VERSION, "per_category": per_category, "prompt_seed": prompt_seed}
    return run_geneval(pipeline, specs, out, settings, log, title="GenEval (shapes world)", world=world)


# --------------------------------------------------------------------------------------------
# Understanding


def _answer_all(
    pipeline: Pipeline,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    batch_size: int,
    max_new_tokens: int,
    log: Log,
    what: str,
) -> list[str]:
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        log(f"{what}: questions {start + 1}-{min(start + batch_size, len(questions))} of {len(questions)}")
        answers += pipeline.answer(
            list(images[start : start + batch_size]),
            list(questions[start : start + batch_size]),
            max_new_tokens=max_new_tokens,
        )
    if len(answers) != len(questions):
        raise RuntimeError(f"the model returned {len(answers)} answers for {len(questions)} questions")
    return answers


class _ImageCache:
    """Opens each image once per run; real benchmarks reuse one image for many questions."""

    def __init__(self) -> None:
        self._cache: dict[Path, Image.Image] = {}

    def __call__(self, path: Path) -> Image.Image:
        im = self._cache.get(path)
        if im is None:
            try:
                with Image.open(path) as f:
                    im = f.convert("RGB")
            except OSError as e:
                raise UserError(f"cannot read image {path}: {e}") from None
            self._cache[path] = im
        return im


def run_pope(
    pipeline: Pipeline,
    questions: str | Path,
    image_dir: str | Path,
    out: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    suffix: str = "",
    log: Log = _quiet,
    name: str | None = None,
) -> PopeScores:
    """Answer a POPE question file; write ``<name>.answers.jsonl`` and return the metrics."""
    return _pope(pipeline, questions, image_dir, out, batch_size, max_new_tokens, suffix, log, name)[0]


# The metrics and the answer records (as written to <name>.answers.jsonl) of a POPE file.
def _pope(pipeline: Pipeline, questions: str | Path, image_dir: str | Path, out: str | Path, batch_size: int,
          max_new_tokens: int, suffix: str, log: Log, name: str | None) -> tuple[PopeScores, list[dict[str, Any]]]:
    qs = formats.read_pope_questions(questions)
    image_dir, out = Path(image_dir), Path(out)
    name = name or Path(questions).stem
    load = _ImageCache()
    images = [load(formats.find_image(image_dir, q.image)) for q in qs]
    texts = [q.text + suffix for q in qs]
    answers = _answer_all(pipeline, images, texts, batch_size, max_new_tokens, log, f"POPE {name}")
    preds = [pope_label(a) for a in answers]
    rows = [{"question_id": q.question_id, "image": q.image, "prompt": t, "text": a, "answer": a, "pred": p,
             "label": q.label} for q, t, a, p in zip(qs, texts, answers, preds)]
    write_jsonl(out / f"{name}.answers.jsonl", rows)
    return PopeScores(**formats.pope_metrics(preds, [q.label for q in qs])), rows


def run_mme(
    pipeline: Pipeline,
    root: str | Path,
    out: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    categories: Sequence[str] | None = None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Answer an MME folder; write MME's result files under ``out/results`` and return metrics."""
    qs = formats.read_mme(root, categories)
    load = _ImageCache()
    answers = _answer_all(pipeline, [load(q.image) for q in qs], [q.question for q in qs], batch_size, max_new_tokens,
                          log, "MME")
    rows = list(zip(qs, answers))
    formats.write_mme_results(Path(out) / "results", rows)
    return formats.mme_metrics(rows)


def _popularity(scenes: Sequence[Scene]) -> list[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for s in scenes:
        counts.update(s.pairs)
    return [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


UND_CATEGORIES: tuple[str, ...] = (
    "pope_random", "pope_popular", "pope_adversarial", "count", "color", "shape", "position", "describe",
)


def build_pope_shapes(out: str | Path, n_images: int = 100, seed: int = 0, image_size: int = 64) -> dict[str, Any]:
    """Render the understanding benchmark's files: images, POPE question files (three
    settings), an MME-style folder and ``vqa.jsonl`` (count, colour, shape, position, describe).

    Even-numbered images come from the training compositions, odd ones hold out at least one.
    Returns a manifest of what was written.
    """
    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i in range(n_images):
        rng = rng_for(seed, 201, i)
        scene = sample_scene_in_split(rng, "train" if i % 2 == 0 else "heldout", image_size)
        scenes.append(scene)
        render(scene).save(img_dir / f"{i:05d}.png")
    write_jsonl(out / "scenes.jsonl", ({"image": f"{i:05d}.png", **s.to_dict()} for i, s in enumerate(scenes)))
    popular = _popularity(scenes)
    qid = 0
    pope_files = {}
    for setting in POPE_SETTINGS:
        qs = []
        for i, scene in enumerate(scenes):
            rng = rng_for(seed, 202, POPE_SETTINGS.index(setting), i)
            for qa in pope_questions(scene, rng, setting, popularity=popular):
                qs.append(formats.PopeQuestion(qid, f"{i:05d}.png", qa.question, qa.answer))
                qid += 1
        path = out / "pope" / f"shapes_pope_{setting}.json"
        formats.write_pope_questions(path, qs)
        pope_files[setting] = path
    mme_items: dict[str, list[tuple[Image.Image, str, list[tuple[str, str]]]]] = {c: [] for c in MME_CATEGORIES}
    vqa = []
    for i, scene in enumerate(scenes):
        rng = rng_for(seed, 203, i)
        im = render(scene)
        for cat, (yes_qa, no_qa) in mme_pairs(scene, rng).items():
            mme_items[cat].append((im, f"{i:05d}", [(yes_qa.question, "Yes"), (no_qa.question, "No")]))
        qas: list[QA] = count_questions(scene, rng) + color_questions(scene) + shape_questions(scene)
        qas += position_questions(scene, rng) + [describe_question(scene)]
        for qa in qas:
            vqa.append({"question_id": len(vqa), "image": f"{i:05d}.png", "kind": qa.kind, "text": qa.question,
                        "answer": qa.answer})
    for cat, items in mme_items.items():
        formats.write_mme_category(out / "mme", cat, items)
    write_jsonl(out / "vqa.jsonl", vqa)
    return {"images": n_images, "pope": {k: str(v) for k, v in pope_files.items()}, "mme": str(out / "mme"),
            "vqa": str(out / "vqa.jsonl"), "image_size": image_size, "seed": seed}


def run_pope_shapes(
    pipeline: Pipeline,
    out: str | Path,
    n_images: int = 100,
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 16,
    log: Log = _quiet,
) -> UnderstandingReport:
    """The shapes-world understanding benchmark (see :func:`build_pope_shapes`), answered and scored.

    Categories: POPE accuracy in each setting, exact-match accuracy for count, color, shape and
    position questions, and the mean description score; overall is their unweighted mean.
    MME-style acc / acc+ are reported beside them.
    """
    out = Path(out)
    size = image_size or min(max(pipeline.und_image_size, 64), 384)
    manifest = build_pope_shapes(out, n_images, seed, size)
    pope: dict[str, PopeScores] = {}
    pope_rows: dict[str, list[dict[str, Any]]] = {}
    for setting in POPE_SETTINGS:
        pope[setting], pope_rows[setting] = _pope(pipeline, manifest["pope"][setting], out / "images", out / "pope",
                                                  batch_size, 8, "", log, f"shapes_pope_{setting}")
    mme = run_mme(pipeline, out / "mme", out / "mme_out", batch_size=batch_size, log=log)

    scenes = {r["image"]: Scene.from_dict(r) for r in map(json.loads, (out / "scenes.jsonl").read_text().splitlines())}
    vqa = [json.loads(line) for line in (out / "vqa.jsonl").read_text().splitlines()]
    load = _ImageCache()
    short = [r for r in vqa if r["kind"] != "describe"]
    longq = [r for r in vqa if r["kind"] == "describe"]
    answers = _answer_all(pipeline, [load(out / "images" / r["image"]) for r in short], [r["text"] for r in short],
                          batch_size, 8, log, "VQA")
    answers += _answer_all(pipeline, [load(out / "images" / r["image"]) for r in longq], [r["text"] for r in longq],
                           batch_size, 64, log, "descriptions")
    scored = []
    for r, a in zip(short + longq, answers):
        qa = QA(r["kind"], r["text"], r["answer"])
        scene = scenes[r["image"]]
        scored.append({**r, "prediction": a, "score": score_answer(qa, a, scene), "split": split_of_scene(scene)})
    write_jsonl(out / "vqa.answers.jsonl", scored)

    cats: dict[str, float] = {f"pope_{s}": pope[s].accuracy for s in POPE_SETTINGS}
    for kind in VQA_KINDS:
        vals = [r["score"] for r in scored if r["kind"] == kind]
        if vals:
            cats[kind] = float(np.mean(vals))
    yes_no: dict[str, list[bool]] = {"train": [], "heldout": []}
    for rows in pope_rows.values():
        for r in rows:
            yes_no[split_of_scene(scenes[r["image"]])].append(r["pred"] == r["label"])
    report = UnderstandingReport(
        weights=pipeline.weights,
        benchmark="POPE/MME-style understanding (shapes world)",
        n_images=n_images,
        seed=seed,
        image_size=size,
        heldout_version=HELDOUT_VERSION,
        overall=float(np.mean(list(cats.values()))),
        categories=cats,
        pope=pope,
        mme=mme,
        vqa_by_split={split: _mean_by_kind([r for r in scored if r["split"] == split]) for split in ("train",
                                                                                                     "heldout")},
        yes_no_by_split={split: float(np.mean(v)) for split, v in yes_no.items() if v},
        questions={"pope": sum(p.n for p in pope.values()), "vqa": len(scored),
                   "mme": sum(c["questions"] for c in mme["categories"].values())},
        describe_scoring="F1 between the (colour, shape) pairs in the image and those named in the answer",
    )
    write_json(out / "report.json", report.to_dict())
    _pope_shapes_html(out, report, pope_rows, scored)
    return report


VQA_KINDS = ("count", "color", "shape", "position", "describe")


def _mean_by_kind(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    vals = {k: [r["score"] for r in scored if r["kind"] == k] for k in VQA_KINDS}
    return {k: float(np.mean(v)) for k, v in vals.items() if v}


def _pope_shapes_html(out: Path, report: UnderstandingReport, answers: dict[str, list[dict[str, Any]]],
                      scored: Sequence[dict[str, Any]], per_kind: int = 60) -> Path:
    sections = []
    for setting, rows in answers.items():
        m = report.pope[setting]
        sec = Section(f"POPE {setting}: accuracy {m.accuracy:.3f}, F1 {m.f1:.3f}, yes-ratio {m.yes_ratio:.3f}")
        for r in rows[:per_kind]:
            answer = (f"answer: {r['text']!r}", f"truth: {r['label']}")
            sec.cards.append(Card((out / "images" / r["image"],), r["prompt"], answer, r["pred"] == r["label"]))
        sections.append(sec)
    for kind in VQA_KINDS:
        rows = [r for r in scored if r["kind"] == kind]
        if not rows:
            continue
        sec = Section(f"{kind}: {report.categories[kind]:.3f}")
        for r in rows[:per_kind]:
            sec.cards.append(Card((out / "images" / r["image"],), r["text"],
                                  (f"answer: {r['prediction']!r}", f"truth: {r['answer']}", f"score: {r['score']:.2f}"),
                                  r["score"] >= 0.5))
        sections.append(sec)
    pairs = ", ".join(f"{c} {v['acc']:.2f} / {v['acc_plus']:.2f}" for c, v in report.mme["categories"].items())
    sections.append(Section("MME-style pairs (acc / acc+): " + pairs))
    summary = [("overall (mean of categories)", report.overall), *report.categories.items()]
    return write_html(out / "index.html", report.benchmark, summary, sections)


# --------------------------------------------------------------------------------------------
# A model stand-in that draws the truth, for checking the harness end to end


@dataclass
class OracleResult:
    """The part of an image result the runners read."""

    images: list[Image.Image]


class WorldOracle:
    """Generates the world's own rendering of each known prompt: the harness's upper bound.

    Prompts must be canonical prompts of the given specs. ``answer`` is not supported.
    """

    def __init__(self, specs: Sequence[Spec], image_size: int = 64) -> None:
        self._specs = {s.prompt: s for s in specs}
        self.image_size = image_size
        self.weights = "the world's own renderer (no model)"
        self.und_image_size = image_size

    def run(self, requests: Sequence[ImageRequest]) -> list[OracleResult]:
        out = []
        for r in requests:
            if r.prompt not in self._specs:
                raise UserError(f"the oracle does not know the prompt {r.prompt!r}")
            out.append(OracleResult([render(scene_for_spec(self._specs[r.prompt], rng_for(r.seed, 301, n),
                                                           self.image_size)) for n in range(r.n)]))
        return out

    def answer(self, images: list[Any], questions: list[str], max_new_tokens: int = 32) -> list[str]:
        raise UserError("the world oracle only generates images")
