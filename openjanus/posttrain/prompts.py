"""Prompt streams for online post-training: step k's prompts and sample seeds are a function
of (seed, k) alone, so a resumed run draws exactly what the killed one would have."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openjanus.errors import UserError
from openjanus.shapes.spec import Spec, SpecError
from openjanus.shapes.tasks import HELDOUT_TAGS, sample_spec
from openjanus.shapes.world import rng_for


@dataclass(frozen=True)
class Prompt:
    text: str
    spec: Spec | None  # for the shapes reward
    tag: str = ""


class PromptStream:
    """Prompts per step; `state_dict` holds the next step (checkpoints restore it)."""

    def __init__(self, source: str, per_step: int, seed: int, split: str = "train",
                 tags: dict[str, float] | None = None) -> None:
        self.per_step, self.seed, self.split = per_step, seed, split
        self.step = 0
        self._records: list[Prompt] | None = None
        if source == "shapes":
            weights = {t: w for t, w in (tags or {}).items() if w > 0}
            if split == "heldout":
                weights = {t: w for t, w in weights.items() if t in HELDOUT_TAGS}
                if not weights:
                    raise UserError("split heldout: choose tags with held-out compositions")
            self._tags = list(weights)
            p = np.array([weights[t] for t in self._tags], dtype=float)
            self._p = p / p.sum()
        else:
            self._records = read_prompt_file(source)

    def at(self, step: int) -> list[Prompt]:
        """The prompts of step `step` (0-based)."""
        rng = rng_for(self.seed, 977, step)
        if self._records is not None:
            idx = rng.choice(len(self._records), size=self.per_step, replace=len(self._records) < self.per_step)
            return [self._records[int(i)] for i in idx]
        out = []
        for _ in range(self.per_step):
            tag = self._tags[int(rng.choice(len(self._tags), p=self._p))]
            spec = sample_spec(rng, tag, self.split)
            out.append(Prompt(spec.prompt, spec, tag))
        return out

    def seeds(self, step: int) -> list[int]:
        """One sampling seed per prompt of step `step`."""
        rng = rng_for(self.seed, 978, step)
        return [int(s) for s in rng.integers(0, 2**62, size=self.per_step)]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """JSONL of {"prompt": ...}; GenEval metadata records (tag, include) keep their spec."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise UserError(f"{path}:{n}: each line needs a non-empty \"prompt\" string")
        spec = None
        if "include" in rec:
            try:
                spec = Spec.from_geneval(rec, f"{path}:{n}")
            except SpecError as e:
                raise UserError(str(e)) from None
        out.append(Prompt(rec["prompt"], spec, str(rec.get("tag", ""))))
    if not out:
        raise UserError(f"{path}: no prompts")
    return out
