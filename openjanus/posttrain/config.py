"""Post-training configs (JSON files, `-o key=value` overrides), checked before any model is built."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openjanus.errors import UserError
from openjanus.numbers import check_integer, check_number
from openjanus.shapes.spec import TAGS
from openjanus.train.config import LoraOptions

REWARDS = ("shapes", "self")
# What the demo model's post-training trains by default: the LLM and the generation path (the
# understanding encoder and its aligner, and the VQ, stay as they are).
DEFAULT_TRAINABLE = ("llm.layers", "llm.norm", "gen_head", "gen_aligner", "gen_embed")


LoraSettings = LoraOptions  # the same settings as a training stage's `lora`


@dataclass
class PostTrainConfig:
    """GRPO or DPO on a Janus checkpoint (None: the shipped demo model)."""

    method: str = "grpo"  # grpo | dpo
    samples: str = "images"  # GRPO on images (text-to-image) or on answers (questions about shapes scenes)
    output_dir: str = "runs/posttrain"
    model: str | None = None
    # Prompts: "shapes" draws GenEval-style specs of the shapes world from `split` (train: the
    # held-out compositions never appear), weighted by `tags`; or a JSONL file of
    # {"prompt": ...} records (GenEval metadata records keep their spec for the shapes reward).
    prompts: str = "shapes"
    split: str = "train"
    tags: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TAGS})
    prompts_per_step: int = 8
    group_size: int = 8
    guidance: float = 5.0
    temperature: float = 1.0
    rewards: dict[str, float] = field(default_factory=lambda: {"shapes": 1.0})
    steps: int = 100
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    inner_steps: int = 1  # optimiser updates per batch of samples (>1: the clipped ratio moves off 1)
    micro_batch: int = 16  # sequences per forward/backward
    skip_flat_groups: bool = True  # groups whose rewards are all equal give no policy gradient
    # GCPO: the policy term on each image's `critical_tokens` share of highest-entropy tokens
    # only (the KL term keeps all tokens); 1.0 is plain GRPO.
    critical_tokens: float = 1.0
    trainable: list[str] = field(default_factory=lambda: list(DEFAULT_TRAINABLE))
    lora: LoraSettings | None = None
    # DPO: pairs from files (`pairs`, JSONL) or self-made (sample group_size per prompt, score,
    # pair best with worst).
    pairs: str | None = None
    dpo_beta: float = 0.1
    seed: int = 0
    checkpoint_every: int = 25
    keep_last: int = 3
    log_every: int = 1
    eval_every: int = 0
    eval_per_category: int = 8
    eval_n: int = 2
    tensorboard: bool = True
    # cpu (what the demo runs use) or cuda / auto: under torchrun, one GPU per process (the
    # local rank's), NCCL between them; on CPU, gloo.
    device: str = "cpu"
    dist_timeout_minutes: int = 30  # rank 0 alone writes checkpoints and evaluates while the others wait

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostTrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"post-training config: unknown key(s) {', '.join(unknown)}")
        d = dict(d)
        if d.get("lora") is not None:
            lora = d["lora"]
            if not isinstance(lora, dict):
                raise UserError("lora must be an object (rank, alpha, dropout, targets)")
            lnames = {f.name for f in dataclasses.fields(LoraSettings)}
            bad = sorted(set(lora) - lnames)
            if bad:
                raise UserError(f"lora: unknown key(s) {', '.join(bad)}")
            d["lora"] = LoraSettings(**lora)
            d["lora"].validate()
        cfg = cls(**d)
        cfg.check()
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> PostTrainConfig:
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise UserError(f"cannot read config {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"override {item!r}: expected key=value")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            target = d
            parts = key.split(".")
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            target[parts[-1]] = parsed
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        if self.method not in ("grpo", "dpo"):
            raise UserError(f"method must be grpo or dpo, got {self.method!r}")
        if self.samples not in ("images", "answers"):
            raise UserError(f"samples must be images or answers, got {self.samples!r}")
        if self.samples == "answers" and (self.method != "grpo" or self.prompts != "shapes"):
            raise UserError("samples: answers is GRPO on the shapes world's questions (method grpo, prompts shapes)")
        for name in ("prompts_per_step", "steps", "micro_batch", "inner_steps", "log_every"):
            check_integer(getattr(self, name), low=1, name=name)
        check_integer(self.group_size, name="group_size")
        if self.group_size < 2:
            raise UserError(f"group_size must be at least 2 (a group of {self.group_size} has nothing to "
                            f"compare its samples with)")
        if self.split not in ("train", "heldout", "any"):
            raise UserError(f"split must be train, heldout or any, got {self.split!r}")
        bad = sorted(set(self.tags) - set(TAGS))
        for tag, weight in self.tags.items():
            check_number(weight, low=0, name=f"tags.{tag}")
        if bad or not self.tags or not sum(self.tags.values()) > 0:
            raise UserError(f"tags: weights per category of {', '.join(TAGS)} (non-negative, not all zero)")
        bad = sorted(set(self.rewards) - set(REWARDS))
        if bad or not self.rewards:
            raise UserError(f"rewards: weights per reward of {', '.join(REWARDS)}; unknown {', '.join(bad)}")
        for reward, weight in self.rewards.items():
            check_number(weight, name=f"rewards.{reward}")
        if self.prompts != "shapes" and not Path(self.prompts).is_file():
            raise UserError(f"prompts: {self.prompts} is not a file (or use \"shapes\")")
        if self.method == "dpo" and self.pairs is not None:
            p = Path(self.pairs)
            if not p.is_file():
                raise UserError(f"pairs: {self.pairs} is not a file")
            if not any(line.strip() for line in p.read_text().splitlines()):
                raise UserError(f"pairs: {self.pairs} holds no preference pairs")
        for name in ("lr", "kl_beta", "clip_eps", "dpo_beta", "guidance", "weight_decay"):
            check_number(getattr(self, name), low=0, name=name)
        check_number(self.grad_clip, low=0, name="grad_clip")  # 0: no clipping
        for name in ("warmup_steps", "seed", "eval_every", "checkpoint_every", "keep_last"):  # 0: off / keep all
            check_integer(getattr(self, name), low=0, name=name)
        check_integer(self.dist_timeout_minutes, low=1, name="dist_timeout_minutes")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise UserError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        for name in ("eval_per_category", "eval_n"):
            check_integer(getattr(self, name), low=1, name=name)
        try:
            check_number(self.temperature, low=0, low_open=True, name="temperature")
        except UserError as e:
            raise UserError(f"{e}: GRPO needs the sampling distribution's log-probabilities") from None
        check_number(self.critical_tokens, low=0, high=1, low_open=True, name="critical_tokens")
        if self.critical_tokens < 1 and (self.method != "grpo" or self.samples != "images"):
            raise UserError("critical_tokens applies to GRPO on images (method grpo, samples images)")

