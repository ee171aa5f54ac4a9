"""How far the shapes scorer can be trusted: accuracy on true images, clean and degraded, and
how often it accepts an image that breaks the spec.

For each of N specs (the six GenEval categories in turn, training and held-out compositions
alike) a scene that satisfies the spec exactly is rendered and scored:

* ``clean`` -- the render itself;
* ``degraded@s`` -- the render after :func:`openjanus.shapes.scorer.degrade` at strength s
  (down/up-sampling, blur, colour shift and noise, JPEG);
* ``vq`` -- the render after a real VQ encode/decode, when a round-trip function is given.

Each reports spec accuracy (the verdict is 'correct') and scene accuracy (the detected
multiset of (colour, shape) equals the truth exactly). The false-accept rate renders, for the
same specs, a scene wrong in exactly one attribute (another shape, colour, count, relation
or binding) and counts how often the scorer still says 'correct'; the same is counted for
random smooth-noise images (what an untrained generator draws).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from openjanus.shapes.scorer import check_spec, degrade, detect
from openjanus.shapes.spec import TAGS, Requirement, Spec
from openjanus.shapes.tasks import sample_spec, scene_for_spec
from openjanus.shapes.world import (
    COLOR_NAMES,
    INVERSE_RELATION,
    MAX_OBJECTS,
    SHAPES,
    ObjectRequest,
    Scene,
    make_scene,
    render,
    rng_for,
    with_background,
)

RoundTrip = Callable[[Image.Image], Image.Image]


def _other(rng: np.random.Generator, choices: Sequence[str], not_in: set[str]) -> str:
    options = [c for c in choices if c not in not_in]
    return options[int(rng.integers(len(options)))]


def wrong_scene(spec: Spec, rng: np.random.Generator, image_size: int) -> tuple[Scene, str]:
    """A scene that violates the spec in exactly one attribute, and which attribute."""
    inc = list(spec.include)
    if spec.tag in ("single_object", "two_object"):
        k = int(rng.integers(len(inc)))
        inc[k] = Requirement(_other(rng, SHAPES, {r.cls for r in inc}), inc[k].count, inc[k].color)
        bad = Spec(spec.tag, tuple(inc))
        return scene_for_spec(bad, rng, image_size), "shape"
    if spec.tag == "counting":
        n = inc[0].count
        options = [m for m in (n - 1, n + 1) if 1 <= m <= MAX_OBJECTS]
        m = options[int(rng.integers(len(options)))]
        return scene_for_spec(Spec(spec.tag, (Requirement(inc[0].cls, m),)), rng, image_size), "count"
    if spec.tag == "colors":
        r = inc[0]
        bad = Spec(spec.tag, (Requirement(r.cls, 1, _other(rng, COLOR_NAMES, {str(r.color)})),))
        return scene_for_spec(bad, rng, image_size), "color"
    if spec.tag == "position":
        target, mover = inc
        assert mover.position is not None
        rel = INVERSE_RELATION[mover.position[0]]
        reqs = [ObjectRequest(target.cls, _other(rng, COLOR_NAMES, set())),
                ObjectRequest(mover.cls, _other(rng, COLOR_NAMES, set()))]
        return make_scene(rng, reqs, image_size, relation=(1, rel, 0)), "position"
    if spec.tag == "color_attr":
        a, b = inc
        if rng.random() < 0.5:  # binding error: the two colours swapped
            reqs = [ObjectRequest(a.cls, str(b.color)), ObjectRequest(b.cls, str(a.color))]
            return make_scene(rng, reqs, image_size), "binding"
        other = _other(rng, COLOR_NAMES, {str(a.color), str(b.color)})
        reqs = [ObjectRequest(a.cls, other), ObjectRequest(b.cls, str(b.color))]
        return make_scene(rng, reqs, image_size), "color"
    raise ValueError(f"no wrong scene for tag {spec.tag!r}")


def noise_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth random colour fields plus pixel noise: what an untrained generator draws."""
    k = int(rng.integers(3, 9))
    coarse = rng.integers(0, 256, size=(k, k, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, float(rng.uniform(0, 30)), size=(size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _exact(dets: Sequence[Any], scene: Scene) -> bool:
    got = Counter((d.color, d.shape) for d in dets)
    return got == Counter((o.color, o.shape) for o in scene.objects)


def measure(
    n: int = 300,
    image_size: int = 64,
    strengths: Sequence[float] = (0.5, 1.0),
    seed: int = 0,
    roundtrip: RoundTrip | None = None,
    log: Callable[[str], None] = lambda _: None,
    background: str | None = None,
) -> dict[str, Any]:
    """Run the measurement over ``n`` specs; returns a JSON-ready dict of rates and failures.

    ``background`` renders every scene on that background kind (default: the world's random mix).
    """
    conditions: list[tuple[str, Callable[[Image.Image, np.random.Generator], Image.Image]]] = [
        ("clean", lambda im, r: im)
    ]
    for s in strengths:
        conditions.append((f"degraded@{s:g}", lambda im, r, s=s: degrade(im, r, s)))
    if roundtrip is not None:
        conditions.append(("vq", lambda im, r: roundtrip(im)))
    spec_ok = Counter[str]()
    scene_ok = Counter[str]()
    per_tag: dict[str, Counter[str]] = {c: Counter() for c, _ in conditions}
    failures: dict[str, list[dict[str, Any]]] = {c: [] for c, _ in conditions}
    false_accept = Counter[str]()
    wrong_total = Counter[str]()
    noise_accept = 0
    t0 = time.perf_counter()
    for i in range(n):
        tag = TAGS[i % len(TAGS)]
        rng = rng_for(seed, 401, i)
        spec = sample_spec(rng, tag, "any")
        scene = with_background(scene_for_spec(spec, rng, image_size, "any"), background)
        truth = render(scene)
        for name, f in conditions:
            im = f(truth, rng_for(seed, 402, i, len(name)))
            dets = detect(im)
            verdict = check_spec(dets, spec)
            spec_ok[name] += verdict.correct
            per_tag[name][tag] += verdict.correct
            exact = _exact(dets, scene)
            scene_ok[name] += exact
            if not verdict.correct and len(failures[name]) < 20:
                failures[name].append({"index": i, "prompt": spec.prompt, "reason": verdict.reason})
        noise_accept += check_spec(detect(noise_image(rng, image_size)), spec).correct
        bad_scene, attr = wrong_scene(spec, rng, image_size)
        wrong_total[attr] += 1
        false_accept[attr] += check_spec(detect(render(bad_scene)), spec).correct
        if (i + 1) % 100 == 0:
            log(f"{i + 1}/{n} specs")
    counts = Counter(TAGS[i % len(TAGS)] for i in range(n))
    return {
        "n": n,
        "image_size": image_size,
        "seed": seed,
        "background": background or "mixed",
        "spec_accuracy": {c: spec_ok[c] / n for c, _ in conditions},
        "scene_accuracy": {c: scene_ok[c] / n for c, _ in conditions},
        "spec_accuracy_by_tag": {c: {t: per_tag[c][t] / counts[t] for t in TAGS if counts[t]} for c, _ in conditions},
        "false_accept_rate": sum(false_accept.values()) / max(sum(wrong_total.values()), 1),
        "false_accept_by_attribute": {a: false_accept[a] / wrong_total[a] for a in sorted(wrong_total)},
        "false_accept_rate_noise": noise_accept / n,
        "failures": {c: f for c, f in failures.items() if f},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def vq_roundtrip(pipeline: Any) -> RoundTrip:
    """A round trip through a pipeline's VQ tokenizer (``encode_images`` then ``decode_tokens``).

    The image comes back at the tokenizer's resolution and is resized to the input size.
    """
    if not (hasattr(pipeline, "encode_images") and hasattr(pipeline, "decode_tokens")):
        raise TypeError("the pipeline has no encode_images/decode_tokens pair for a VQ round trip")

    def rt(im: Image.Image) -> Image.Image:
        codes = pipeline.encode_images([im])
        out = pipeline.decode_tokens(codes.reshape(1, -1))[0]
        return out.resize(im.size, Image.Resampling.BICUBIC) if out.size != im.size else out

    return rt


def format_table(result: dict[str, Any]) -> str:
    """Plain-text summary of :func:`measure`'s result."""
    lines = [f"scorer accuracy on {result['n']} specs at {result['image_size']} px (seed {result['seed']})"]
    lines.append(f"{'condition':<16}{'spec acc':>10}{'scene acc':>11}")
    for c, v in result["spec_accuracy"].items():
        lines.append(f"{c:<16}{v:>10.4f}{result['scene_accuracy'][c]:>11.4f}")
    lines.append(f"false-accept rate on wrong images: {result['false_accept_rate']:.4f}  "
                 + ", ".join(f"{a} {v:.3f}" for a, v in result["false_accept_by_attribute"].items()))
    lines.append(f"false-accept rate on random-noise images: {result['false_accept_rate_noise']:.4f}")
    return "\n".join(lines)
