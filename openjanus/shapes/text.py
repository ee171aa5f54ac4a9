"""Text of the shapes world: captions in GenEval's six categories, dense descriptions, and
question-answer pairs for understanding, plus the answer normalisation the scorers use.

The vocabulary is small and regular on purpose (the demo model's BPE is trained on it): shape
and colour names, size words, number words ``zero``..``four``, the four GenEval relations and
a few region words. All text is lower case.

Answers are short and exact-matchable after :func:`normalize_answer`: ``yes``/``no``, a number
*word* (digits in a model's answer are accepted and mapped to words), a colour word, a shape
word. The open description is scored by :func:`description_score` (see there).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from openjanus.shapes.spec import Requirement, Spec
from openjanus.shapes.world import (
    COLOR_NAMES,
    INVERSE_RELATION,
    SHAPES,
    Scene,
    SceneObject,
    article,
    clear_relation,
    plural,
)

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PREFIXES: tuple[str, ...] = ("a photo of ", "an image of ", "a picture of ", "")
CANONICAL_PREFIX = "a photo of "  # GenEval's own template
QA_KINDS: tuple[str, ...] = ("presence", "count", "color", "shape", "position", "describe")
POPE_SETTINGS: tuple[str, ...] = ("random", "popular", "adversarial")


def _a(words: str) -> str:
    return f"{article(words)} {words}"


def _thing(shape: str, color: str | None = None) -> str:
    return f"{color} {shape}" if color else shape


# --------------------------------------------------------------------------------------------
# Captions


def spec_body(spec: Spec, variant: int = 0) -> str:
    """The prompt of a shapes spec without its prefix; ``variant`` picks a phrasing (cycled)."""
    inc = spec.include
    if spec.tag == "counting":
        r = inc[0]
        n = NUMBER_WORDS[r.count]
        forms = [f"{n} {plural(r.cls)}", f"exactly {n} {plural(r.cls)}"]
        return forms[variant % len(forms)]
    if spec.tag == "position":
        target, mover = inc[0], inc[1]
        assert mover.position is not None
        rel = mover.position[0]
        a, b = _a(_thing(mover.cls, mover.color)), _a(_thing(target.cls, target.color))
        forms = [f"{a} {rel} {b}", f"{b} {INVERSE_RELATION[rel]} {a}"]
        return forms[variant % len(forms)]
    things = [_a(_thing(r.cls, r.color)) for r in inc]
    if len(things) == 1:
        forms = [things[0], "one " + things[0].split(" ", 1)[1]]
        return forms[variant % len(forms)]
    forms = [" and ".join(things), " and ".join(reversed(things)), f"{things[0]} with {things[1]}"]
    return forms[variant % len(forms)]


def canonical_prompt(spec: Spec) -> str:
    """GenEval's phrasing: 'a photo of ' + the first body form."""
    return CANONICAL_PREFIX + spec_body(spec, 0)


def caption_variants(spec: Spec) -> list[str]:
    """Every phrasing of a spec's caption (prefixes x body forms), canonical first."""
    bodies = []
    for v in range(3):
        b = spec_body(spec, v)
        if b not in bodies:
            bodies.append(b)
    return [p + b for b in bodies for p in PREFIXES]


def scene_specs(scene: Scene) -> list[Spec]:
    """The GenEval-style specs that describe the scene *exactly* (nothing else in the picture).

    A one-object scene is 'single_object' and 'colors'; two objects of different shapes are
    'two_object', 'color_attr' and, if one relation clearly holds, 'position'; 2..4 objects of
    one shape are 'counting'. Other scenes get only the dense description.
    """
    objs = scene.objects
    out: list[Spec] = []
    if len(objs) == 1:
        o = objs[0]
        out.append(Spec("single_object", (Requirement(o.shape),)))
        out.append(Spec("colors", (Requirement(o.shape, color=o.color),)))
    shapes = {o.shape for o in objs}
    if len(objs) >= 2 and len(shapes) == 1:
        s, n = objs[0].shape, len(objs)
        out.append(Spec("counting", (Requirement(s, n),), (Requirement(s, n + 1),)))
    if len(objs) == 2 and len(shapes) == 2:
        a, b = objs
        out.append(Spec("two_object", (Requirement(a.shape), Requirement(b.shape))))
        out.append(Spec("color_attr", (Requirement(a.shape, color=a.color), Requirement(b.shape, color=b.color))))
        rel = clear_relation(a.box, b.box)
        if rel is not None:
            out.append(Spec("position", (Requirement(b.shape), Requirement(a.shape, position=(rel, 0)))))
    return [with_prompt(s) for s in out]


