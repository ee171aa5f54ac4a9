"""The real benchmarks' file formats: GenEval, POPE and MME readers, writers and scorers.

GenEval (github.com/djghosh13/geneval): prompts come as ``evaluation_metadata.jsonl``; samples
are written as ``<out>/<index:05d>/metadata.jsonl`` (the prompt's record, one JSON object) and
``<out>/<index:05d>/samples/<n:04d>.png`` -- the layout its scorer reads (its
``evaluate_images.py`` takes every ``*.png`` under ``samples``) -- plus an optional
``grid.png``. Scores are the mean of ``correct`` per tag, and overall the unweighted mean of the
tags (``summary_scores.py``); :func:`geneval_summary` computes the same from result rows.

POPE: question files are JSON lines ``{"question_id", "image", "text", "label"}`` with ``label``
``yes``/``no``; answers are read the way POPE's evaluation reads them (`openjanus.shapes.text.pope_label`) and
scored as accuracy, precision, recall, F1 (``yes`` is positive) and the yes-ratio.

MME: a category folder holds images and, per image, a ``.txt`` of ``question<TAB>answer`` lines
(two per image, one ``Yes`` and one ``No``), either side by side or as ``images/`` plus
``questions_answers_YN/``. Results are written the way MME's ``eval_tool/calculation.py``
reads them: ``<category>.txt`` lines ``image<TAB>question<TAB>gt<TAB>prediction``. acc is the
per-question accuracy, acc+ the share of images with both questions right; a category's score
is 100 * (acc + acc+).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from openjanus.errors import UserError
from openjanus.images import IMAGE_SUFFIXES
from openjanus.jsonl import read_jsonl, write_jsonl
from openjanus.shapes.spec import Spec, SpecError

# --------------------------------------------------------------------------------------------
# GenEval


def read_geneval_metadata(path: str | Path) -> list[Spec]:
    """Parse GenEval's ``evaluation_metadata.jsonl`` (one record per line) into specs."""
    path = Path(path)
    specs = []
    for n, row in enumerate(read_jsonl(path, "GenEval metadata"), 1):
        try:
            specs.append(Spec.from_geneval(row, where=f"{path.name} record {n}"))
        except SpecError as e:
            raise UserError(str(e)) from None
    return specs


def write_geneval_metadata(path: str | Path, specs: Sequence[Spec]) -> None:
    """Write specs as a GenEval ``evaluation_metadata.jsonl``."""
    write_jsonl(Path(path), (s.to_geneval() for s in specs))


def geneval_folder(out: str | Path, index: int) -> Path:
    """The folder of prompt ``index``: ``<out>/<index:05d>``."""
    return Path(out) / f"{index:05d}"


def geneval_sample_path(out: str | Path, index: int, n: int) -> Path:
    """Where sample ``n`` of prompt ``index`` goes: ``<out>/<index:05d>/samples/<n:04d>.png``."""
    return geneval_folder(out, index) / "samples" / f"{n:04d}.png"


def write_geneval_prompt(
    out: str | Path, index: int, spec: Spec | dict[str, Any], images: Sequence[Image.Image], grid: bool = True
) -> list[Path]:
    """Write one prompt's metadata and samples in GenEval's layout; returns the sample paths.

    ``metadata.jsonl`` holds the record exactly as read (extra keys included when a dict is given).
    """
    folder = geneval_folder(out, index)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    record = spec.to_geneval() if isinstance(spec, Spec) else spec
    (folder / "metadata.jsonl").write_text(json.dumps(record), encoding="utf-8")
    paths = []
    for n, im in enumerate(images):
        p = geneval_sample_path(out, index, n)
        im.convert("RGB").save(p)
        paths.append(p)
    if grid and images:
        from openjanus.shapes.world import grid_image

        grid_image(images, columns=min(len(images), 4)).save(folder / "grid.png")
    return paths


@dataclass(frozen=True)
class GenEvalEntry:
    """One prompt folder of a GenEval sample directory."""

    index: int
    folder: Path
    spec: Spec
    samples: tuple[Path, ...]


def read_geneval_samples(out: str | Path) -> list[GenEvalEntry]:
    """Read a GenEval sample directory back (numbered folders, their metadata and PNGs)."""
    root = Path(out)
    if not root.is_dir():
        raise UserError(f"GenEval sample folder not found: {root}")
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise UserError(f"{folder}: no metadata.jsonl")
        try:
            spec = Spec.from_geneval(json.loads(meta.read_text(encoding="utf-8")), where=str(meta))
        except (json.JSONDecodeError, SpecError) as e:
            raise UserError(f"{meta}: {e}") from None
        samples = tuple(sorted((folder / "samples").glob("*.png")))
        entries.append(GenEvalEntry(int(folder.name), folder, spec, samples))
    if not entries:
        raise UserError(f"{root}: no numbered prompt folders")
    return entries


def geneval_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary: per tag the mean of ``correct``, overall the unweighted mean of tags.

    Also counts prompts fully correct (every sample) per tag, which GenEval prints as well.
    """
    by_tag: dict[str, list[bool]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
    tags = {t: sum(v) / len(v) for t, v in sorted(by_tag.items())}
    return {
        "overall": sum(tags.values()) / len(tags) if tags else 0.0,
        "categories": tags,
        "images": {t: len(v) for t, v in sorted(by_tag.items())},
    }


# --------------------------------------------------------------------------------------------
# POPE


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question; ``label`` is 'yes' or 'no'."""

    question_id: Any
    image: str
    text: str
    label: str


