"""The task registry: every task a stage can name has a spec whose model, objective and data
check fit together, and run assembly refuses data settings a task would ignore."""

from __future__ import annotations

import pytest
import torch

from openjanus.config import JanusConfig
from openjanus.distributed import DistInfo
from openjanus.errors import UserError
from openjanus.processing import standin_processor
from openjanus.train.config import TrainConfig
from openjanus.train.stages import TRAINING_TASKS, stage_from_name
from openjanus.train.tasks import TASKS, RunContext, task_spec

CFG = JanusConfig.from_name("tiny")


def _ctx(task: str, data: dict) -> RunContext:
    cfg = TrainConfig.from_dict({"output_dir": "unused", "model": {"preset": "tiny"}, "data": data})
    stage = stage_from_name("stage2" if task == "janus" else task)
    return RunContext(cfg, CFG, stage, standin_processor(CFG), DistInfo())


@pytest.mark.parametrize("task", TRAINING_TASKS)
def test_every_task_builds_its_model_and_objective(task) -> None:
    spec = task_spec(task)
    ctx = _ctx(task, {"source": "shapes"} if spec.reads_images else {})
    with torch.device("meta"):
        model = spec.build(ctx)
    assert spec.objective(model, ctx).task == task  # a stage of this task fits its objective
    assert spec.evaluates == (task == "janus")


def test_tasks_refuse_data_they_would_ignore() -> None:
    assert set(TASKS) == set(TRAINING_TASKS)
    with pytest.raises(UserError, match="reads only data.source, not num_workers"):
        task_spec("vq").check_data(_ctx("vq", {"source": "shapes", "num_workers": 0}).cfg.data)
    with pytest.raises(UserError, match="needs data.source"):
        task_spec("siglip").check_data(_ctx("siglip", {}).cfg.data)
    with pytest.raises(UserError, match="data.source feeds the vq and siglip tasks"):
        task_spec("janus").check_data(_ctx("janus", {"source": "shapes"}).cfg.data)
    with pytest.raises(UserError, match="unknown training task"):
        task_spec("diffusion")
