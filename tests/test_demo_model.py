"""The shipped demo model (openjanus/assets/janus-shapes) keeps its quality on a fixed subset.

Floors sit at about half of what the model scores on this subset (measured when v2 was
shipped: generation overall 0.417, colour questions 0.393, counting 0.707), so a later change
that breaks the model, the processor or the engine (random weights score 0 on generation and
~0.1 on colour and shape questions) fails the test, while the scores the model really has pass
it. Yes/no questions (POPE random: 0.857 measured) get a floor of 0.7, above the 0.5 that a model
answering one word to everything scores.
"""

from __future__ import annotations

import pytest

from openjanus.inference.pipeline import DEMO_MODEL_DIR, JanusPipeline

FLOORS = {"generation_overall": 0.21, "color": 0.2, "count": 0.35, "pope_random": 0.7}


@pytest.fixture(scope="module")
def demo_pipeline():
    assert (DEMO_MODEL_DIR / "config.json").is_file(), "the demo model must ship with the package"
    return JanusPipeline.load(None, device="cpu", dtype="float32")


def test_default_model_is_the_demo_model(demo_pipeline):
    assert demo_pipeline.name == "janus-shapes"
    assert demo_pipeline.model.cfg.num_gen_tokens == 64


def test_demo_model_meets_its_floor(demo_pipeline, tmp_path):
    from openjanus.eval.runners import GenerationSettings, run_geneval_shapes, run_pope_shapes

    geneval = run_geneval_shapes(demo_pipeline, tmp_path / "g", per_category=4,
                                 settings=GenerationSettings(n_per_prompt=2, seed=0, batch_size=24))
    pope = run_pope_shapes(demo_pipeline, tmp_path / "p", n_images=16, seed=1, batch_size=32)
    measured = {"generation_overall": geneval.overall, **pope.categories}
    for key, floor in FLOORS.items():
        assert measured[key] >= floor, f"{key} {measured[key]:.3f} fell below its floor {floor}"
