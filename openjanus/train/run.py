"""Assemble a training run from a `TrainConfig` and run it: what `openjanus train CONFIG` does,
under torchrun as well. Read top to bottom, `run_training` is the whole recipe; the task
registry (`openjanus.train.tasks`) supplies what differs between tasks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from openjanus.config import ConfigError, JanusConfig
from openjanus.devices import resolve_device
from openjanus.distributed import DistInfo, destroy, env_dist_info, init_distributed
from openjanus.errors import UserError
from openjanus.processing import JanusProcessor, save_tokenizer_dir, standin_processor
from openjanus.train.checkpoint import (
    TrainState,
    list_checkpoints,
    load_model_state,
    read_model_tensors,
    read_train_state,
)
from openjanus.train.config import TrainConfig, check_model_config
from openjanus.train.logs import require_tensorboard
from openjanus.train.parallel import shard_model
from openjanus.train.stages import Stage
from openjanus.train.tasks import RunContext, task_spec
from openjanus.train.trainer import EvalHook, LoopSettings, Trainer, apply_stage

# Makes the evaluation hook of a run that asks for eval.benchmarks (`openjanus.eval.hook`,
# passed in by the CLI, so that training does not depend on the evaluation package):
# (benchmarks, options, processor, output_dir) -> hook.
EvalHookFactory = Callable[[list[str], dict[str, Any], JanusProcessor, Path], EvalHook]


def run_training(cfg: TrainConfig, resume: str | bool | None = None, eval_hook: EvalHook | None = None,
                 log: Callable[[str], None] | None = None, eval_hooks: EvalHookFactory | None = None) -> TrainState:
    """Build everything a TrainConfig describes and train. `resume`: True (or "latest") for the
    newest checkpoint in output_dir, or a checkpoint folder. Works under torchrun."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if cfg.tensorboard:
        require_tensorboard()  # now, not at the first log step after the work
    device = resolve_device(cfg.device, local_rank=env_dist_info().local_rank)
    owns_group = not (dist.is_available() and dist.is_initialized())
    dist_info = init_distributed(device, cfg.dist_timeout_minutes)
    main_log = log if dist_info.is_main else (lambda line: None)
    finished = False
    try:
        stage, notes = cfg.stage.build_with_notes()
        for note in notes:
            main_log(f"note: {note}")
        spec = task_spec(stage.task)
        spec.check_data(cfg.data)
        model_cfg = cfg.build_model_config()
        if cfg.lora is not None:
            _check_lora(cfg, spec.name, model_cfg)
        try:
            check_model_config(model_cfg, cfg.seq_len, spec.name)
        except ConfigError as e:
            raise UserError(str(e)) from None
        out = Path(cfg.output_dir)
        ckpt = _resume_target(out, resume)
        processor = _load_processor(cfg, model_cfg, main_log)
        tokenizer_dir = _keep_tokenizer(cfg, processor, out, dist_info.is_main)
        grad_accum = derive_grad_accum(stage.global_batch, cfg.micro_batch_rows, dist_info.world_size)
        ctx = RunContext(cfg, model_cfg, stage, processor, dist_info)
        if eval_hook is None and cfg.eval.every and cfg.eval.benchmarks:
            if not spec.evaluates:
                raise UserError(f"eval.benchmarks run Janus models; the {spec.name!r} task has none to evaluate")
            if eval_hooks is None:
                raise UserError("eval.benchmarks need the evaluation package: run through `openjanus train`")
            eval_hook = eval_hooks(cfg.eval.benchmarks, cfg.eval.options, processor, out)

        # Rank 0 makes the initial weights; with several processes the others build an empty
        # skeleton, shard it, and receive their shards from rank 0 (no full copy per process).
        # A resumed run takes all weights from its checkpoint, so every process starts empty.
        fresh = ckpt is None
        if fresh and (not dist_info.distributed or dist_info.is_main):
            model = spec.initial(ctx)
        else:
            with torch.device("meta"):
                model = spec.build(ctx)
        objective = spec.objective(model, ctx)
        counts = apply_stage(objective, stage)
        if cfg.lora is not None:
            counts = _add_lora(objective, cfg, main_log)
        if cfg.activation_checkpointing:
            objective.enable_activation_checkpointing()
        if cfg.compile:
            for unit in objective.compile_units():
                unit.compile()
        autocast = autocast_dtype(cfg.dtype, device)
        _place(objective, device, autocast, dist_info, fresh)
        if not fresh:
            # The weights first: the data stream copies the (frozen) VQ to encode raw images.
            _check_compatible(ckpt, spec.name, model_cfg, stage, main_log)
            load_model_state(objective, read_model_tensors(ckpt) if dist_info.is_main else {}, dist_info)
        data = spec.data(ctx, objective.model)

        meta = {"task": spec.name, "stage": stage.to_dict(), "model_config": model_cfg.to_dict(),
                "train_config": cfg.to_dict()}
        settings = LoopSettings(grad_accum=grad_accum, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                                keep_last=cfg.keep_last, output_dir=out, eval_every=cfg.eval.every,
                                autocast_dtype=autocast, stop_at=cfg.stop_at, progress_bar=cfg.progress_bar,
                                tensorboard=cfg.tensorboard, export_on_finish=True,
                                tokenizer_dir=tokenizer_dir, meta=meta)
        trainer = Trainer(objective, stage, data, settings, device=device, dist_info=dist_info,
                          eval_hook=eval_hook, log=main_log)
        if ckpt is not None:
            trainer.resume(ckpt, include_model=False)
            main_log(f"resumed from {ckpt} at step {trainer.state.step}")
        main_log(f"{stage.name} ({spec.name}): {counts['trainable']:,} trainable / {counts['frozen']:,} frozen "
                 f"parameters; {dist_info.world_size} process(es) x {cfg.micro_batch_rows} rows x {grad_accum} "
                 f"accumulation = global batch {stage.global_batch}; device {device}, "
                 f"{'bf16 autocast' if autocast else 'fp32'}")
        state = trainer.fit()
        finished = True
        return state
    finally:
        if owns_group:
            destroy(wait_for_all=finished)


