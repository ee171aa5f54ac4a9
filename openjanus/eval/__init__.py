"""Evaluation: the shapes world, its non-neural scorer, benchmark runners and dataset export.

See docs/shapes-world.md. Sub-modules: ``world`` (scenes, rendering), ``text`` (captions, QA),
``splits`` (held-out compositions), ``spec`` (GenEval records), ``tasks`` (samplers),
``scorer`` (detection, spec checking), ``formats`` (GenEval / POPE / MME files), ``runners``
(benchmarks), ``report`` (JSON + HTML), ``datasets`` (training data), ``commands`` (CLI).
"""

from openjanus.eval.datasets import export_dataset, iter_samples, make_sample, read_dataset
from openjanus.eval.runners import (
    GenerationSettings,
    Pipeline,
    WorldOracle,
    run_geneval,
    run_geneval_shapes,
    run_mme,
    run_pope,
    run_pope_shapes,
    score_geneval,
)
from openjanus.eval.scorer import Detection, SpecCheck, check_spec, degrade, detect, score_image
from openjanus.eval.spec import TAGS, Requirement, Spec
from openjanus.eval.splits import (
    HELDOUT_COLOR_SHAPE,
    HELDOUT_COUNT_SHAPE,
    HELDOUT_PAIRS,
    is_heldout_scene,
    spec_heldout_reasons,
)
from openjanus.eval.tasks import benchmark_specs, sample_scene_in_split, sample_spec, scene_for_spec
from openjanus.eval.text import QA, describe, scene_captions, scene_questions, score_answer
from openjanus.eval.world import COLORS, SHAPES, Scene, SceneObject, render, rng_for, sample_scene

__all__ = [
    "COLORS",
    "HELDOUT_COLOR_SHAPE",
    "HELDOUT_COUNT_SHAPE",
    "HELDOUT_PAIRS",
    "QA",
    "SHAPES",
    "TAGS",
    "Detection",
    "GenerationSettings",
    "Pipeline",
    "Requirement",
    "Scene",
    "SceneObject",
    "Spec",
    "SpecCheck",
    "WorldOracle",
    "benchmark_specs",
    "check_spec",
    "degrade",
    "describe",
    "detect",
    "export_dataset",
    "is_heldout_scene",
    "iter_samples",
    "make_sample",
    "read_dataset",
    "render",
    "rng_for",
    "run_geneval",
    "run_geneval_shapes",
    "run_mme",
    "run_pope",
    "run_pope_shapes",
    "sample_scene",
    "sample_scene_in_split",
    "sample_spec",
    "scene_captions",
    "scene_for_spec",
    "scene_questions",
    "score_answer",
    "score_geneval",
    "score_image",
    "spec_heldout_reasons",
]
