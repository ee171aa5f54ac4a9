"""The fixed held-out compositions of the shapes world (also documented in docs/shapes-world.md).

Training data never contains any of these; the benchmarks ask for them, so a score measures
generalisation to new combinations of known parts rather than memory. Each part (every shape,
every colour, every count 1..4) is seen in training; only these combinations are not.

Held-out colour-shape pairs (no training scene has an object of this colour and shape)::

    red star, blue triangle, green circle, yellow diamond, purple square, orange cross

Held-out counts (no training scene has exactly this many objects of this shape, whatever
their colours)::

    three circles, four triangles, two diamonds

Held-out co-occurrences (no training scene has both shapes at once)::

    square + star, triangle + cross

A scene, or a GenEval spec, is *held out* when it contains at least one of these. Changing this
list changes every dataset and benchmark: treat it as frozen (bump ``HELDOUT_VERSION`` if not).
"""

from __future__ import annotations

from collections.abc import Iterable

from openjanus.shapes.spec import Spec
from openjanus.shapes.world import Scene

HELDOUT_VERSION = 1

HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "star"),
        ("blue", "triangle"),
        ("green", "circle"),
        ("yellow", "diamond"),
        ("purple", "square"),
        ("orange", "cross"),
    }
)
HELDOUT_COUNT_SHAPE: frozenset[tuple[int, str]] = frozenset({(3, "circle"), (4, "triangle"), (2, "diamond")})
HELDOUT_PAIRS: frozenset[frozenset[str]] = frozenset(
    {frozenset({"square", "star"}), frozenset({"triangle", "cross"})}
)

SPLITS: tuple[str, ...] = ("train", "heldout")


def _reasons(pairs: Iterable[tuple[str, str]], counts: dict[str, int], shapes: set[str]) -> list[str]:
    out = [f"{c} {s}" for c, s in sorted(set(pairs)) if (c, s) in HELDOUT_COLOR_SHAPE]
    out += [f"{n} x {s}" for s, n in sorted(counts.items()) if (n, s) in HELDOUT_COUNT_SHAPE]
    out += [" + ".join(sorted(p)) for p in sorted(HELDOUT_PAIRS, key=sorted) if p <= shapes]
    return out


def scene_heldout_reasons(scene: Scene) -> list[str]:
    """The held-out compositions a scene contains (empty: the scene may appear in training)."""
    counts: dict[str, int] = {}
    for o in scene.objects:
        counts[o.shape] = counts.get(o.shape, 0) + 1
    return _reasons(scene.pairs, counts, scene.shapes)


def is_heldout_scene(scene: Scene) -> bool:
    """True when the scene contains a held-out composition."""
    return bool(scene_heldout_reasons(scene))


def request_heldout(objects: Iterable[tuple[str, str]]) -> bool:
    """Held-out test on planned (colour, shape) objects, before any layout is drawn."""
    objs = list(objects)
    counts: dict[str, int] = {}
    for _, s in objs:
        counts[s] = counts.get(s, 0) + 1
    return bool(_reasons(objs, counts, {s for _, s in objs}))


def spec_heldout_reasons(spec: Spec) -> list[str]:
    """The held-out compositions a GenEval spec asks for.

    A count is taken as exact when an ``exclude`` entry caps it at count + 1, as counting
    prompts do.
    """
    pairs = [(r.color, r.cls) for r in spec.include if r.color is not None]
    caps = {r.cls: r.count for r in spec.exclude}
    counts = {r.cls: r.count for r in spec.include if caps.get(r.cls) == r.count + 1}
    return _reasons(pairs, counts, {r.cls for r in spec.include})  # type: ignore[arg-type]


def split_of_scene(scene: Scene) -> str:
    """'heldout' if the scene contains a held-out composition, else 'train'."""
    return "heldout" if is_heldout_scene(scene) else "train"
