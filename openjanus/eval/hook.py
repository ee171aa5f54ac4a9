"""The evaluation hook of a training run: shapes-world benchmarks on the model being trained.

`openjanus train` passes `benchmark_eval_hook` to `openjanus.train.run.run_training`, so a
config's eval.benchmarks run here while training itself never imports the evaluation package.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from openjanus.errors import UserError
from openjanus.eval import runners
from openjanus.inference.pipeline import JanusPipeline
from openjanus.processing import JanusProcessor
from openjanus.train.trainer import EvalHook

# Benchmarks of `openjanus.eval.runners` that need no downloaded data (the shapes world).
BENCHMARKS = ("geneval_shapes", "pope_shapes")


def benchmark_eval_hook(benchmarks: list[str], options: dict[str, Any], processor: JanusProcessor,
                        output_dir: str | Path) -> EvalHook:
    """An evaluation hook running shapes-world benchmarks of `openjanus.eval` on the model in
    training, through a `JanusPipeline`; reports go to OUTPUT/eval/step_N/<benchmark>/.

    `options[name]` are keyword arguments of the runner (for geneval_shapes, the fields of
    `GenerationSettings` too, e.g. n_per_prompt); the hook returns each benchmark's overall
    score and its categories.
    """
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown:
        raise UserError(f"eval.benchmarks: unknown {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    def hook(model: nn.Module, step: int) -> dict[str, float]:
        # One pipeline per evaluation, closed when it is done: its engine's threads and KV cache
        # go, and nothing keeps the model (under FSDP2 the gathered full one) past the evaluation.
        with JanusPipeline(model, processor, name=f"step {step}") as pipe:  # type: ignore[arg-type]
            return _evaluate(pipe, step)

    def _evaluate(pipe: JanusPipeline, step: int) -> dict[str, float]:
        results: dict[str, float] = {}
        for name in benchmarks:
            opts = dict(options.get(name, {}))
            out = Path(output_dir) / "eval" / f"step_{step:08d}" / name
            if out.exists():  # a resumed run evaluates the same step again
                shutil.rmtree(out)
            if name == "geneval_shapes":
                fields = {f.name for f in dataclasses.fields(runners.GenerationSettings)}
                settings = runners.GenerationSettings(**{k: opts.pop(k) for k in list(opts) if k in fields})
                report = runners.run_geneval_shapes(pipe, out, settings=settings, **opts)
            else:
                report = runners.run_pope_shapes(pipe, out, **opts)
            if report.overall is not None:
                results[f"{name}/overall"] = float(report.overall)
            results.update({f"{name}/{k}": float(v) for k, v in report.categories.items()})
        return results

    return hook


__all__ = ["BENCHMARKS", "benchmark_eval_hook"]
