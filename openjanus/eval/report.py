"""Benchmark reports: a JSON file with the numbers and a self-contained HTML page to look at.

The HTML refers to image files by relative path (they sit next to it in the run folder), so a
run folder can be zipped, copied or served as is.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def write_html(path: str | Path, title: str, summary: Sequence[tuple[str, Any]], sections: Sequence[Section], **kw: Any) -> Path:
    """Write the page next to its images (paths relative to the page's folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(title, summary, sections, base=path.parent, **kw), encoding="utf-8")
    return path
