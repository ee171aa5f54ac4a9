"""Training curves as a standalone SVG: one panel per run, one line per logged loss (post-training
runs: panels of rewards, KL to the reference and held-out evaluation).

Reads the TensorBoard event files a run writes (`RUN/tensorboard/`), so it needs the `train`
extra (tensorboard) but no plotting library: the chart is plain SVG that browsers and GitHub show.

    openjanus train plot runs/demo/vq runs/demo/stage1 runs/demo/stage2 --out losses.svg
"""

from __future__ import annotations

import argparse
import html
import math
from pathlib import Path
from typing import Any

from openjanus.errors import UserError

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
PANEL_W, PANEL_H, PAD = 420, 240, 46


def read_scalars(run: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run folder (or of its `tensorboard/` subfolder)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise UserError("plotting reads TensorBoard logs: pip install 'openjanus[train]'") from None
    folder = Path(run)
    if (folder / "tensorboard").is_dir():
        folder = folder / "tensorboard"
    if not any(folder.glob("events.out.tfevents.*")):
        raise UserError(f"{run}: no TensorBoard event files")
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _loss_tags(series: dict[str, list[tuple[int, float]]]) -> list[str]:
    tags = sorted(t for t in series if t == "loss" or t.startswith("loss/") or t.endswith("/loss"))
    return tags or sorted(series)[:1]


# Post-training runs (`openjanus posttrain`): rewards, the KL to the reference, held-out evaluation.
POSTTRAIN_PANELS = (
    ("reward", ("reward", "correct", "reward/shapes", "reward/self")),
    ("KL to the reference", ("grpo/kl",)),
    ("DPO", ("dpo/loss", "reward/margin", "reward/accuracy")),
    ("GenEval (shapes) during training", ("eval/geneval/heldout", "eval/geneval/train")),
)


def _panels(title: str, series: dict[str, list[tuple[int, float]]]) -> list[tuple[str, list[str]]]:
    """(panel title, tags) of one run: its losses; for a post-training run its rewards, KL and
    held-out evaluation curves."""
    if "reward" not in series:
        return [(title, _loss_tags(series))]
    out = []
    for name, tags in POSTTRAIN_PANELS:
        present = [t for t in tags if t in series]
        if present and not (name == "DPO" and "reward/margin" not in series):
            out.append((f"{title}: {name}", present))
    return out


def _panel(title: str, series: dict[str, list[tuple[int, float]]], x0: float, y0: float,
           tags: list[str] | None = None) -> list[str]:
    tags = tags if tags is not None else _loss_tags(series)
    points = [p for t in tags for p in series[t] if math.isfinite(p[1])]
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    # One step or one value: widen the range around it, so a lone point sits in the middle.
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1
    if ymax == ymin:
        pad = abs(ymin) * 0.1 or 1.0
        ymin, ymax = ymin - pad, ymax + pad
    w, h = PANEL_W - 2 * PAD, PANEL_H - 2 * PAD

    def sx(x: float) -> float:
        return x0 + PAD + (x - xmin) / max(xmax - xmin, 1) * w

    def sy(y: float) -> float:
        return y0 + PAD + (1 - (y - ymin) / (ymax - ymin)) * h

    out = [f'<rect x="{x0 + PAD}" y="{y0 + PAD}" width="{w}" height="{h}" fill="none" stroke="#999"/>',
           f'<text x="{x0 + PANEL_W / 2}" y="{y0 + 22}" text-anchor="middle" font-weight="bold">'
           f'{html.escape(title)}</text>']
    for frac in (0, 0.5, 1):
        yv = ymin + frac * (ymax - ymin)
        out.append(f'<text x="{x0 + PAD - 4}" y="{sy(yv) + 4}" text-anchor="end" font-size="10">{yv:.3g}</text>')
        xv = xmin + frac * (xmax - xmin)
        out.append(f'<text x="{sx(xv)}" y="{y0 + PAD + h + 14}" text-anchor="middle" font-size="10">{int(xv)}</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{y0 + PANEL_H - 6}" text-anchor="middle" font-size="10">step</text>')
    for i, tag in enumerate(tags):
        finite = [(s, v) for s, v in series[tag] if math.isfinite(v)]
        pts = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in finite)
        color = COLORS[i % len(COLORS)]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        if len(finite) == 1:  # a line through one point draws nothing: mark the point
            (s, v), = finite
            out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{x0 + PAD + w - 4}" y="{y0 + PAD + 14 + 13 * i}" text-anchor="end" font-size="11" '
                   f'fill="{color}">{html.escape(tag)}</text>')
    return out


def plot_runs(runs: list[str | Path], out: str | Path, columns: int = 3) -> Path:
    """Write an SVG with the loss curves of each run (titled by folder name)."""
    if not runs:
        raise UserError("no runs to plot")
    panels = []
    for r in runs:
        series = read_scalars(r)
        panels += [(title, series, tags) for title, tags in _panels(Path(r).name, series)]
    cols = min(columns, len(panels))
    rows = math.ceil(len(panels) / cols)
    body: list[str] = []
    for k, (title, series, tags) in enumerate(panels):
        body += _panel(title, series, (k % cols) * PANEL_W, (k // cols) * PANEL_H, tags)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * PANEL_W}" height="{rows * PANEL_H}" '
           f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>'
           + "".join(body) + "</svg>\n")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    return path


def cmd_plot(args: argparse.Namespace) -> None:
    """Plot the training losses of one or more runs into an SVG file."""
    path = plot_runs(args.runs, args.out, args.columns)
    print(f"wrote {path}")


def register_plot(subparsers: Any) -> None:
    p = subparsers.add_parser("plot", help="plot the losses of training runs (SVG)")
    p.add_argument("runs", nargs="+", help="run folders (their tensorboard/ logs are read)")
    p.add_argument("--out", required=True, help="SVG file to write")
    p.add_argument("--columns", type=int, default=3)
    p.set_defaults(func=cmd_plot)
