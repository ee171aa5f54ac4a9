"""Training stages as data: what trains, the optimiser schedule, the batch and the data mix.

One loop (`openjanus.train.trainer`) runs every stage; a `Stage` only says which modules train,
with which hyper-parameters, on which mix of data. The Janus-Pro presets carry Table 2 of the
Janus-Pro report (identical for 1B and 7B except the Stage III step count):

=========  ==================================  =====  ========  ======  =======  =====  =====  =====
preset     trains                              lr     schedule  warmup  steps    batch  wd     mix
=========  ==================================  =====  ========  ======  =======  =====  =====  =====
stage1     und_aligner, gen_aligner,           1e-3   constant  600     20,000   256    0      1:0:3
           gen_head, gen_embed
stage2     + llm                               1e-4   constant  5,000   360,000  512    0      2:3:5
stage3     + und_encoder                       4e-5   constant  0       80,000   128    0      5:1:4
=========  ==================================  =====  ========  ======  =======  =====  =====  =====

All use AdamW (0.9, 0.95) and gradient clipping 1.0; the mix is und : text : gen. Stage II
was early-stopped at 270K of its 360K steps in the report; `stage3-7b` is `stage3` with the
7B's 40K steps. "batch" counts packed rows of `seq_len` tokens per optimiser step.

Where `gen_embed` belongs: it is the generation path's *input* table (VQ code id -> vector,
randomly initialised and separate from the VQ codebook, which only the tokenizer uses), and
it feeds `gen_aligner`. A frozen random table would fix the image-token inputs of the LLM to
noise that only the aligner could reshape, so `gen_embed` trains together with `gen_aligner`
from Stage I on. The VQ tokenizer (`gen_tokenizer`) never trains in any Janus stage, and
`und_encoder.attn_pool` (held only so official checkpoints load; never executed) is frozen
too so no optimiser state is kept for it.

The parts' pretraining presets ("vq", "siglip", "text") train a component on its own before
it is assembled into a Janus model; their values are reasonable starting points from the
LlamaGen tokenizer, SigLIP and Llama-style LM recipes, not published Janus numbers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from openjanus.config import ConfigError

TRAINING_TASKS = ("janus", "vq", "siglip", "text")
SCHEDULES = ("constant", "cosine")

# Janus modules that no Janus stage trains, whatever the preset says.
NEVER_TRAINED = ("gen_tokenizer", "und_encoder.attn_pool")


@dataclass(frozen=True)
class Stage:
    """One training stage. `trainable` names module prefixes of the task's model ("*" = all)."""

    name: str
    task: str = "janus"
    trainable: tuple[str, ...] = ("*",)
    lr: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine only: the final lr as a fraction of `lr`
    steps: int = 1000
    global_batch: int = 256
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    data_ratio: tuple[float, float, float] = (1.0, 1.0, 1.0)  # und : text : gen (janus task only)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trainable", tuple(self.trainable))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "data_ratio", tuple(float(r) for r in self.data_ratio))
        if self.task not in TRAINING_TASKS:
            raise ConfigError(f"stage {self.name!r}: task {self.task!r} is not one of {', '.join(TRAINING_TASKS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"stage {self.name!r}: schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not self.trainable:
            raise ConfigError(f"stage {self.name!r}: nothing to train (trainable is empty)")
        if self.lr <= 0 or self.steps < 1 or self.global_batch < 1:
            raise ConfigError(f"stage {self.name!r}: lr {self.lr}, steps {self.steps} and global_batch "
                              f"{self.global_batch} must be positive")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"stage {self.name!r}: warmup_steps {self.warmup_steps} must lie in "
                              f"[0, steps={self.steps}]")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"stage {self.name!r}: min_lr_ratio {self.min_lr_ratio} must lie in [0, 1]")
        if len(self.betas) != 2 or len(self.data_ratio) != 3:
            raise ConfigError(f"stage {self.name!r}: betas needs 2 values and data_ratio 3 (und, text, gen)")
        if any(r < 0 for r in self.data_ratio) or sum(self.data_ratio) <= 0:
            raise ConfigError(f"stage {self.name!r}: data_ratio {self.data_ratio} must be non-negative, not all 0")
        if self.grad_clip < 0:
            raise ConfigError(f"stage {self.name!r}: grad_clip {self.grad_clip} must be >= 0 (0 disables it)")

    def lr_factor(self, step: int) -> float:
        """Multiplier of `lr` at optimiser step `step` (0-based): linear warm-up reaching 1 at
        the last warm-up step, then constant or a cosine decay to `min_lr_ratio` at `steps`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def is_trainable(self, name: str) -> bool:
        """Whether the parameter (or module) called `name` trains in this stage."""
        if self.task == "janus" and _under(name, NEVER_TRAINED):
            return False
        return "*" in self.trainable or _under(name, self.trainable)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints record them."""
        return dataclasses.asdict(self)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


_JANUS_PRO_COMMON: dict[str, Any] = {"task": "janus", "schedule": "constant", "weight_decay": 0.0,
                                     "grad_clip": 1.0, "betas": (0.9, 0.95)}
_STAGE1_TRAINS = ("und_aligner", "gen_aligner", "gen_head", "gen_embed")

# Presets are data: keyword arguments of `Stage`.
STAGES: dict[str, dict[str, Any]] = {
    "stage1": {**_JANUS_PRO_COMMON, "trainable": _STAGE1_TRAINS, "lr": 1e-3, "warmup_steps": 600,
               "steps": 20_000, "global_batch": 256, "data_ratio": (1, 0, 3)},
    "stage2": {**_JANUS_PRO_COMMON, "trainable": (*_STAGE1_TRAINS, "llm"), "lr": 1e-4, "warmup_steps": 5000,
               "steps": 360_000, "global_batch": 512, "data_ratio": (2, 3, 5)},
    "stage3": {**_JANUS_PRO_COMMON, "trainable": (*_STAGE1_TRAINS, "llm", "und_encoder"), "lr": 4e-5,
               "warmup_steps": 0, "steps": 80_000, "global_batch": 128, "data_ratio": (5, 1, 4)},
    # Parts trained on their own, before assembly.
    "vq": {"task": "vq", "lr": 1e-4, "schedule": "constant", "warmup_steps": 0, "steps": 100_000,
           "global_batch": 128, "weight_decay": 0.05},
    "siglip": {"task": "siglip", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 2000, "steps": 100_000,
               "global_batch": 1024, "weight_decay": 1e-4},
    "text": {"task": "text", "lr": 3e-4, "schedule": "cosine", "warmup_steps": 2000, "min_lr_ratio": 0.1,
             "steps": 100_000, "global_batch": 256, "weight_decay": 0.1},
}
STAGES["stage3-7b"] = {**STAGES["stage3"], "steps": 40_000}


def stage_from_name(name: str, **overrides: Any) -> Stage:
    """A preset with field overrides, e.g. ``stage_from_name("stage1", lr=5e-4, steps=100)``."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    known = {f.name for f in dataclasses.fields(Stage)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"stage {name!r}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Stage(**{"name": name, **STAGES[name], **overrides})


__all__ = ["Stage", "STAGES", "NEVER_TRAINED", "stage_from_name"]
