"""Sampling specs and scenes per GenEval category and split: the shared source of the training
datasets and of the benchmarks.

Split ``"train"`` never yields a held-out composition (see :mod:`openjanus.shapes.splits`);
``"heldout"`` always yields at least one; ``"any"`` yields either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from openjanus.shapes.spec import TAGS, Requirement, Spec
from openjanus.shapes.splits import is_heldout_scene, request_heldout, spec_heldout_reasons
from openjanus.shapes.text import with_prompt
from openjanus.shapes.world import (
    COLOR_NAMES,
    MAX_OBJECTS,
    RELATIONS,
    SHAPES,
    ObjectRequest,
    Scene,
    make_scene,
    rng_for,
    with_shapes,
)

SPLIT_CHOICES: tuple[str, ...] = ("train", "heldout", "any")
# single_object has no composition to hold out.
HELDOUT_TAGS: tuple[str, ...] = ("two_object", "counting", "colors", "position", "color_attr")
MAX_TRIES = 1000


def _check_split(split: str) -> None:
    if split not in SPLIT_CHOICES:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_CHOICES)}")


def _pick(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _random_spec(rng: np.random.Generator, tag: str) -> Spec:
    if tag == "single_object":
        return Spec(tag, (Requirement(_pick(rng, SHAPES)),))
    if tag == "colors":
        return Spec(tag, (Requirement(_pick(rng, SHAPES), color=_pick(rng, COLOR_NAMES)),))
    if tag == "counting":
        s, n = _pick(rng, SHAPES), int(rng.integers(2, MAX_OBJECTS + 1))
        return Spec(tag, (Requirement(s, n),), (Requirement(s, n + 1),))
    a, b = (SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False))
    if tag == "two_object":
        return Spec(tag, (Requirement(a), Requirement(b)))
    if tag == "position":
        return Spec(tag, (Requirement(b), Requirement(a, position=(_pick(rng, RELATIONS), 0))))
    if tag == "color_attr":
        ca, cb = (COLOR_NAMES[i] for i in rng.choice(len(COLOR_NAMES), size=2, replace=False))
        return Spec(tag, (Requirement(a, color=ca), Requirement(b, color=cb)))
    raise ValueError(f"unknown tag {tag!r}; tags are {', '.join(TAGS)}")


def sample_spec(rng: np.random.Generator, tag: str, split: str = "train") -> Spec:
    """A random spec of one category, with its canonical prompt, from the given split."""
    _check_split(split)
    if split == "heldout" and tag not in HELDOUT_TAGS:
        raise ValueError(f"category {tag!r} has no held-out compositions")
    for _ in range(MAX_TRIES):
        spec = _random_spec(rng, tag)
        held = bool(spec_heldout_reasons(spec))
        if split == "any" or held == (split == "heldout"):
            return with_prompt(spec)
    raise RuntimeError(f"no {split} spec found for {tag!r}")  # unreachable with the fixed lists


def spec_requests(spec: Spec, rng: np.random.Generator,
                  split: str = "train") -> tuple[list[ObjectRequest], tuple[int, str, int] | None]:
    """Objects (and a relation) that realise a spec exactly; free colours respect the split.

    For 'train' the free colours never complete a held-out composition; otherwise they are
    uniform. The spec itself must already belong to the split.
    """
    _check_split(split)
    for _ in range(MAX_TRIES):
        reqs: list[ObjectRequest] = []
        starts: list[int] = []
        for r in spec.include:
            starts.append(len(reqs))
            reqs += [ObjectRequest(r.cls, r.color or _pick(rng, COLOR_NAMES)) for _ in range(r.count)]
        if split != "train" or not request_heldout((q.color, q.shape) for q in reqs):
            break
    else:
        raise ValueError(f"spec {spec.prompt!r} cannot be drawn from the train split")
    if not 1 <= len(reqs) <= MAX_OBJECTS:
        raise ValueError(f"spec {spec.prompt!r} needs {len(reqs)} objects; the world draws 1 to {MAX_OBJECTS}")
    relation = None
    for k, r in enumerate(spec.include):
        if r.position is not None:
            if r.count != 1 or spec.include[r.position[1]].count != 1:
                raise ValueError(f"spec {spec.prompt!r}: positions are drawn for single objects only")
            relation = (starts[k], r.position[0], starts[r.position[1]])
    return reqs, relation


def scene_for_spec(spec: Spec, rng: np.random.Generator, image_size: int = 64, split: str = "any") -> Scene:
    """A scene that satisfies the spec exactly: the objects it asks for and nothing else."""
    reqs, relation = spec_requests(spec, rng, split)
    return make_scene(rng, reqs, image_size=image_size, relation=relation)


def sample_scene_in_split(
    rng: np.random.Generator, split: str = "train", image_size: int = 64, n_objects: int | None = None
) -> Scene:
    """A scene of 1..4 random objects (``n_objects`` if given) belonging to the split."""
    _check_split(split)
    for _ in range(MAX_TRIES):
        n = n_objects or int(rng.integers(1, MAX_OBJECTS + 1))
        reqs = [ObjectRequest(_pick(rng, SHAPES), _pick(rng, COLOR_NAMES)) for _ in range(n)]
        held = request_heldout((q.color, q.shape) for q in reqs)
        if split == "any" or held == (split == "heldout"):
            return make_scene(rng, reqs, image_size=image_size)
    raise RuntimeError(f"no {split} scene of {n_objects} objects found")


# T2I training mix: the six GenEval categories plus free scenes of 3..4 mixed objects, which
# only the summary and dense captions describe.
T2I_MIX: dict[str, float] = {
    "single_object": 0.12,
    "two_object": 0.14,
    "counting": 0.14,
    "colors": 0.14,
    "position": 0.16,
    "color_attr": 0.16,
    "free": 0.14,
}


def shape_group(rng: np.random.Generator, k: int, split: str = "train", image_size: int = 64) -> list[Scene]:
    """``k`` (2..6) scenes that are one scene but for their shapes: between any two of them every
    object's shape differs (each member shifts all shapes by its own offset around SHAPES), while
    boxes, colours and background stay. All belong to ``split``. Contrastive hard negatives:
    told apart by shape alone."""
    _check_split(split)
    if not 2 <= k <= len(SHAPES):
        raise ValueError(f"a shape group has 2..{len(SHAPES)} scenes, not {k}")
    for _ in range(MAX_TRIES):
        base = sample_scene_in_split(rng, split, image_size)
        idx = [SHAPES.index(o.shape) for o in base.objects]
        group = []
        for offset in rng.permutation(len(SHAPES)):
            scene = with_shapes(base, [SHAPES[(i + int(offset)) % len(SHAPES)] for i in idx])
            if split == "any" or is_heldout_scene(scene) == (split == "heldout"):
                group.append(scene)
                if len(group) == k:
                    return group
    raise RuntimeError(f"no {split} shape group of {k} found")  # unreachable with the fixed lists


def sample_t2i_scene(rng: np.random.Generator, split: str = "train", image_size: int = 64) -> tuple[str, Spec | None,
                                                                                                    Scene]:
    """(category, spec or None for 'free', scene) drawn from :data:`T2I_MIX`."""
    names = list(T2I_MIX)
    tag = names[int(rng.choice(len(names), p=np.array(list(T2I_MIX.values())) / sum(T2I_MIX.values())))]
    if tag == "free":
        return tag, None, sample_scene_in_split(rng, split, image_size, n_objects=int(rng.integers(3, MAX_OBJECTS + 1)))
    if split == "heldout" and tag not in HELDOUT_TAGS:
        tag = HELDOUT_TAGS[int(rng.integers(len(HELDOUT_TAGS)))]
    spec = sample_spec(rng, tag, split)
    return tag, spec, scene_for_spec(spec, rng, image_size, split)


def benchmark_specs(per_category: int = 8, seed: int = 0, tags: Sequence[str] = TAGS) -> list[Spec]:
    """The geneval-shapes prompt set: ``per_category`` specs per tag, distinct where possible.

    Categories with held-out compositions take half (rounded up) of their prompts from the
    held-out split and the rest from the training compositions; single_object cycles through
    the shapes.
    """
    out: list[Spec] = []
    for t, tag in enumerate(tags):
        if tag not in TAGS:
            raise ValueError(f"unknown tag {tag!r}; tags are {', '.join(TAGS)}")
        rng = rng_for(seed, 101, t)
        if tag == "single_object":
            out += [with_prompt(Spec(tag, (Requirement(SHAPES[k % len(SHAPES)]),))) for k in range(per_category)]
            continue
        n_held = (per_category + 1) // 2
        seen: set[str] = set()
        for k in range(per_category):
            split = "heldout" if k < n_held else "train"
            spec = sample_spec(rng, tag, split)
            for _ in range(50):  # prefer prompts not yet in the set
                if spec.prompt not in seen:
                    break
                spec = sample_spec(rng, tag, split)
            seen.add(spec.prompt)
            out.append(spec)
    return out
