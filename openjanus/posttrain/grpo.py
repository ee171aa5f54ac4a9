"""Online GRPO for text-to-image (Shao et al. 2024's group-relative policy optimisation).

One step:

1. the step's prompts (`PromptStream.at(step)`, a function of the seed and the step only);
2. per prompt a group of `group_size` images sampled through the engine (batched, CFG as at
   inference, one seed per prompt), with the policy's current weights (the pipeline shares the
   policy's modules);
3. each image rewarded (`openjanus.posttrain.rewards`, weighted sum of the chosen rewards); a
   NaN reward skips its sample and is counted (`skipped`);
4. advantages normalised within each group; groups whose rewards are all equal give no policy
   gradient and are left out of the backward when `skip_flat_groups`;
5. `inner_steps` AdamW updates on GRPO's clipped-ratio loss with the KL term to the frozen
   reference (the starting weights; with LoRA, the base with the adapter switched off),
   computed on the same CFG-guided token distribution the sampler drew from.

Checkpoints are the training package's (`save_checkpoint`), so `openjanus train export` and
`--resume` work on them; the prompt stream's position travels in them.

Under torchrun the step's prompts are split across the processes and the policy is sharded
with FSDP2 (`openjanus.posttrain.sharding`); the samples, the gradient and the checkpoints are
those of one process (up to the order of floating-point sums).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openjanus.checkpoints import load_model
from openjanus.devices import resolve_device
from openjanus.distributed import all_reduce_sum, barrier, current_dist_info
from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline, resolve_model_source
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.prompts import Prompt, PromptStream
from openjanus.posttrain.rewards import Reward, SelfReward, ShapesReward, finite
from openjanus.posttrain.sharding import check_world_size, gathered, local_slice, micro_batch_count
from openjanus.processing import JanusProcessor
from openjanus.requests import ImageRequest, SamplingParams
from openjanus.shapes.spec import TAGS
from openjanus.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_tensors_matching,
    save_checkpoint,
)
from openjanus.train.logs import open_tensorboard
from openjanus.train.lora import adapters_disabled
from openjanus.train.preference import (
    critical_tokens,
    group_advantages,
    grpo_loss,
    t2i_token_logprobs,
    t2i_token_logprobs_entropy,
)

Log = Callable[[str], None]


class Policy(nn.Module):
    """What checkpoints hold: `model` (the Janus being post-trained).

    Janus has no forward, and FSDP2 gathers the root's parameters in forward hooks, so every
    computation that trains runs through this module's call: `policy(fn, *args)` is
    `fn(policy.model, *args)` (the same call with one process)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        out = fn(self.model, *args, **kwargs)
        # FSDP2 hooks its backward on the outputs and warns about views (an in-place op on one
        # would lose the hook): the outputs leave as tensors of their own.
        if isinstance(out, torch.Tensor):
            return out.clone() if out._base is not None else out
        if isinstance(out, tuple):
            return tuple(t.clone() if isinstance(t, torch.Tensor) and t._base is not None else t for t in out)
        return out


def _nothing(model: nn.Module) -> None:
    return None


def gathered_dtype(device: torch.device, dist_info: Any) -> torch.dtype | None:
    """FSDP2's compute dtype for the gathered weights: bf16 on GPUs with several processes,
    else None (the weights' own fp32)."""
    return torch.bfloat16 if dist_info.distributed and device.type == "cuda" else None


def load_policy(cfg: PostTrainConfig) -> tuple[nn.Module, JanusProcessor, Path]:
    source = resolve_model_source(cfg.model)
    if isinstance(source, str):
        raise UserError(f"post-training needs a checkpoint folder, not the preset {source!r}")
    model = load_model(source, device="cpu", dtype=torch.float32)
    processor = JanusProcessor.from_dir(source, model.cfg)
    return model, processor, Path(source)


def select_trainable(model: nn.Module, prefixes: list[str]) -> int:
    """requires_grad on parameters whose name starts with one of `prefixes`; returns the count."""
    n = 0
    for name, p in model.named_parameters():
        trains = any(name == q or name.startswith(q + ".") for q in prefixes)
        p.requires_grad_(trains)
        n += p.numel() if trains else 0
    if n == 0:
        raise UserError(f"trainable: no parameter matches {', '.join(prefixes)}")
    return n


