"""The shapes world: deterministic, resolution-free scenes that respect their layout rules."""

from __future__ import annotations

import numpy as np
import pytest

from openjanus.shapes import world
from openjanus.shapes.world import Scene, relations, render, rng_for, sample_scene


def test_same_seed_same_pixels_and_different_seeds_differ():
    a = render(sample_scene(rng_for(3, 0), 64))
    b = render(sample_scene(rng_for(3, 0), 64))
    c = render(sample_scene(rng_for(3, 1), 64))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("size", [64, 96, 128, 256, 384])
def test_any_size_renders(size):
    scene = sample_scene(rng_for(0, size), size)
    im = render(scene)
    assert im.size == (size, size) and im.mode == "RGB"
    # The same scene at another size keeps its objects: resolution-free coordinates.
    assert render(scene, 64).size == (64, 64)


def test_edges_are_anti_aliased():
    scene = world.make_scene(rng_for(0, 9), [world.ObjectRequest("circle", "black")], 64,
                             background=world.Background("plain", (250, 250, 250), (250, 250, 250), 0))
    px = np.asarray(render(scene)).reshape(-1, 3)
    values = {tuple(p) for p in px}
    # Plain background, one flat object: anything else is an edge blend.
    assert len(values) > 3


def test_layout_rules_hold():
    for i in range(300):
        scene = sample_scene(rng_for(1, i), 64)
        assert 1 <= len(scene.objects) <= world.MAX_OBJECTS
        assert len(world.SHAPES) >= 5 and len(world.COLORS) >= 8
        for k, a in enumerate(scene.objects):
            x0, y0, x1, y1 = a.box
            assert x0 >= world.MARGIN - 1e-9 and y0 >= world.MARGIN - 1e-9 and x1 <= 1 - world.MARGIN + 1e-9
            assert a.size >= world.SIZES["small"] * (1 - world.SIZE_JITTER) - 1e-9
            for b in scene.objects[k + 1 :]:
                gap = (a.size + b.size) / 2 + world.GAP
                assert abs(a.center[0] - b.center[0]) >= gap - 1e-9 or abs(a.center[1] - b.center[1]) >= gap - 1e-9


def test_scene_round_trips_through_json():
    scene = sample_scene(rng_for(2, 5), 96)
    again = Scene.from_dict(scene.to_dict())
    assert again == scene
    assert render(again).tobytes() == render(scene).tobytes()


def test_relations_follow_geneval_geometry():
    left, right = (0, 0, 10, 10), (30, 0, 40, 10)
    assert relations(left, right) == {"left of"}
    assert relations(right, left) == {"right of"}
    assert relations((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
    assert relations((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}
    assert relations((0, 0, 10, 10), (1, 1, 11, 11)) == set()
    assert world.clear_relation((0, 0, 10, 10), (30, 30, 40, 40)) is None


def test_with_shapes_keeps_everything_but_the_shapes():
    scene = sample_scene(rng_for(3, 0), 64, n_objects=2)
    other = world.with_shapes(scene, ["star", "cross"])
    assert [o.shape for o in other.objects] == ["star", "cross"]
    assert [(o.color, o.rgb, o.center, o.size) for o in other.objects] == \
        [(o.color, o.rgb, o.center, o.size) for o in scene.objects]
    assert other.background == scene.background
    with pytest.raises(ValueError, match="3 shapes for 2 objects"):
        world.with_shapes(scene, ["star", "cross", "circle"])
    with pytest.raises(ValueError, match="unknown shape"):
        world.with_shapes(scene, ["star", "hexagon"])
