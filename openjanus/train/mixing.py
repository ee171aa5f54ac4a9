"""Mixing the three data sources by ratio (und : text : gen), per sample.

The ratio counts samples, the reading of the papers' "data ratio": a 5:1:4 stage draws five
understanding samples for each text-only one and four text-to-image ones, whatever their
lengths. The draw is random but never strays far from the ratio: source s may be drawn at
draw n+1 only if it has been drawn at most (n+1)*p_s times so far. With K active sources the
count of every source then stays within [n*p_s - (K-1), n*p_s + 1] after any n draws, so the
mix holds within two samples at every step, not just on average.

Randomness is counter-based (the generator for draw n is seeded from (seed, n)), so the state
is a handful of integers and a resumed run draws exactly what the original would have.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from openjanus.config import ConfigError
from openjanus.train.batch import DATA_KINDS

__all__ = ["Mixer", "parse_ratio", "derive_seed"]


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from any tuple of ints and strings, stable across processes and runs
    (Python's `hash` is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def parse_ratio(ratio: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """{"und": w, "text": w, "gen": w} from a mapping or an (und, text, gen) sequence; weights
    must be non-negative and not all zero. A 0 (or missing) weight disables that source."""
    if isinstance(ratio, Mapping):
        unknown = sorted(set(ratio) - set(DATA_KINDS))
        if unknown:
            raise ConfigError(f"data ratio: unknown source(s) {', '.join(unknown)}; use {', '.join(DATA_KINDS)}")
        weights = {name: float(ratio.get(name, 0.0)) for name in DATA_KINDS}
    else:
        values = list(ratio)
        if len(values) != len(DATA_KINDS):
            raise ConfigError(f"data ratio needs {len(DATA_KINDS)} values ({' : '.join(DATA_KINDS)}), got {values}")
        weights = {name: float(v) for name, v in zip(DATA_KINDS, values)}
    if any(w < 0 or w != w for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"data ratio {weights} must be non-negative and not all zero")
    return weights


class Mixer:
    """Picks the source of each next sample; deterministic given (seed, salt), resumable."""

    def __init__(self, ratio: Mapping[str, float] | Sequence[float], seed: int = 0, salt: object = 0) -> None:
        self.weights = parse_ratio(ratio)
        self.active = [name for name in DATA_KINDS if self.weights[name] > 0]
        # Exact rationals: the admissibility test compares counts with n*p_s at its boundary.
        self._w = {name: Fraction(self.weights[name]) for name in self.active}
        self._total = sum(self._w.values())
        self.seed = seed
        self.salt = salt
        self.n = 0
        self.counts = {name: 0 for name in self.active}

    @property
    def proportions(self) -> dict[str, float]:
        """Target share of each active source."""
        return {name: float(self._w[name] / self._total) for name in self.active}

    def next(self) -> str:
        """The source of the next sample."""
        n1 = self.n + 1
        allowed = [s for s in self.active if self.counts[s] * self._total <= n1 * self._w[s]]
        rng = random.Random(derive_seed("mix", self.seed, self.salt, tuple(self.weights.values()), self.n))
        weights = [float(self._w[s]) for s in allowed]
        name = rng.choices(allowed, weights=weights)[0]
        self.counts[name] += 1
        self.n = n1
        return name

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "counts": dict(self.counts), "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume. A state saved under another ratio restarts the counts (the bound then holds
        for the new ratio from here on)."""
        if dict(state["weights"]) != self.weights:
            self.n, self.counts = 0, {name: 0 for name in self.active}
            return
        self.n = int(state["n"])
        self.counts = {name: int(state["counts"].get(name, 0)) for name in self.active}