def _check_lora(cfg: TrainConfig, task: str, model_cfg: JanusConfig) -> None:
    """Before any weights: LoRA adapts Janus models, and its targets must match something."""
    from openjanus.model.janus import Janus
    from openjanus.train.lora import resolve_targets

    if task != "janus":
        raise UserError(f"lora: adapters train on Janus stages, not the {task!r} task")
    with torch.device("meta"):
        skeleton = Janus(model_cfg)
    resolve_targets(skeleton, cfg.lora.targets)  # type: ignore[union-attr]


def _add_lora(objective: nn.Module, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, int]:
    """Freeze the stage's model and inject the adapters (peft); the new element counts."""
    from openjanus.train.lora import add_lora

    add_lora(objective.model, cfg.lora, log=log)
    counts = {"trainable": 0, "frozen": 0}
    for p in objective.model.parameters():
        counts["trainable" if p.requires_grad else "frozen"] += p.numel()
    return counts


def _place(objective: nn.Module, device: torch.device, autocast: torch.dtype | None, dist_info: DistInfo,
           fresh: bool) -> None:
    """Move the objective to the device; with several processes, shard it (FSDP2) first and
    send rank 0's initial weights into every process's shards. A resumed run's weights come
    from its checkpoint afterwards, so its parameters are only allocated here."""
    if dist_info.distributed:
        initial = dict(objective.model.state_dict()) if fresh and dist_info.is_main else {}
        shard_model(objective, objective.shard_units(), device, param_dtype=autocast if device.type == "cuda" else None)
        objective.to_empty(device=device)
        if fresh:
            load_model_state(objective, initial, dist_info)
    elif fresh:
        objective.to(device)
    else:
        objective.to_empty(device=device)


def derive_grad_accum(global_batch: int, micro_batch_rows: int, world_size: int) -> int:
    """global_batch = micro_batch_rows x grad_accum x world_size, exactly."""
    per_step = micro_batch_rows * world_size
    if global_batch % per_step:
        raise UserError(f"the stage's global batch {global_batch} is not a multiple of micro_batch_rows "
                        f"{micro_batch_rows} x {world_size} process(es) = {per_step}; change stage.global_batch "
                        f"or micro_batch_rows")
    return global_batch // per_step


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run's `dtype` setting: bf16 when asked, or "auto" on a GPU; None
    runs in the parameters' dtype (fp32)."""
    if name in ("bfloat16", "bf16") or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# model.tokenizer; else the starting checkpoint's folder when it holds a tokenizer; for one of
