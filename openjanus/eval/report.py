"""Benchmark reports: typed results written to report.json, and a self-contained HTML page.

`GenerationReport` (GenEval-style generation) and `UnderstandingReport` (the shapes-world
POPE/MME-style understanding benchmark) carry every number a reader of the report needs, per
category and per split (training vs held-out compositions), so nothing downstream (the demo's
headline, the training hook) re-reads answer files to recompute them. The HTML refers to image
files by relative path (they sit next to it in the run folder), so a run folder can be zipped,
copied or served as is.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GenerationSplit:
    """GenEval's summary of the images of one split: per tag the fraction correct, overall
    their unweighted mean, and the images per tag."""

    overall: float
    categories: dict[str, float]
    images: dict[str, int]


@dataclass
class GenerationReport:
    """A GenEval-style generation run. Unscored runs (classes outside the shapes world) carry
    no scores: GenEval's own evaluate_images.py scores them."""

    benchmark: str
    prompts: int
    images: int
    settings: dict[str, Any] | None = None  # the GenerationSettings the images were made with
    weights: str | None = None  # the model and its weight format (`JanusPipeline.weights`)
    world: dict[str, Any] | None = None  # shapes benchmarks: held-out version, prompts per tag, seed
    scored: bool = True
    overall: float | None = None  # the unweighted mean of the categories
    categories: dict[str, float] = field(default_factory=dict)  # GenEval tag -> fraction correct
    images_per_category: dict[str, int] = field(default_factory=dict)
    prompts_all_correct: float | None = None  # prompts whose every image is correct
    by_split: dict[str, GenerationSplit] = field(default_factory=dict)  # "train" / "heldout"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report.json object (fields without a value left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != ""}


@dataclass
class PopeScores:
    """POPE's metrics of one question file (positive = 'yes')."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int
    n: int


@dataclass
class UnderstandingReport:
    """The shapes-world understanding benchmark: POPE in three settings, exact-match questions
    (count, color, shape, position), descriptions, and MME-style pairs beside them."""

    benchmark: str
    n_images: int
    seed: int
    image_size: int
    heldout_version: Any
    overall: float  # the unweighted mean of the categories
    categories: dict[str, float]  # pope_<setting> accuracy, question kinds' mean scores
    pope: dict[str, PopeScores]  # setting -> its metrics
    mme: dict[str, Any]  # MME's acc / acc+ / score per category (`formats.mme_metrics`)
    vqa_by_split: dict[str, dict[str, float]]  # split -> question kind -> mean score
    yes_no_by_split: dict[str, float]  # split -> accuracy on the POPE questions of its images
    questions: dict[str, int]
    describe_scoring: str
    weights: str = ""  # the model and its weight format (`JanusPipeline.weights`)

    def to_dict(self) -> dict[str, Any]:
        """The report.json object."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Card:
    """One cell of the page: images, a title, lines of text, and a pass/fail mark (None: no mark)."""

    images: tuple[Path, ...]
    title: str
    lines: tuple[str, ...] = ()
    ok: bool | None = None
    marks: tuple[bool | None, ...] = ()  # per image; empty: use ``ok`` for all


@dataclass
class Section:
    """A titled group of cards (one benchmark category)."""

    title: str
    cards: list[Card] = field(default_factory=list)
    note: str = ""


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table.summary{border-collapse:collapse} table.summary td{padding:2px 12px;border-bottom:1px solid #eee}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;width:min(100%,var(--w));font-size:12px}
.card.ok{background:#eefbea} .card.bad{background:#fdecec}
.card img{image-rendering:pixelated;width:var(--img);height:var(--img);border:3px solid transparent;margin:1px}
img.ok{border-color:#2a9d3a!important} img.bad{border-color:#d33!important}
.title{font-weight:600;margin-bottom:3px} .line{color:#555;white-space:pre-wrap}
.mark-ok{color:#2a9d3a;font-weight:700} .mark-bad{color:#d33;font-weight:700}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def render_html(
    title: str,
    summary: Sequence[tuple[str, Any]],
    sections: Sequence[Section],
    base: str | Path,
    image_px: int = 96,
    notes: Sequence[str] = (),
) -> str:
    """The page as a string; image paths are written relative to the folder ``base``."""
    base = Path(base)
    per_card = max(1, max((len(c.images) for s in sections for c in s.cards), default=1))
    width = max(220, min(4, per_card) * (image_px + 10) + 20)
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>",
        f"<body style='--img:{image_px}px;--w:{width}px'><h1>{html.escape(title)}</h1>",
    ]
    out += [f"<p>{html.escape(n)}</p>" for n in notes]
    out.append("<table class='summary'>")
    out += [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in summary]
    out.append("</table>")
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.note:
            out.append(f"<p>{html.escape(sec.note)}</p>")
        out.append("<div class='cards'>")
        for card in sec.cards:
            cls = "" if card.ok is None else (" ok" if card.ok else " bad")
            out.append(f"<div class='card{cls}'>")
            mark = "" if card.ok is None else (
                "<span class='mark-ok'>&#10003;</span> " if card.ok else "<span class='mark-bad'>&#10007;</span> "
            )
            out.append(f"<div class='title'>{mark}{html.escape(card.title)}</div>")
            for k, img in enumerate(card.images):
                m = card.marks[k] if k < len(card.marks) else card.ok
                icls = "" if m is None else ("ok" if m else "bad")
                rel = os.path.relpath(img, base).replace(os.sep, "/")
                out.append(f"<img class='{icls}' src='{html.escape(rel)}' loading='lazy'>")
            out += [f"<div class='line'>{html.escape(line)}</div>" for line in card.lines]
            out.append("</div>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_html(path: str | Path, title: str, summary: Sequence[tuple[str, Any]], sections: Sequence[Section],
               **kw: Any) -> Path:
    """Write the page next to its images (paths relative to the page's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, summary, sections, base=path.parent, **kw), encoding="utf-8")
    return path
