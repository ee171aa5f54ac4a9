"""The shipped demo model (openjanus/assets/janus-shapes) keeps its quality on a fixed subset.

The floors sit well below the measured full-benchmark figures (README), so sampling noise on a
small subset cannot fail the test, while a broken model, processor or engine (chance level:
generation 0, yes/no 0.5, counting ~0.2) cannot pass it.
"""

from __future__ import annotations

import pytest

from openjanus.pipeline import DEMO_MODEL_DIR, JanusPipeline

FLOORS = {"generation_overall": 0.35, "yes_no_accuracy": 0.75, "counting_accuracy": 0.4}


@pytest.fixture(scope="module")
def demo_pipeline():
    assert (DEMO_MODEL_DIR / "config.json").is_file(), "the demo model must ship with the package"
    return JanusPipeline.load(None, device="cpu", dtype="float32")


def test_default_model_is_the_demo_model(demo_pipeline):
    assert demo_pipeline.name == "janus-shapes"
    assert demo_pipeline.model.cfg.num_gen_tokens == 64


def test_demo_model_meets_its_floor(demo_pipeline, tmp_path):
    from openjanus.demo import headline_scores
    from openjanus.eval.runners import GenerationSettings, run_geneval_shapes, run_pope_shapes

    geneval = run_geneval_shapes(demo_pipeline, tmp_path / "g", per_category=4,
                                 settings=GenerationSettings(n_per_prompt=2, seed=0, batch_size=24))
    pope = run_pope_shapes(demo_pipeline, tmp_path / "p", n_images=16, seed=1, batch_size=32)
    scores = headline_scores(geneval, tmp_path / "p", pope)
    merged = {k: [scores[s][k] for s in ("train", "heldout") if scores[s][k] is not None] for k in FLOORS}
    for key, floor in FLOORS.items():
        value = sum(merged[key]) / len(merged[key])
        assert value >= floor, f"{key} {value:.3f} fell below its floor {floor}"