def read_pope_questions(path: str | Path) -> list[PopeQuestion]:
    """Parse a POPE question file (JSON lines with question_id, image, text, label)."""
    path = Path(path)
    out = []
    for n, row in enumerate(read_jsonl(path, "POPE question"), 1):
        missing = [k for k in ("question_id", "image", "text", "label") if k not in row]
        if missing:
            raise UserError(f"{path.name} record {n}: missing {', '.join(missing)}")
        label = str(row["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise UserError(f"{path.name} record {n}: label must be yes or no, got {row['label']!r}")
        out.append(PopeQuestion(row["question_id"], str(row["image"]), str(row["text"]), label))
    return out


def write_pope_questions(path: str | Path, questions: Iterable[PopeQuestion]) -> None:
    """Write a POPE question file."""
    write_jsonl(
        Path(path),
        ({"question_id": q.question_id, "image": q.image, "text": q.text, "label": q.label} for q in questions),
    )


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive = 'yes') and yes-ratio of yes/no predictions."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = sum(p == "yes" and label == "yes" for p, label in zip(predictions, labels))
    fp = sum(p == "yes" and label == "no" for p, label in zip(predictions, labels))
    tn = sum(p == "no" and label == "no" for p, label in zip(predictions, labels))
    fn = sum(p == "no" and label == "yes" for p, label in zip(predictions, labels))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


def find_image(folder: Path, name: str) -> Path:
    """An image by its file name in a folder, raising a UserError naming both if absent."""
    p = folder / name
    if not p.is_file():
        raise UserError(f"image {name!r} not found in {folder}")
    return p


# --------------------------------------------------------------------------------------------
# MME

MME_PERCEPTION: tuple[str, ...] = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)
MME_COGNITION: tuple[str, ...] = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)


@dataclass(frozen=True)
class MMEQuestion:
    """One MME question: category, image path, question text and 'Yes'/'No' ground truth."""

    category: str
    image: Path
    question: str
    answer: str


def _mme_pairs(txt_dir: Path, img_dir: Path, category: str) -> Iterator[MMEQuestion]:
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for txt in sorted(txt_dir.glob("*.txt")):
        img = images.get(txt.stem)
        if img is None:
            raise UserError(f"{txt}: no image named {txt.stem}.* in {img_dir}")
        for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise UserError(f"{txt}:{n}: expected 'question<TAB>answer'")
            yield MMEQuestion(category, img, parts[0].strip(), parts[1].strip())


def read_mme(root: str | Path, categories: Sequence[str] | None = None) -> list[MMEQuestion]:
    """Read MME's folder tree (every sub-folder is a category unless ``categories`` is given)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"MME folder not found: {root}")
    names = list(categories) if categories else sorted(p.name for p in root.iterdir() if p.is_dir())
    out: list[MMEQuestion] = []
    for name in names:
        d = root / name
        if not d.is_dir():
            raise UserError(f"MME category folder not found: {d}")
        if (d / "questions_answers_YN").is_dir():
            out += _mme_pairs(d / "questions_answers_YN", d / "images", name)
        else:
            out += _mme_pairs(d, d, name)
    if not out:
        raise UserError(f"{root}: no MME questions found")
    return out


def write_mme_category(folder: str | Path, category: str,
                       items: Sequence[tuple[Image.Image, str, list[tuple[str, str]]]]) -> None:
    """Write one MME category folder: ``<name>.png`` + ``<name>.txt`` (question<TAB>Yes/No)."""
    d = Path(folder) / category
    d.mkdir(parents=True, exist_ok=True)
    for image, name, qas in items:
        image.convert("RGB").save(d / f"{name}.png")
        (d / f"{name}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qas), encoding="utf-8")


def mme_prediction(answer: str) -> str:
    """MME's reading of an answer: exactly 'yes'/'no', else whichever of them its first four
    characters contain (yes first), else 'other'."""
    a = answer.strip().lower()
    if a in ("yes", "no"):
        return a
    head = a[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def write_mme_results(folder: str | Path, rows: Sequence[tuple[MMEQuestion, str]]) -> list[Path]:
    """Write ``<category>.txt`` files as MME's calculation.py reads them; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_cat: dict[str, list[str]] = {}
    for q, pred in rows:
        clean = " ".join(pred.split())  # tabs and newlines would break the line format
        by_cat.setdefault(q.category, []).append(f"{q.image.name}\t{q.question}\t{q.answer}\t{clean}\n")
    paths = []
    for cat, lines in by_cat.items():
        p = folder / f"{cat}.txt"
        p.write_text("".join(lines), encoding="utf-8")
        paths.append(p)
    return paths


def mme_metrics(rows: Sequence[tuple[MMEQuestion, str]]) -> dict[str, Any]:
    """Per category acc, acc+ and score = 100 (acc + acc+); perception/cognition totals."""
    by_cat: dict[str, dict[str, list[bool]]] = {}
    for q, pred in rows:
        ok = mme_prediction(pred) == q.answer.strip().lower()
        by_cat.setdefault(q.category, {}).setdefault(str(q.image), []).append(ok)
    cats: dict[str, dict[str, float]] = {}
    for cat, per_image in sorted(by_cat.items()):
        answers = [ok for oks in per_image.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in per_image.values()) / len(per_image)
        cats[cat] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": 100 * (acc + acc_plus),
            "questions": len(answers),
            "images": len(per_image),
        }
    out: dict[str, Any] = {"categories": cats}
    for group, names in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [c for c in names if c in cats]
        if present:
            out[group] = sum(cats[c]["score"] for c in present)
    out["acc"] = sum(c["acc"] for c in cats.values()) / len(cats) if cats else 0.0
    out["acc_plus"] = sum(c["acc_plus"] for c in cats.values()) / len(cats) if cats else 0.0
    return out
