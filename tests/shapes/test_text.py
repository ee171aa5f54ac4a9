"""Captions in all GenEval categories, QA of every kind, and answer normalisation."""

from __future__ import annotations

from collections import Counter

from openjanus.shapes import text
from openjanus.shapes.spec import TAGS
from openjanus.shapes.tasks import sample_scene_in_split, sample_spec, scene_for_spec
from openjanus.shapes.world import rng_for, sample_scene


def test_every_category_has_captions_that_describe_the_scene():
    seen = Counter()
    for i in range(60):
        tag = TAGS[i % len(TAGS)]
        rng = rng_for(0, i)
        spec = sample_spec(rng, tag, "any")
        scene = scene_for_spec(spec, rng, 64)
        caps = text.scene_captions(scene)
        assert tag in caps, (tag, spec.prompt)
        assert spec.prompt in caps[tag] or tag in ("position",)
        assert caps["dense"] and caps["summary"]
        for variants in caps.values():
            assert len(set(variants)) == len(variants)
        seen.update(caps.keys())
    assert set(TAGS) <= set(seen)


def test_canonical_prompts_follow_geneval():
    rng = rng_for(0, 1)
    p = sample_spec(rng, "counting", "any").prompt
    assert p.startswith("a photo of ") and p.split()[3] in ("two", "three", "four")
    pos = sample_spec(rng, "position", "any")
    mover = pos.include[1]
    assert pos.prompt == f"a photo of a {mover.cls} {mover.position[0]} a {pos.include[0].cls}"


def test_question_kinds_and_answers():
    kinds = Counter()
    for i in range(80):
        scene = sample_scene(rng_for(1, i), 64)
        qas = text.scene_questions(scene, rng_for(2, i))
        assert len({q.question for q in qas}) == len(qas)
        for qa in qas:
            kinds[qa.kind] += 1
            if qa.kind == "presence":
                c, s = qa.question.removeprefix("is there ").split(" in ")[0].split()[1:]
                assert (qa.answer == "yes") == ((c, s) in scene.pairs)
            if qa.kind == "count" and "objects" not in qa.question:
                assert qa.answer in text.NUMBER_WORDS
            if qa.kind == "color":
                assert qa.answer in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black")
    assert set(text.QA_KINDS) <= set(kinds)


def test_pope_settings():
    scene = sample_scene_in_split(rng_for(0, 3), "any", 64, n_objects=3)
    present = scene.pairs
    popular = [("red", "circle"), ("blue", "square")] + [p for p in text.ALL_PAIRS]
    for setting in text.POPE_SETTINGS:
        neg = text.pope_negatives(scene, rng_for(0, 4), 3, setting, popular)
        assert len(neg) == 3 and not set(neg) & present
    adv = text.pope_negatives(scene, rng_for(0, 4), 3, "adversarial")
    colors, shapes = {c for c, _ in present}, {s for _, s in present}
    assert all(c in colors or s in shapes for c, s in adv)
    pop = text.pope_negatives(scene, rng_for(0, 4), 2, "popular", popular)
    assert pop == [p for p in popular if p not in present][:2]
    qs = text.pope_questions(scene, rng_for(0, 5), "random")
    assert Counter(q.answer for q in qs)["yes"] == Counter(q.answer for q in qs)["no"]


def test_mme_pairs_have_one_yes_and_one_no():
    for i in range(30):
        scene = sample_scene(rng_for(3, i), 64)
        pairs = text.mme_pairs(scene, rng_for(4, i))
        assert "existence" in pairs and "count" in pairs
        for yes, no in pairs.values():
            assert (yes.answer, no.answer) == ("yes", "no") and yes.question != no.question


def test_normalisation_and_scoring():
    assert text.normalize_answer("  Two.\nmore") == "two"
    assert text.normalize_answer("3") == "three"
    assert text.normalize_answer("The Red!") == "red"
    qa = text.QA("count", "how many stars are there?", "two")
    assert text.score_answer(qa, "2") == 1.0 and text.score_answer(qa, "three") == 0.0
    yes = text.QA("presence", "is there a red star in the image?", "yes")
    assert text.score_answer(yes, "Yes, there is.") == 1.0
    assert text.score_answer(yes, "No.") == 0.0


def test_description_score_is_f1_over_pairs():
    rng = rng_for(0, 7)
    spec = sample_spec(rng, "color_attr", "any")
    scene = scene_for_spec(spec, rng, 64)
    assert text.description_score(text.describe(scene), scene) == 1.0
    a, b = sorted(scene.pairs)
    assert text.description_score(f"a {a[0]} {a[1]}", scene) == 2 * 1 * 0.5 / 1.5
    assert text.description_score("nothing here", scene) == 0.0


def test_scene_questions_balance_yes_and_no():
    answers = Counter()
    for i in range(200):
        scene = sample_scene(rng_for(3, i), 64)
        for qa in text.scene_questions(scene, rng_for(4, i)):
            if qa.kind in ("presence", "position"):
                answers[qa.answer] += 1
    assert answers["yes"] == answers["no"]
