"""`openjanus posttrain CONFIG [--resume [CKPT]] [-o KEY=VALUE ...]`: GRPO or DPO from a config.

    openjanus posttrain configs/posttrain/demo-grpo.json            # the demo model's GRPO run
    openjanus posttrain configs/posttrain/demo-grpo.json --resume   # after a kill
    openjanus train export runs/demo/grpo --out DIR                 # the usual export
    torchrun --nproc_per_node 2 -m openjanus posttrain CONFIG       # data-parallel, FSDP2
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from torch import nn


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("posttrain", help="post-train a Janus model with GRPO or DPO (see docs/training.md)",
                              description="GRPO (online, rewards: the shapes scorer and/or the model's own yes/no "
                                          "verdict) or DPO (pairs from files or self-made) on a Janus checkpoint.")
    p.add_argument("config", help="post-training config (JSON)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="continue from the newest checkpoint in output_dir, or from the folder CKPT")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. lr=5e-6 or lora.rank=16 (repeatable)")
    p.set_defaults(func=cmd_posttrain)


def heldout_eval_hook(processor: Any, output_dir: str | Path, per_category: int, n: int,
                      prompt_seed: int = 1) -> Any:
    """GenEval (shapes world) on the policy during training, half held-out prompts; logged per
    split. Its prompt set (seed 1) is drawn apart from the benchmark's (seed 0), but the shapes
    world has few held-out compositions, so many prompts recur (at 16 per category, 20 of its 29
    held-out prompts and 17 of 46 training ones), drawn with other image seeds: choosing a
    checkpoint by these curves selects on other images, not on other prompts."""
    from openjanus.eval import runners
    from openjanus.inference.pipeline import JanusPipeline

    def hook(model: nn.Module, step: int) -> dict[str, float]:
        pipe = JanusPipeline(model, processor, name=f"step {step}")  # type: ignore[arg-type]
        out = Path(output_dir) / "eval" / f"step_{step:08d}"
        if out.exists():
            shutil.rmtree(out)
        settings = runners.GenerationSettings(n_per_prompt=n, seed=0, batch_size=16)
        report = runners.run_geneval_shapes(pipe, out, per_category=per_category, settings=settings,
                                            prompt_seed=prompt_seed)
        pipe.close()
        res = {"geneval/overall": float(report.overall or 0.0)}
        for split, s in report.by_split.items():
            res[f"geneval/{split}"] = float(s.overall)
            res.update({f"geneval/{split}/{k}": float(v) for k, v in s.categories.items()})
        return res

    return hook


def check_before_building(cfg: Any) -> None:
    """What can be refused from the config and the checkpoint's config.json alone, before any
    weights are read: the model source, LoRA targets that match nothing, and a step that the
    torchrun processes cannot share equally."""
    import torch

    from openjanus.checkpoints.weights import read_config
    from openjanus.distributed import env_dist_info
    from openjanus.errors import UserError
    from openjanus.inference.pipeline import resolve_model_source
    from openjanus.model.janus import Janus
    from openjanus.posttrain.sharding import check_world_size

    world = env_dist_info().world_size
    check_world_size(cfg.prompts_per_step, world)
    if world > 1 and cfg.samples == "answers":
        raise UserError("samples: answers runs on one process; start it without torchrun")
    source = resolve_model_source(cfg.model)
    if isinstance(source, str):
        raise UserError(f"post-training needs a checkpoint folder, not the preset {source!r}")
    if cfg.lora is not None:
        from openjanus.train.lora import resolve_targets

        model_cfg, _ = read_config(source)
        with torch.device("meta"):
            skeleton = Janus(model_cfg)
        resolve_targets(skeleton, cfg.lora.targets)


def cmd_posttrain(args: argparse.Namespace) -> None:
    from openjanus.posttrain.config import PostTrainConfig
    from openjanus.train.checkpoint import list_checkpoints

    cfg = PostTrainConfig.load(args.config, args.override)
    check_before_building(cfg)
    if args.resume is None and list_checkpoints(cfg.output_dir):
        from openjanus.errors import UserError

        raise UserError(f"{cfg.output_dir} already holds checkpoints; pass --resume to continue, or choose another "
                        f"output_dir")
    if cfg.method == "dpo":
        from openjanus.posttrain.dpo import DPOTrainer as Trainer
    elif cfg.samples == "answers":
        from openjanus.posttrain.answers import AnswerGRPOTrainer as Trainer
    else:
        from openjanus.posttrain.grpo import GRPOTrainer as Trainer

    import torch.distributed as dist

    from openjanus.devices import resolve_device
    from openjanus.distributed import destroy, env_dist_info, init_distributed

    # Under torchrun: the process group (gloo on CPU, NCCL on GPUs), ended after a normal end
    # with every process at a barrier; after an error without one (the others may never come).
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(resolve_device(cfg.device, local_rank=env_dist_info().local_rank),
                            cfg.dist_timeout_minutes)
    finished = False
    try:
        trainer = Trainer(cfg)
        try:
            if cfg.eval_every:
                trainer.eval_hook = heldout_eval_hook(trainer.processor, cfg.output_dir, cfg.eval_per_category,
                                                      cfg.eval_n)
            if args.resume is not None:
                trainer.resume(None if args.resume == "latest" else args.resume)
            state = trainer.fit()
        finally:
            trainer.close()
        del trainer
        finished = True
    finally:
        if owns_group:
            destroy(wait_for_all=finished)
    if not info.is_main:
        return
    print(f"post-trained to step {state.step}; checkpoints in {cfg.output_dir}/checkpoints "
          f"(export: openjanus train export {cfg.output_dir} --out DIR)", file=sys.stderr)