def with_prompt(spec: Spec) -> Spec:
    """The spec with its canonical prompt filled in."""
    return Spec(spec.tag, spec.include, spec.exclude, canonical_prompt(spec))


REGIONS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the center", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)


def region(obj: SceneObject) -> str:
    """Where an object sits on a 3x3 grid, as words."""
    col = min(int(obj.center[0] * 3), 2)
    row = min(int(obj.center[1] * 3), 2)
    return REGIONS[row][col]


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """The dense description: every object with size, colour, shape and region, left to right."""
    objs = sorted(scene.objects, key=lambda o: (o.center[0], o.center[1]))
    return _join([f"{_a(f'{o.size_name} {o.color} {o.shape}')} {region(o)}" for o in objs])


def summary(scene: Scene) -> str:
    """A short inventory: 'two red circles and a blue star' (groups by colour and shape)."""
    groups: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        groups[(o.color, o.shape)] = groups.get((o.color, o.shape), 0) + 1
    parts = []
    for (c, s), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        parts.append(_a(f"{c} {s}") if n == 1 else f"{NUMBER_WORDS[n]} {c} {plural(s)}")
    return _join(parts)


def scene_captions(scene: Scene) -> dict[str, list[str]]:
    """Every caption that is true of the scene, by category ('dense' and 'summary' always)."""
    out = {s.tag: caption_variants(s) for s in scene_specs(scene)}
    out["summary"] = [p + summary(scene) for p in PREFIXES]
    out["dense"] = [describe(scene)]
    return out


# --------------------------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class QA:
    """One question with its exact answer; ``setting`` is the POPE sampling for presence questions."""

    kind: str
    question: str
    answer: str
    setting: str | None = None


def presence_question(color: str, shape: str) -> str:
    """POPE's question, for a coloured shape."""
    return f"is there {_a(f'{color} {shape}')} in the image?"


ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for s in SHAPES for c in COLOR_NAMES)


