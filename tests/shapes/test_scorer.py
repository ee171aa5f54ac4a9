"""The shapes scorer: components, detection accuracy on true renders, and GenEval's rules."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pytest
from PIL import Image

from openjanus.shapes import scorer
from openjanus.shapes.scorer import Detection, check_spec, detect, label_components
from openjanus.shapes.scorer_accuracy import measure, wrong_scene
from openjanus.shapes.spec import TAGS, Requirement, Spec
from openjanus.shapes.tasks import sample_spec, scene_for_spec
from openjanus.shapes.world import render, rng_for


def _bfs_count(mask: np.ndarray) -> int:
    seen = np.zeros_like(mask)
    n = 0
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        n += 1
        q = deque([(y, x)])
        seen[y, x] = True
        while q:
            cy, cx = q.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        q.append((ny, nx))
    return n


def test_components_match_a_flood_fill():
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((40, 53)) < density
        labels, n = label_components(mask)
        assert n == _bfs_count(mask)
        assert ((labels >= 0) == mask).all()
    labels, n = label_components(np.zeros((5, 5), dtype=bool))
    assert n == 0


def test_clean_renders_are_scored_right_99_percent():
    n, right, exact = 300, 0, 0
    for i in range(n):
        rng = rng_for(11, i)
        spec = sample_spec(rng, TAGS[i % len(TAGS)], "any")
        scene = scene_for_spec(spec, rng, 64)
        dets = detect(render(scene))
        right += check_spec(dets, spec).correct
        exact += Counter((d.color, d.shape) for d in dets) == Counter((o.color, o.shape) for o in scene.objects)
    assert right / n >= 0.99
    assert exact / n >= 0.99


@pytest.mark.parametrize("size", [128, 384])
def test_larger_renders(size):
    for i in range(6):
        rng = rng_for(12, i)
        spec = sample_spec(rng, TAGS[i % len(TAGS)], "any")
        assert check_spec(detect(render(scene_for_spec(spec, rng, size))), spec).correct, spec.prompt


def test_wrong_images_are_rejected():
    accepted = 0
    for i in range(120):
        rng = rng_for(13, i)
        spec = sample_spec(rng, TAGS[i % len(TAGS)], "any")
        bad, _ = wrong_scene(spec, rng, 64)
        accepted += check_spec(detect(render(bad)), spec).correct
    assert accepted == 0


def test_blank_and_noise_images_have_no_objects():
    assert detect(Image.new("RGB", (64, 64), (245, 245, 245))) == []
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    assert all(d.shape is None for d in detect(Image.fromarray(noise)))


def test_measure_reports_all_conditions():
    r = measure(n=12, image_size=64, strengths=(0.5,), roundtrip=lambda im: im.copy())
    assert set(r["spec_accuracy"]) == {"clean", "degraded@0.5", "vq"}
    assert r["spec_accuracy"]["clean"] == 1.0 and r["spec_accuracy"]["vq"] == 1.0
    assert 0.0 <= r["false_accept_rate"] <= 1.0


def _det(shape, color, box):
    return Detection(shape, color, box, 100.0, 0.9)


def test_check_spec_follows_geneval_rules():
    two = Spec("counting", (Requirement("star", 2),), (Requirement("star", 3),))
    stars = [_det("star", "red", (0, 0, 10, 10)), _det("star", "blue", (20, 0, 30, 10))]
    assert check_spec(stars, two).correct
    assert not check_spec(stars + [_det("star", "red", (40, 0, 50, 10))], two).correct  # exclude
    assert not check_spec(stars[:1], two).correct
    red = Spec("colors", (Requirement("star", 1, "blue"),))
    assert check_spec(stars, red).correct  # any one of the right colour will do
    assert not check_spec(stars[:1], red).correct
    pos = Spec("position", (Requirement("circle"), Requirement("star", position=("right of", 0))))
    circle = _det("circle", "green", (0, 0, 10, 10))
    assert check_spec([circle, _det("star", "red", (30, 0, 40, 10))], pos).correct
    verdict = check_spec([circle, _det("star", "red", (0, 30, 10, 40))], pos)
    assert not verdict.correct and "right of" in verdict.reason
    # Extra objects of other classes are ignored, as in GenEval.
    assert check_spec([circle, _det("square", "red", (50, 50, 60, 60))], Spec("single_object", (Requirement("circle"),
                                                                                                ))).correct


def test_degrade_is_seeded():
    im = render(scene_for_spec(sample_spec(rng_for(0, 0), "colors", "any"), rng_for(0, 1), 64))
    a = scorer.degrade(im, rng_for(1, 0))
    b = scorer.degrade(im, rng_for(1, 0))
    assert a.tobytes() == b.tobytes() and a.size == im.size
