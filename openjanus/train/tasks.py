"""The task registry: what each training task trains, from which weights, on which loss and data.

A stage names its task (`Stage.task`): the Janus stages train the whole model, the part tasks
pretrain one component on its own (the VQ tokenizer, the SigLIP encoder, the LLM on text).
Everything that differs between them is one `TaskSpec` here, so assembling a run
(`openjanus.train.run`) looks the task up instead of asking which task it is:

=======  ===================  ====================  ============================================
task     model                objective             data
=======  ===================  ====================  ============================================
janus    Janus                JanusObjective        packed und/text/gen rows, the stage's mix
vq       VQModel              VQObjective           images (manifests, folders, or "shapes")
siglip   SigLIPPair           SigLIPObjective       image-caption pairs
text     LLM                  TextObjective         packed text rows
=======  ===================  ====================  ============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from openjanus.checkpoints import load_model
from openjanus.checkpoints.weights import load_part, load_part_into, part_config
from openjanus.config import ConfigError, JanusConfig
from openjanus.distributed import DistInfo
from openjanus.errors import UserError
from openjanus.model.janus import Janus
from openjanus.model.llm import LLM
from openjanus.model.vq import VQModel
from openjanus.processing import JanusProcessor
from openjanus.train.config import TrainConfig
from openjanus.train.data import DataConfig
from openjanus.train.image_data import PartDataStream
from openjanus.train.objectives import JanusObjective, Objective, TextObjective
from openjanus.train.siglip import SigLIPObjective, SigLIPPair
from openjanus.train.stages import TRAINING_TASKS, Stage
from openjanus.train.stream import build_train_stream
from openjanus.train.vq_objective import VQObjective


@dataclass(frozen=True)
class RunContext:
    """What a task's builders read: the config, the model config, the stage, the tokenizer and
    image settings, and which process this is."""

    cfg: TrainConfig
    model_cfg: JanusConfig
    stage: Stage
    processor: JanusProcessor
    dist_info: DistInfo


@dataclass(frozen=True)
class TaskSpec:
    """One training task. `build` makes the model's structure (random weights, or empty under
    the meta device); `initial` makes the starting model of a fresh run on the CPU (a preset's
    random weights seeded from the config, a checkpoint, pretrained parts)."""

    name: str
    build: Callable[[RunContext], nn.Module]
    initial: Callable[[RunContext], nn.Module]
    objective: Callable[[nn.Module, RunContext], Objective]
    data: Callable[[RunContext, nn.Module], Iterable[Any]]
    evaluates: bool = False  # whether the shapes benchmarks can run on its model (eval.benchmarks)
    reads_images: bool = False  # data.source (images, captions) rather than the packed und/text/gen sources

    def check_data(self, data: DataConfig) -> None:
        """Refuse data settings this task would ignore (before any model is built)."""
        if self.reads_images:
            ignored = [name for name in data.given() if name != "source"]
            if ignored:
                raise UserError(f"data: the {self.name} task reads only data.source, not {', '.join(ignored)}")
            if not data.source:
                raise UserError(f"the {self.name} task needs data.source: JSONL manifests (files, globs, folders), "
                                f"a folder of images, or 'shapes'")
        elif data.source is not None:
            raise UserError(f"data.source feeds the vq and siglip tasks; the {self.name} task reads data.und, "
                            f"data.text and data.gen")


# --- models and their starting weights --------------------------------------------------------


def _build_janus(ctx: RunContext) -> nn.Module:
    return Janus(ctx.model_cfg)


def _build_vq(ctx: RunContext) -> nn.Module:
    return VQModel(ctx.model_cfg.vq)


def _build_llm(ctx: RunContext) -> nn.Module:
    return LLM(ctx.model_cfg.llm)


def _build_siglip(ctx: RunContext) -> nn.Module:
    parts = ctx.cfg.parts
    return SigLIPPair(ctx.model_cfg.vision, vocab_size=ctx.processor.tokenizer.vocab_size,
                      text_layers=parts.text_tower_layers, caption_len=parts.caption_len)


# A checkpoint folder (official/HF layout, or one of our training checkpoints to start a new
# stage from), else the preset's random weights with the pretrained parts loaded over them.
def _initial_janus(ctx: RunContext) -> nn.Module:
    src = ctx.cfg.model
    if src.checkpoint is not None:
        return load_model(src.checkpoint, device="cpu", dtype=torch.float32)
    torch.manual_seed(ctx.cfg.seed)
    model = Janus(ctx.model_cfg)
    for part, folder in src.parts.items():
        load_part_into(model, part, folder)
    return model


def _initial_part(build: Callable[[RunContext], nn.Module], part: str,
                  module_of: Callable[[nn.Module], nn.Module] = lambda m: m) -> Callable[[RunContext], nn.Module]:
    """Random weights seeded from the config; the part loaded from model.checkpoint (any folder
    holding it) or model.parts[part] when given. `module_of` finds the part in the model."""

    def initial(ctx: RunContext) -> nn.Module:
        torch.manual_seed(ctx.cfg.seed)
        model = build(ctx)
        source = ctx.cfg.model.checkpoint or ctx.cfg.model.parts.get(part)
        if source is not None:
            load_part(module_of(model), part, part_config(ctx.model_cfg, part), source)
        return model

    return initial


# --- data ---------------------------------------------------------------------------------------


def _packed_stream(ctx: RunContext, ratio: tuple[float, float, float], vq: VQModel | None) -> Iterable[Any]:
    cfg, dist_info = ctx.cfg, ctx.dist_info
    try:
        return build_train_stream(cfg.data, ctx.processor, ctx.model_cfg, seq_len=cfg.seq_len,
                                  batch_rows=cfg.micro_batch_rows, ratio=ratio, seed=cfg.seed, rank=dist_info.rank,
                                  world_size=dist_info.world_size, vq=vq)
    except ConfigError as e:
        raise UserError(f"data: {e}") from None


def _janus_data(ctx: RunContext, model: nn.Module) -> Iterable[Any]:
    # Text-to-image records that name raw images are encoded by the frozen VQ on the fly.
    return _packed_stream(ctx, ctx.stage.data_ratio, vq=model.gen_tokenizer)


def _text_data(ctx: RunContext, model: nn.Module) -> Iterable[Any]:
    return _packed_stream(ctx, (0.0, 1.0, 0.0), vq=None)


def _image_data(task: str, image_size: Callable[[JanusConfig], int]) -> Callable[[RunContext, nn.Module],
                                                                                 Iterable[Any]]:
    """Image (and caption) batches of the VQ and SigLIP tasks, from data.source."""

    def data(ctx: RunContext, model: nn.Module) -> Iterable[Any]:
        cfg, dist_info = ctx.cfg, ctx.dist_info
        source = cfg.data.source
        return PartDataStream(task, source if isinstance(source, list) else str(source), rows=cfg.micro_batch_rows,
                              image_size=image_size(ctx.model_cfg), seed=cfg.seed, rank=dist_info.rank,
                              world_size=dist_info.world_size, tokenizer=ctx.processor.tokenizer,
                              caption_len=cfg.parts.caption_len, image_config=ctx.processor.image_config,
                              shape_groups=cfg.parts.siglip_shape_groups)

    return data


# --- the registry ---------------------------------------------------------------------------------


def _vq_objective(model: nn.Module, ctx: RunContext) -> Objective:
    return VQObjective(model, recon_loss=ctx.cfg.parts.vq_recon_loss, restart_every=ctx.cfg.parts.vq_restart_every)


TASKS: dict[str, TaskSpec] = {
    "janus": TaskSpec(
        name="janus", build=_build_janus, initial=_initial_janus,
        objective=lambda model, ctx: JanusObjective(model), data=_janus_data, evaluates=True,
    ),
    "vq": TaskSpec(
        name="vq", build=_build_vq, initial=_initial_part(_build_vq, "vq"),
        objective=_vq_objective, data=_image_data("vq", lambda c: c.vq.image_size), reads_images=True,
    ),
    "siglip": TaskSpec(
        name="siglip", build=_build_siglip, initial=_initial_part(_build_siglip, "siglip", lambda m: m.und_encoder),
        objective=lambda model, ctx: SigLIPObjective(model),
        data=_image_data("siglip", lambda c: c.vision.image_size), reads_images=True,
    ),
    "text": TaskSpec(
        name="text", build=_build_llm, initial=_initial_part(_build_llm, "llm"),
        objective=lambda model, ctx: TextObjective(model), data=_text_data,
    ),
}
assert tuple(TASKS) == TRAINING_TASKS, "every task a stage can name has a spec"


def task_spec(name: str) -> TaskSpec:
    """The spec of a training task (a stage's `task`)."""
    if name not in TASKS:
        raise UserError(f"unknown training task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "TaskSpec", "RunContext", "task_spec"]
