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
from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline, resolve_model_source
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.prompts import Prompt, PromptStream
from openjanus.posttrain.rewards import Reward, SelfReward, ShapesReward, finite
from openjanus.processing import JanusProcessor
from openjanus.requests import ImageRequest, SamplingParams
from openjanus.train.checkpoint import TrainState, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
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
    """What checkpoints hold: `model` (the Janus being post-trained)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


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
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        model, processor, source = load_policy(cfg)
        self.processor, self.source = processor, source
        self.policy = Policy(model)
        self.lora = None
        if cfg.lora is not None:
            from openjanus.train.lora import add_lora

            self.lora = add_lora(model, cfg.lora, log=self.log)
            self.n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            self.reference = None  # the base: the adapter switched off
        else:
            self.n_trainable = select_trainable(model, cfg.trainable)
            self.reference = (copy.deepcopy(model).eval().requires_grad_(False)
                              if cfg.kl_beta or cfg.method == "dpo" else None)
        self.pipe = JanusPipeline(model, processor, name="policy")
        rows = 2 * cfg.prompts_per_step * cfg.group_size
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
        self.writer = open_tensorboard(self.out / "tensorboard") if cfg.tensorboard else None
        self.pad_id = processor.tokenizer.pad_id
        self.skipped_total = 0

    # -- checkpoints

    def meta(self) -> dict[str, Any]:
        return {"task": "janus", "model_config": self.policy.model.cfg.to_dict(), "posttrain": self.cfg.to_dict(),
                "train_config": {"model": {"checkpoint": str(self.source), "tokenizer": str(self.source)}}}

    def save(self) -> Path:
        self.prompts.step = self.state.step
        self.state.extra["skipped_total"] = self.skipped_total
        path = save_checkpoint(self.out, objective=self.policy, optimizer=self.optimizer, scheduler=self.scheduler,
                               data=self.prompts, state=self.state, meta=self.meta(), keep_last=self.cfg.keep_last)
        if self.lora is not None:
            from openjanus.train.lora import save_adapter

            save_adapter(self.policy.model, path / "adapter")
        return path

    def resume(self, folder: str | Path | None = None) -> None:
        folder = Path(folder) if folder is not None else latest_checkpoint(self.out)
        if folder is None:
            raise UserError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
        self.state = load_checkpoint(folder, objective=self.policy, optimizer=self.optimizer,
                                     scheduler=self.scheduler, data=self.prompts)
        self.skipped_total = int(self.state.extra.get("skipped_total", 0))
        self.log(f"resumed from {folder} at step {self.state.step}")

    # -- one step

    def sample(self, step: int) -> tuple[list[Prompt], torch.Tensor, list[Any], list[list[int]]]:
        cfg = self.cfg
        prompts = self.prompts.at(step)
        seeds = self.prompts.seeds(step)
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
        t0 = time.perf_counter()
        prompts, tokens, images, ids = self.sample(step)
        t_sample = time.perf_counter() - t0
        rewards, parts = combined_rewards(self.rewards, prompts, images)
        t_reward = time.perf_counter() - t0 - t_sample
        r = torch.tensor(rewards, dtype=torch.float32)
        skipped = int((~torch.isfinite(r)).sum())
        self.skipped_total += skipped
        adv = group_advantages(r, cfg.group_size)
        keep = torch.isfinite(r)
        if cfg.skip_flat_groups:
            keep &= (adv != 0)
        idx = keep.nonzero().flatten().tolist()
        metrics: dict[str, float] = {}
        self.policy.model.train()
        if idx:
            sel_ids = [ids[i] for i in idx]
            sel_tok, sel_adv = tokens[idx], adv[idx]
            ref = self._no_grad_logprobs(sel_ids, sel_tok, reference=True) if cfg.kl_beta else None
            old = self._no_grad_logprobs(sel_ids, sel_tok, reference=False) if cfg.inner_steps > 1 else None
            mb = cfg.micro_batch
            gcpo = cfg.critical_tokens < 1
            critical: dict[int, torch.Tensor] = {}  # GCPO: chosen at the first update, kept for the others
            entropy_sum = 0.0
            for _ in range(cfg.inner_steps):
                sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "ratio": 0.0}
                for s in range(0, len(idx), mb):
                    sl = slice(s, s + mb)
                    if gcpo:
                        logp, entropy = t2i_token_logprobs_entropy(self.policy.model, sel_ids[sl], sel_tok[sl],
                                                                   self.pad_id, cfg.guidance, cfg.temperature)
                        if s not in critical:
                            critical[s] = critical_tokens(entropy, cfg.critical_tokens)
                            entropy_sum += float(entropy.mean()) * logp.shape[0] / len(idx)
                    else:
                        logp = self._logprobs(self.policy.model, sel_ids[sl], sel_tok[sl])
                    out = grpo_loss(logp, logp.detach() if old is None else old[sl],
                                    None if ref is None else ref[sl], sel_adv[sl], clip_eps=cfg.clip_eps,
                                    kl_beta=cfg.kl_beta, critical=critical.get(s))
                    share = logp.shape[0] / len(idx)
                    (out.loss * share).backward()
                    for k in sums:
                        sums[k] += float(getattr(out, k).detach()) * share
                params = [p for p in self.policy.parameters() if p.requires_grad]
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            metrics.update({k: v for k, v in sums.items()})
            metrics["grad_norm"] = float(norm)
            if gcpo:
                metrics["entropy"] = entropy_sum
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens_seen += int(tokens.numel())
        dt = time.perf_counter() - t0
        finite_r = r[torch.isfinite(r)]
        metrics.update({
            "reward": float(finite_r.mean()) if finite_r.numel() else float("nan"),
            "skipped": float(skipped), "skipped_total": float(self.skipped_total),
            "trained_samples": float(len(idx)), "samples_per_s": len(images) / dt,
            "seconds/sample": t_sample, "seconds/reward": t_reward, "seconds/step": dt,
        })
        for name, vals in parts.items():
            v = torch.tensor(vals)
            v = v[torch.isfinite(v)]
            if v.numel():
                metrics[f"reward/{name}"] = float(v.mean())
        if "shapes" in parts:
            by_tag: dict[str, list[float]] = {}
            for p, v in zip(prompts, parts["shapes"]):
                if math.isfinite(v):
                    by_tag.setdefault(p.tag, []).append(float(v == 1.0))
            metrics["correct"] = sum(sum(v) for v in by_tag.values()) / max(1, sum(len(v) for v in by_tag.values()))
            for tag, v in by_tag.items():
                metrics[f"correct/{tag}"] = sum(v) / len(v)
        return metrics

    # -- the run

    def fit(self) -> TrainState:
        cfg = self.cfg
        if self.state.step == 0:
            self.log(f"{cfg.method.upper()} on {self.source}: {self.n_trainable:,} trainable parameters"
                     f"{' (LoRA)' if self.lora is not None else ''}; {cfg.prompts_per_step} prompts x "
                     f"{cfg.group_size} samples per step, {cfg.steps} steps")
            if self.eval_hook is not None and cfg.eval_every:
                self._evaluate()
        metrics_path = self.out / "metrics.jsonl"
        self.out.mkdir(parents=True, exist_ok=True)
        while self.state.step < cfg.steps:
            m = self.step()
            step = self.state.step
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
        self.policy.model.eval()
        with torch.no_grad():
            results = self.eval_hook(self.policy.model, self.state.step)  # type: ignore[misc]
        self.log(f"eval at step {self.state.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(results.items())))
        with (self.out / "eval.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.state.step, **results}) + "\n")
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"eval/{k}", v, self.state.step)
            self.writer.flush()

    def close(self) -> None:
        self.pipe.close()