# our training checkpoints, the tokenizer its run used.
def _tokenizer_dir(cfg: TrainConfig) -> str | None:
    if cfg.model.tokenizer is not None or cfg.model.checkpoint is None:
        return cfg.model.tokenizer
    folder = Path(cfg.model.checkpoint)
    if (folder / "tokenizer.json").is_file():
        return str(folder)
    if (folder / "train_state.json").is_file():
        source = (read_train_state(folder).get("train_config") or {}).get("model", {})
        for candidate in (source.get("tokenizer"), str(folder.parent.parent / "tokenizer")):
            if candidate and (Path(candidate) / "tokenizer.json").is_file():
                return candidate
    return None


# The tokenizer and image settings of the run (`_tokenizer_dir`), else the presets' small
# stand-in tokenizer (for experiments only).
def _load_processor(cfg: TrainConfig, model_cfg: JanusConfig, log: Callable[[str], None]) -> JanusProcessor:
    folder = _tokenizer_dir(cfg)
    if folder is not None and (Path(folder) / "tokenizer.json").is_file():
        try:
            return JanusProcessor.from_dir(folder, model_cfg, roles=cfg.model.roles)
        except ConfigError as e:
            raise UserError(f"tokenizer folder {folder}: {e}") from None
    if cfg.model.tokenizer is not None:
        raise UserError(f"model.tokenizer {folder!r} has no tokenizer.json")
    log("note: no tokenizer given (model.tokenizer); using the small stand-in tokenizer of the presets")
    return standin_processor(model_cfg, roles=cfg.model.roles)


# The tokenizer folder exports copy. Without one the run keeps its stand-in tokenizer next to
# its checkpoints, so its exports decode the same ids.
def _keep_tokenizer(cfg: TrainConfig, processor: JanusProcessor, out: Path, is_main: bool) -> str:
    tokenizer_dir = _tokenizer_dir(cfg)
    if tokenizer_dir is not None:
        return tokenizer_dir
    if is_main:
        save_tokenizer_dir(processor.tokenizer.tokenizer, out / "tokenizer")
    return str(out / "tokenizer")


def _resume_target(out: Path, resume: str | bool | None) -> Path | None:
    existing = list_checkpoints(out)
    if resume in (None, False):
        if existing:
            raise UserError(f"{out} already holds checkpoints (latest step {existing[-1][0]}); pass --resume to "
                            f"continue, or choose another output_dir")
        return None
    if resume in (True, "latest"):
        if not existing:
            raise UserError(f"--resume: no checkpoint in {out / 'checkpoints'}")
        return existing[-1][1]
    folder = Path(str(resume))
    if not (folder / "train_state.json").is_file():
        raise UserError(f"--resume {folder}: not a training checkpoint folder")
    return folder


def _check_compatible(ckpt: Path, task: str, model_cfg: JanusConfig, stage: Stage,
                      log: Callable[[str], None]) -> None:
    meta = read_train_state(ckpt)
    if meta.get("task") != task:
        raise UserError(f"{ckpt} is a {meta.get('task')!r} checkpoint; this config trains {task!r}")
    if meta.get("model_config") != _json_roundtrip(model_cfg.to_dict()):
        raise UserError(f"{ckpt} was trained with a different model config; resume with the config it was written with")
    old = meta.get("stage", {})
    new = _json_roundtrip(stage.to_dict())
    if old.get("trainable", new["trainable"]) != new["trainable"]:
        raise UserError(f"{ckpt} trained {', '.join(old['trainable'])}; this config trains "
                        f"{', '.join(new['trainable'])}. Resuming cannot change what trains: start a new stage "
                        f"from the checkpoint instead (model.checkpoint = {str(ckpt)!r}, without --resume)")
    changed = [f"{k} {old[k]} -> {v}" for k, v in new.items() if k in old and old[k] != v and k != "name"]
    if changed:
        log(f"note: resuming with changed stage settings, applied from this step on: {'; '.join(changed)}")


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


__all__ = ["run_training", "derive_grad_accum", "autocast_dtype", "EvalHookFactory"]
