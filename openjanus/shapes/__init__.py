"""The shapes world: a data domain that training and the benchmarks share (docs/shapes-world.md).

Scenes of flat coloured shapes sampled from a seed and drawn with PIL (``world``), their
captions and question-answer pairs (``text``), GenEval-style specs (``spec``), the fixed
held-out compositions (``splits``), per-category samplers (``tasks``), a non-neural scorer
(``scorer``) and how far it can be trusted (``scorer_accuracy``), and training datasets
(``datasets``). Nothing here runs a model: the benchmarks in `openjanus.eval` do.
"""

from openjanus.shapes.datasets import export_dataset, iter_samples, make_sample, read_dataset
from openjanus.shapes.scorer import Detection, SpecCheck, check_spec, degrade, detect, score_image
from openjanus.shapes.spec import TAGS, Requirement, Spec
from openjanus.shapes.splits import (
    HELDOUT_COLOR_SHAPE,
    HELDOUT_COUNT_SHAPE,
    HELDOUT_PAIRS,
    is_heldout_scene,
    spec_heldout_reasons,
)
from openjanus.shapes.tasks import benchmark_specs, sample_scene_in_split, sample_spec, scene_for_spec
from openjanus.shapes.text import QA, describe, scene_captions, scene_questions, score_answer
from openjanus.shapes.world import COLORS, SHAPES, Scene, SceneObject, render, rng_for, sample_scene

__all__ = [
    "COLORS",
    "HELDOUT_COLOR_SHAPE",
    "HELDOUT_COUNT_SHAPE",
    "HELDOUT_PAIRS",
    "QA",
    "SHAPES",
    "TAGS",
    "Detection",
    "Requirement",
    "Scene",
    "SceneObject",
    "Spec",
    "SpecCheck",
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
    "score_image",
    "rng_for",
    "sample_scene",
    "sample_scene_in_split",
    "sample_spec",
    "scene_captions",
    "scene_for_spec",
    "scene_questions",
    "score_answer",
    "spec_heldout_reasons",
]
