"""Evaluation: benchmark runners, the real benchmarks' file formats, reports and the CLI.

The shapes world the shapes benchmarks draw from (scenes, captions, specs, splits, the scorer,
training datasets) is its own package, `openjanus.shapes`, which training uses too. Sub-modules
here: ``formats`` (GenEval / POPE / MME files), ``runners`` (benchmarks), ``report`` (typed
reports, JSON + HTML), ``commands`` (CLI).
"""

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

__all__ = [
    "GenerationSettings",
    "Pipeline",
    "WorldOracle",
    "run_geneval",
    "run_geneval_shapes",
    "run_mme",
    "run_pope",
    "run_pope_shapes",
    "score_geneval",
]