def pope_negatives(
    scene: Scene,
    rng: np.random.Generator,
    n: int,
    setting: str,
    popularity: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """Absent (colour, shape) pairs chosen by one of POPE's three negative-sampling settings.

    random: uniform over absent pairs. popular: the most frequent pairs of the benchmark's scenes
    (``popularity``, most frequent first) that are absent here. adversarial: the world's analogue
    of POPE's co-occurring objects, hardest first: a colour and a shape both in the picture but
    not together (binding errors), then a present shape in another colour, then a present colour
    on another shape.
    """
    present = scene.pairs
    absent = [p for p in ALL_PAIRS if p not in present]
    if setting == "random":
        idx = rng.permutation(len(absent))[:n]
        return [absent[i] for i in idx]
    if setting == "popular":
        ranked = [p for p in popularity if p not in present]
        ranked += [p for p in absent if p not in ranked]
        return ranked[:n]
    if setting == "adversarial":
        colors = {c for c, _ in present}
        shapes = {s for _, s in present}
        tiers = [
            [p for p in absent if p[0] in colors and p[1] in shapes],
            [p for p in absent if p[1] in shapes and p[0] not in colors],
            [p for p in absent if p[0] in colors and p[1] not in shapes],
            [p for p in absent if p[0] not in colors and p[1] not in shapes],
        ]
        out: list[tuple[str, str]] = []
        for tier in tiers:
            for i in rng.permutation(len(tier)):
                if len(out) == n:
                    return out
                out.append(tier[i])
        return out[:n]
    raise ValueError(f"unknown POPE setting {setting!r}; settings are {', '.join(POPE_SETTINGS)}")


def pope_questions(
    scene: Scene,
    rng: np.random.Generator,
    setting: str,
    per_image: int = 3,
    popularity: Sequence[tuple[str, str]] = (),
) -> list[QA]:
    """Balanced presence questions: up to ``per_image`` present pairs, as many absent ones."""
    present = sorted(scene.pairs)
    pos = [present[i] for i in rng.permutation(len(present))[:per_image]]
    neg = pope_negatives(scene, rng, len(pos), setting, popularity)
    qas = [QA("presence", presence_question(c, s), "yes", setting) for c, s in pos]
    qas += [QA("presence", presence_question(c, s), "no", setting) for c, s in neg]
    order = rng.permutation(len(qas))
    return [qas[i] for i in order]


def _refs(scene: Scene) -> list[tuple[SceneObject, str]]:
    """Objects that words can single out, with the shortest phrase that does ('the star')."""
    out = []
    for o in scene.objects:
        if scene.count(o.shape) == 1:
            out.append((o, o.shape))
        elif scene.count(o.shape, o.color) == 1:
            out.append((o, f"{o.color} {o.shape}"))
    return out


def count_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """'how many circles are there?' for each present shape, one absent shape, and colour groups."""
    qas = [
        QA("count", f"how many {plural(s)} are there?", NUMBER_WORDS[scene.count(s)]) for s in sorted(scene.shapes)
    ]
    absent = [s for s in SHAPES if s not in scene.shapes]
    if absent:
        s = absent[int(rng.integers(len(absent)))]
        qas.append(QA("count", f"how many {plural(s)} are there?", "zero"))
    for c, s in sorted(scene.pairs):
        if scene.count(s) > 1:
            qas.append(QA("count", f"how many {c} {plural(s)} are there?", NUMBER_WORDS[scene.count(s, c)]))
    qas.append(QA("count", "how many objects are there?", NUMBER_WORDS[len(scene.objects)]))
    return qas


def color_questions(scene: Scene) -> list[QA]:
    """'what color is the star?' for shapes that occur once."""
    return [
        QA("color", f"what color is the {o.shape}?", o.color) for o in scene.objects if scene.count(o.shape) == 1
    ]


def shape_questions(scene: Scene) -> list[QA]:
    """'what shape is the red object?' for colours that occur once."""
    out = []
    for o in scene.objects:
        if sum(1 for p in scene.objects if p.color == o.color) == 1:
            out.append(QA("shape", f"what shape is the {o.color} object?", o.shape))
    return out


def position_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """'is the star left of the red circle?': for each clear pair, one true and one false form."""
    refs = _refs(scene)
    out = []
    for i, (a, ra) in enumerate(refs):
        for b, rb in refs[i + 1 :]:
            rel = clear_relation(a.box, b.box)
            if rel is None:
                continue
            subj, obj = ra, rb
            if rng.random() < 0.5:  # either object can be the subject
                subj, obj, rel = rb, ra, INVERSE_RELATION[rel]
            out.append(QA("position", f"is the {subj} {rel} the {obj}?", "yes"))
            out.append(QA("position", f"is the {subj} {INVERSE_RELATION[rel]} the {obj}?", "no"))
    return out


DESCRIBE_QUESTIONS: tuple[str, ...] = ("describe the image.", "what is in the image?")


def describe_question(scene: Scene, variant: int = 0) -> QA:
    """The open question; its reference answer is the dense description."""
    return QA("describe", DESCRIBE_QUESTIONS[variant % len(DESCRIBE_QUESTIONS)], describe(scene))


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Every question kind for a scene (presence with random and adversarial negatives, as many
    negatives as positives)."""
    qas = pope_questions(scene, rng, "random") + pope_questions(scene, rng, "adversarial")
    qas += count_questions(scene, rng) + color_questions(scene) + shape_questions(scene)
    qas += position_questions(scene, rng)
    qas.append(describe_question(scene, int(rng.integers(len(DESCRIBE_QUESTIONS)))))
    unique: dict[str, QA] = {}
    for qa in qas:  # the two presence sets share their positive questions
        unique.setdefault(qa.question, qa)
    # After that merge, negatives outnumber positives about 2:1; keep as many of them as there
    # are positives, so a model trained on these questions learns no "no" prior.
    present = [qa for qa in unique.values() if qa.kind == "presence" and qa.answer == "yes"]
    absent = [qa for qa in unique.values() if qa.kind == "presence" and qa.answer == "no"]
    if len(absent) > len(present):
        keep = {absent[i].question for i in rng.choice(len(absent), size=len(present), replace=False)}
        return [qa for qa in unique.values() if qa.kind != "presence" or qa.answer == "yes" or qa.question in keep]
    return list(unique.values())


MME_CATEGORIES: tuple[str, ...] = ("existence", "count", "position", "color")


def mme_pairs(scene: Scene, rng: np.random.Generator) -> dict[str, tuple[QA, QA]]:
    """MME-style paired questions per category: the same image asked once for 'yes', once for 'no'.

    Categories without a well-posed pair for this scene (no uniquely named pair of objects for
    'position', ...) are left out.
    """
    out: dict[str, tuple[QA, QA]] = {}
    c, s = sorted(scene.pairs)[int(rng.integers(len(scene.pairs)))]
    neg = pope_negatives(scene, rng, 1, "adversarial")[0]
    out["existence"] = (
        QA("presence", presence_question(c, s), "yes"),
        QA("presence", presence_question(*neg), "no"),
    )
    s = sorted(scene.shapes)[int(rng.integers(len(scene.shapes)))]
    n = scene.count(s)
    options = [k for k in (n - 1, n + 1) if 1 <= k <= 4]
    wrong = options[int(rng.integers(len(options)))]

    def are_there(k: int) -> str:
        return f"is there {_a(s)} in the image?" if k == 1 else f"are there {NUMBER_WORDS[k]} {plural(s)} in the image?"

    out["count"] = (QA("count", are_there(n), "yes"), QA("count", are_there(wrong), "no"))
    pos = position_questions(scene, rng)
    if pos:
        k = 2 * int(rng.integers(len(pos) // 2))
        out["position"] = (pos[k], pos[k + 1])
    singles = [o for o in scene.objects if scene.count(o.shape) == 1]
    if singles:
        o = singles[int(rng.integers(len(singles)))]
        others = [x for x in COLOR_NAMES if x != o.color]
        other = others[int(rng.integers(len(others)))]
        out["color"] = (
            QA("color", f"is the {o.shape} {o.color}?", "yes"),
            QA("color", f"is the {o.shape} {other}?", "no"),
        )
    return out


# --------------------------------------------------------------------------------------------
# Answer normalisation and scoring

_WORD_RE = re.compile(r"[a-z0-9]+")
_DIGITS = {str(i): w for i, w in enumerate(NUMBER_WORDS)}


def normalize_answer(text: str) -> str:
    """Lower case, first line, words only, digits as number words, no leading article."""
    text = text.strip().lower().split("\n", 1)[0]
    words = [_DIGITS.get(w, w) for w in _WORD_RE.findall(text)]
    while words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def description_pairs(text: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a text mentions as 'colour [size] shape' (plurals too)."""
    words = normalize_answer(text).split()
    singular = {v: k for k, v in {s: plural(s) for s in SHAPES}.items()}
    found = set()
    for i, w in enumerate(words):
        shape = w if w in SHAPES else singular.get(w)
        if shape is None:
            continue
        for back in (1, 2):  # allow one size word between colour and shape
            if i - back >= 0 and words[i - back] in COLOR_NAMES:
                found.add((words[i - back], shape))
                break
    return found


def description_score(answer: str, scene: Scene) -> float:
    """Lenient score of an open description: F1 between the scene's distinct (colour, shape)
    pairs and those the answer names; counts, sizes and places are not checked."""
    truth, said = scene.pairs, description_pairs(answer)
    hit = len(truth & said)
    if hit == 0:
        return 0.0
    p, r = hit / len(said), hit / len(truth)
    return 2 * p * r / (p + r)


def pope_label(answer: str) -> str:
    """How POPE reads a free answer: first sentence, commas dropped; 'no' if it has the word
    'No', 'no' or 'not', else 'yes'."""
    first = answer.split(".", 1)[0].replace(",", "")
    words = first.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def score_answer(qa: QA, answer: str, scene: Scene | None = None) -> float:
    """1.0 / 0.0 for a short answer (yes/no read POPE's way, others exact after normalisation);
    the description score for 'describe' (needs the scene)."""
    if qa.kind == "describe":
        if scene is None:
            raise ValueError("scoring a description needs its scene")
        return description_score(answer, scene)
    if qa.answer in ("yes", "no"):
        return float(pope_label(answer) == qa.answer)
    return float(normalize_answer(answer) == qa.answer)