def build_rewards(cfg: PostTrainConfig, model: nn.Module, processor: JanusProcessor) -> list[tuple[Reward, float]]:
    out: list[tuple[Reward, float]] = []
    for name, w in cfg.rewards.items():
        if w == 0:
            continue
        out.append((ShapesReward() if name == "shapes" else SelfReward(model, processor), float(w)))
    return out


def combined_rewards(rewards: list[tuple[Reward, float]], prompts: list[Prompt],
                     images: list[Any]) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted sum per sample (NaN where any part is NaN) and each part's values."""
    texts, specs = [p.text for p in prompts], [p.spec for p in prompts]
    parts = {r.name: finite(r(texts, images, specs)) for r, _ in rewards}
    total = [sum(w * parts[r.name][i] for r, w in rewards) for i in range(len(images))]
    return finite(total), parts


class GRPOTrainer:
    def __init__(self, cfg: PostTrainConfig, log: Log | None = None,
                 eval_hook: Callable[[nn.Module, int], dict[str, float]] | None = None,
                 reward_override: list[tuple[Reward, float]] | None = None) -> None:
        self.cfg = cfg
        # The process group (torchrun) is started by the caller (`openjanus posttrain`, tests).
        self.dist_info = current_dist_info()
        check_world_size(cfg.prompts_per_step, self.dist_info.world_size)
        if self.dist_info.distributed and cfg.samples == "answers":
            raise UserError("samples: answers runs on one process; start it without torchrun")
        self.device = resolve_device(cfg.device, local_rank=self.dist_info.local_rank)
        log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.log = log if self.dist_info.is_main else (lambda line: None)
        # With FSDP2 on GPUs the weights are gathered in bf16 (the masters stay fp32).
        self.param_dtype = gathered_dtype(self.device, self.dist_info)
        model, processor, source = load_policy(cfg)
        self.processor, self.source = processor, source
        self.policy = Policy(model)
        self.lora = None
        if cfg.lora is not None:
            from openjanus.train.lora import add_lora

            # peft draws the adapters' A matrices from torch's generator: from the run's seed,
            # the same in every process and in every run of the config.
            torch.manual_seed(cfg.seed)
            self.lora = add_lora(model, cfg.lora, log=self.log)
            self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.reference = None  # the base: the adapter switched off
        else:
            self.n_trainable = select_trainable(model, cfg.trainable)
            # A full frozen copy in every process (not sharded): it runs inside the sampling
            # phase, where each process runs its own number of forwards; in the policy's compute
            # dtype, so that the KL starts at 0.
            self.reference = (copy.deepcopy(model).eval().requires_grad_(False).to(self.device,
                                                                                  dtype=self.param_dtype)
                              if cfg.kl_beta or cfg.method == "dpo" else None)
        if self.dist_info.distributed:
            from openjanus.train.parallel import shard_model

            shard_model(self.policy, list(model.llm.layers), self.device, param_dtype=self.param_dtype)
            with torch.no_grad():
                self.policy(_nothing)  # the root's first forward: FSDP2 settles which module is its root
            self.policy.reshard()  # (the root keeps its parameters gathered after a forward)
        else:
            self.policy.to(self.device)
        self.pipe = JanusPipeline(model, processor, name="policy")
        rows = 2 * (cfg.prompts_per_step // self.dist_info.world_size) * cfg.group_size
        self.pipe.start_engine(EngineConfig(rows=rows, max_n=cfg.group_size))
        self.prompts = PromptStream(cfg.prompts, cfg.prompts_per_step, cfg.seed, cfg.split, cfg.tags)
        self.rewards = reward_override if reward_override is not None else build_rewards(cfg, model, processor)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=cfg.weight_decay)
        warm = max(cfg.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.state = TrainState()
        self.eval_hook = eval_hook
        self.out = Path(cfg.output_dir)
        self.writer = (open_tensorboard(self.out / "tensorboard")
                       if cfg.tensorboard and self.dist_info.is_main else None)
        self.pad_id = processor.tokenizer.pad_id
        self.skipped_total = 0

    # -- checkpoints

    def meta(self) -> dict[str, Any]:
        return {"task": "janus", "model_config": self.policy.model.cfg.to_dict(), "posttrain": self.cfg.to_dict(),
                "train_config": {"model": {"checkpoint": str(self.source), "tokenizer": str(self.source)}}}

    def save(self) -> Path:
        """A checkpoint (every process calls this; rank 0 writes the full, unsharded state)."""
        self.prompts.step = self.state.step
        self.state.extra["skipped_total"] = self.skipped_total
        path = save_checkpoint(self.out, objective=self.policy, optimizer=self.optimizer, scheduler=self.scheduler,
                               data=self.prompts, state=self.state, meta=self.meta(), keep_last=self.cfg.keep_last,
                               dist_info=self.dist_info)
        if self.lora is not None and self.dist_info.is_main:
            from openjanus.train.lora import save_adapter

            # With FSDP2 this process holds shards: the adapter comes from the full weights just written.
            state = read_tensors_matching(path, ".lora_") if self.dist_info.distributed else None
            save_adapter(self.policy.model, path / "adapter", state=state)
        barrier()  # where rank 0 alone worked, the others wait
        return path

    def resume(self, folder: str | Path | None = None) -> None:
        folder = Path(folder) if folder is not None else latest_checkpoint(self.out)
        if folder is None:
            raise UserError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
        # The prompt stream's position is the same in every process: any world size resumes.
        self.state = load_checkpoint(folder, objective=self.policy, optimizer=self.optimizer,
                                     scheduler=self.scheduler, data=self.prompts, dist_info=self.dist_info,
                                     shared_data=True)
        self.skipped_total = int(self.state.extra.get("skipped_total", 0))
        self.log(f"resumed from {folder} at step {self.state.step}")

    # -- one step

    def sample(self, step: int) -> tuple[list[Prompt], torch.Tensor, list[Any], list[list[int]]]:
        cfg = self.cfg
        # The whole step's prompts and seeds, then this process's share (the same samples at
        # any world size).
        share = local_slice(cfg.prompts_per_step, self.dist_info)
        prompts = self.prompts.at(step)[share]
        seeds = self.prompts.seeds(step)[share]
        reqs = [ImageRequest(p.text, n=cfg.group_size, guidance=cfg.guidance,
                             sampling=SamplingParams(temperature=cfg.temperature), seed=s)
                for p, s in zip(prompts, seeds)]
        self.policy.model.eval()
        results = self.pipe.run(reqs)
        tokens = torch.cat([r.tokens for r in results])  # [P*G, T]
        images = [im for r in results for im in r.images]
        tok = self.processor.tokenizer
        prompt_ids = [tok.encode(self.processor.t2i_prompt(p.text)) for p in prompts for _ in range(cfg.group_size)]
        flat = [p for p in prompts for _ in range(cfg.group_size)]
        return flat, tokens, images, prompt_ids

    def _logprobs(self, model: nn.Module, ids: list[list[int]], tokens: torch.Tensor) -> torch.Tensor:
        return t2i_token_logprobs(model, ids, tokens, self.pad_id, self.cfg.guidance, self.cfg.temperature)

    def _no_grad_logprobs(self, ids, tokens, reference: bool) -> torch.Tensor:
        mb = self.cfg.micro_batch
        out = []
        with torch.no_grad():
            for s in range(0, len(ids), mb):
                if reference and self.lora is not None:
                    with adapters_disabled(self.policy.model):
                        out.append(self._logprobs(self.policy.model, ids[s:s + mb], tokens[s:s + mb]))
                else:
                    model = self.reference if reference else self.policy.model
                    out.append(self._logprobs(model, ids[s:s + mb], tokens[s:s + mb]))
        return torch.cat(out)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        step = self.state.step
        world = self.dist_info.world_size
        t0 = time.perf_counter()
        with gathered(self.policy, self.dist_info):
            prompts, tokens, images, ids = self.sample(step)
            t_sample = time.perf_counter() - t0
            rewards, parts = combined_rewards(self.rewards, prompts, images)
            t_reward = time.perf_counter() - t0 - t_sample
            r = torch.tensor(rewards, dtype=torch.float32)
            skipped = int((~torch.isfinite(r)).sum())
            adv = group_advantages(r, cfg.group_size)
            keep = torch.isfinite(r)
            if cfg.skip_flat_groups:
                keep &= (adv != 0)
            idx = keep.nonzero().flatten().tolist()
            self.policy.model.train()
            sel_ids = [ids[i] for i in idx]
            sel_tok, sel_adv = tokens[idx], adv[idx]
            ref = self._no_grad_logprobs(sel_ids, sel_tok, reference=True) if cfg.kl_beta and idx else None
            old = self._no_grad_logprobs(sel_ids, sel_tok, reference=False) if cfg.inner_steps > 1 and idx else None
        n_all = int(all_reduce_sum([float(len(idx))], self.device)[0])
        metrics: dict[str, float] = {}
        sums: dict[str, float] = {}
        if n_all:
            mb = cfg.micro_batch
            # Every process runs as many micro-batches as the busiest one (each is a collective).
            rounds = micro_batch_count(len(idx), mb, self.device)
            gcpo = cfg.critical_tokens < 1
            critical: dict[int, torch.Tensor] = {}  # GCPO: chosen at the first update, kept for the others
            entropy_sum = 0.0
            for _ in range(cfg.inner_steps):
                sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "ratio": 0.0}
                for s in range(0, rounds * mb, mb):
                    if s >= len(idx):
                        # A stand-in micro-batch (weight 0): the same collectives as the others' real ones.
                        logp = self.policy(self._logprobs, ids[:1], tokens[:1])
                        (logp.sum() * 0.0).backward()
                        continue
                    sl = slice(s, s + mb)
                    if gcpo:
                        logp, entropy = self.policy(t2i_token_logprobs_entropy, sel_ids[sl], sel_tok[sl],
                                                    self.pad_id, cfg.guidance, cfg.temperature)
                        if s not in critical:
                            critical[s] = critical_tokens(entropy, cfg.critical_tokens)
                            entropy_sum += float(entropy.mean()) * logp.shape[0] / n_all
                    else:
                        logp = self.policy(self._logprobs, sel_ids[sl], sel_tok[sl])
                    out = grpo_loss(logp, logp.detach() if old is None else old[sl],
                                    None if ref is None else ref[sl], sel_adv[sl], clip_eps=cfg.clip_eps,
                                    kl_beta=cfg.kl_beta, critical=critical.get(s))
                    # This micro-batch's share of the mean over all the step's samples; FSDP2
                    # averages the processes' gradients, hence x world.
                    share = logp.shape[0] / n_all
                    (out.loss * (share * world)).backward()
                    for k in sums:
                        sums[k] += float(getattr(out, k).detach()) * share
                norm = self._clip_and_step()
            metrics["grad_norm"] = norm
            if gcpo:
                sums["entropy"] = entropy_sum
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step += 1
        dt = time.perf_counter() - t0

        # Figures over all processes: sums and counts, reduced in one call.
        counts: dict[str, float] = {"tokens": float(tokens.numel()), "images": float(len(images)),
                                    "skipped": float(skipped)}
        finite_r = r[torch.isfinite(r)]
        counts["reward/sum"], counts["reward/n"] = float(finite_r.sum()), float(finite_r.numel())
        for name in sorted(parts):
            v = torch.tensor(parts[name], dtype=torch.float64)
            v = v[torch.isfinite(v)]
            counts[f"reward/{name}/sum"], counts[f"reward/{name}/n"] = float(v.sum()), float(v.numel())
        if "shapes" in parts:
            for tag in TAGS:
                hits = [float(v == 1.0) for p, v in zip(prompts, parts["shapes"]) if p.tag == tag and math.isfinite(v)]
                counts[f"correct/{tag}/sum"], counts[f"correct/{tag}/n"] = sum(hits), float(len(hits))
        counts.update({f"mean/{k}": v for k, v in sums.items()})
        keys = sorted(counts)
        total = dict(zip(keys, all_reduce_sum([counts[k] for k in keys], self.device)))
        skipped_all = int(total["skipped"])
        self.skipped_total += skipped_all
        self.state.tokens_seen += int(total["tokens"])
        metrics.update({k.removeprefix("mean/"): v for k, v in total.items() if k.startswith("mean/")})
        metrics.update({
            "reward": total["reward/sum"] / total["reward/n"] if total["reward/n"] else float("nan"),
            "skipped": float(skipped_all), "skipped_total": float(self.skipped_total),
            "trained_samples": float(n_all), "samples_per_s": total["images"] / dt,
            "seconds/sample": t_sample, "seconds/reward": t_reward, "seconds/step": dt,
        })
        for name in sorted(parts):
            if total[f"reward/{name}/n"]:
                metrics[f"reward/{name}"] = total[f"reward/{name}/sum"] / total[f"reward/{name}/n"]
        if "shapes" in parts:
            n = sum(total[f"correct/{tag}/n"] for tag in TAGS)
            metrics["correct"] = sum(total[f"correct/{tag}/sum"] for tag in TAGS) / max(1.0, n)
            for tag in TAGS:
                if total[f"correct/{tag}/n"]:
                    metrics[f"correct/{tag}"] = total[f"correct/{tag}/sum"] / total[f"correct/{tag}/n"]
        return metrics

    def _clip_and_step(self) -> float:
        """Clip the gradient's norm (over all shards), take the optimiser step; the norm."""
        cfg = self.cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if hasattr(norm, "full_tensor"):  # a DTensor with FSDP2
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # -- the run

    def fit(self) -> TrainState:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)  # (the evaluation at step 0 writes there)
        if self.state.step == 0:
            world = self.dist_info.world_size
            self.log(f"{cfg.method.upper()} on {self.source}: {self.n_trainable:,} trainable parameters"
                     f"{' (LoRA)' if self.lora is not None else ''}; {cfg.prompts_per_step} prompts x "
                     f"{cfg.group_size} samples per step, {cfg.steps} steps"
                     + (f"; {world} processes x {cfg.prompts_per_step // world} prompts (FSDP2), device "
                        f"{self.device}" if world > 1 else ""))
            if self.eval_hook is not None and cfg.eval_every:
                self._evaluate()
        metrics_path = self.out / "metrics.jsonl"
        while self.state.step < cfg.steps:
            m = self.step()
            step = self.state.step
            if self.dist_info.is_main:
                with metrics_path.open("a") as f:
                    f.write(json.dumps({"step": step, **m}) + "\n")
            if self.writer is not None:
                for k, v in m.items():
                    if math.isfinite(v):
                        tag = k if k.startswith(("reward", "correct")) else f"{cfg.method}/{k}"
                        self.writer.add_scalar(tag, v, step)
            if step % cfg.log_every == 0:
                correct = m.get("correct", float("nan"))
                self.log(f"step {step}/{cfg.steps} reward {m['reward']:.3f} correct {correct:.3f}"
                         f" kl {m.get('kl', 0.0):.4f} trained {int(m['trained_samples'])} skipped {int(m['skipped'])}"
                         f" {m['samples_per_s']:.1f} samples/s ({m['seconds/step']:.1f}s/step)")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                self.save()
            if self.eval_hook is not None and cfg.eval_every and step % cfg.eval_every == 0:
                self._evaluate()
        if not list_checkpoints(self.out) or list_checkpoints(self.out)[-1][0] != self.state.step:
            self.save()
        if self.writer is not None:
            self.writer.flush()
        return self.state

    def _evaluate(self) -> None:
        """The evaluation hook on rank 0 (the others wait); with FSDP2 on the gathered weights."""
        self.policy.model.eval()
        with gathered(self.policy, self.dist_info):
            if self.dist_info.is_main:
                with torch.no_grad():
                    results = self.eval_hook(self.policy.model, self.state.step)  # type: ignore[misc]
            barrier()  # where rank 0 alone worked, the others wait
        if not self.dist_info.is_main:
            return
        self.log(f"eval at step {self.state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(results.items())))
        with (self.out / "eval.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.state.step, **results}) + "\n")
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"eval/{k}", v, self.state.step)
            self.writer.flush()

    def close(self) -> None:
        self.pipe.close()
