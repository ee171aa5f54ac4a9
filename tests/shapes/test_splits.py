"""The held-out compositions never appear in training data and always appear in held-out data."""

from __future__ import annotations

from openjanus.shapes import datasets, splits
from openjanus.shapes.spec import TAGS
from openjanus.shapes.tasks import HELDOUT_TAGS, benchmark_specs, sample_scene_in_split, sample_spec, scene_for_spec
from openjanus.shapes.world import ObjectRequest, make_scene, rng_for


def test_heldout_list_is_the_documented_one():
    assert ("red", "star") in splits.HELDOUT_COLOR_SHAPE and len(splits.HELDOUT_COLOR_SHAPE) == 6
    assert (3, "circle") in splits.HELDOUT_COUNT_SHAPE and len(splits.HELDOUT_COUNT_SHAPE) == 3
    assert frozenset({"square", "star"}) in splits.HELDOUT_PAIRS and len(splits.HELDOUT_PAIRS) == 2


def test_scene_reasons():
    rng = rng_for(0, 0)
    red_star = make_scene(rng, [ObjectRequest("star", "red")])
    assert splits.scene_heldout_reasons(red_star) == ["red star"]
    three = make_scene(rng, [ObjectRequest("circle", "blue")] * 3)
    assert splits.scene_heldout_reasons(three) == ["3 x circle"]
    pair = make_scene(rng, [ObjectRequest("square", "blue"), ObjectRequest("star", "blue")])
    assert splits.scene_heldout_reasons(pair) == ["square + star"]
    assert not splits.is_heldout_scene(make_scene(rng, [ObjectRequest("star", "blue")]))


def test_training_samples_never_contain_heldout_compositions():
    for i in range(400):
        assert not splits.is_heldout_scene(sample_scene_in_split(rng_for(5, i), "train", 64))
        assert splits.is_heldout_scene(sample_scene_in_split(rng_for(6, i), "heldout", 64))
    for i in range(150):
        tag = TAGS[i % len(TAGS)]
        spec = sample_spec(rng_for(7, i), tag, "train")
        assert not splits.spec_heldout_reasons(spec)
        scene = scene_for_spec(spec, rng_for(8, i), 64, "train")
        assert not splits.is_heldout_scene(scene)
    # The exported training kinds draw from the same samplers; check their text too.
    for i in range(200):
        rec = datasets.make_sample("t2i", 0, i, 64, "train").record
        held = {f"{c} {s}" for c, s in splits.HELDOUT_COLOR_SHAPE}
        assert not any(h in rec["caption"] for h in held), rec


def test_heldout_specs_and_benchmark_halves():
    for tag in HELDOUT_TAGS:
        for i in range(20):
            assert splits.spec_heldout_reasons(sample_spec(rng_for(9, i), tag, "heldout"))
    specs = benchmark_specs(per_category=6, seed=0)
    assert len(specs) == 6 * len(TAGS)
    for tag in HELDOUT_TAGS:
        mine = [s for s in specs if s.tag == tag]
        assert sum(bool(splits.spec_heldout_reasons(s)) for s in mine) == 3
    assert benchmark_specs(per_category=6, seed=0) == specs  # fixed by the seed


def test_shape_groups_differ_only_in_shape_and_stay_in_their_split():
    import pytest

    from openjanus.shapes.tasks import shape_group

    for i in range(40):
        for split in ("train", "heldout"):
            group = shape_group(rng_for(7, i), 4, split, 64)
            assert len(group) == 4
            assert all(splits.is_heldout_scene(s) == (split == "heldout") for s in group)
            layout = {tuple((o.color, o.center, o.size) for o in s.objects) + (s.background,) for s in group}
            assert len(layout) == 1
            for a in range(4):  # every object's shape differs between any two members
                for b in range(a + 1, 4):
                    assert all(x.shape != y.shape for x, y in zip(group[a].objects, group[b].objects))
    with pytest.raises(ValueError, match="2..6"):
        shape_group(rng_for(7, 0), 7)
