"""`jacobi="auto"`: the speculative Jacobi window, or plain decoding, that makes the most image
tokens per second on this model and machine, from what it measures.

A window of w drafts feeds w + 1 positions per row in a pass and keeps on average
E(w) = 1 + a + a^2 + ... + a^w tokens, a being the chance that a draft is kept given the one
before it was (a geometric model of the accepted run). Plain decoding keeps 1 token for a pass
of 1 position. So the rate of window w is E(w) / cost(w + 1 positions) against 1 / cost(1),
for the rows the request's images take. The costs are timed once per row count on scratch rows
of the model (memory-bound models: a 17-position pass costs little more than one; compute-bound
ones: many times more); `a` comes from the drafts the engine has verified so far (greedy and
sampled apart), starting from a prior of one in two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask

__all__ = ["WINDOWS", "WindowChooser", "expected_tokens", "pass_seconds"]

WINDOWS = (0, 1, 2, 4, 8, 16)  # 0: plain decoding


def expected_tokens(accept: float, window: int) -> float:
    """Tokens a pass keeps on average with `window` drafts when each is kept with probability
    `accept` after the one before it: 1 + a + ... + a^window."""
    return sum(accept ** i for i in range(window + 1))


@torch.inference_mode()
def pass_seconds(model: Janus, rows: int, positions: int, context: int, repeats: int = 5) -> float:
    """Seconds of one decode pass feeding `positions` positions to each of `rows` rows that hold
    `context` cached positions (best of `repeats` after a warm-up: the machine may be shared)."""
    llm = model.llm
    ref = llm.embed.weight
    cfg = llm.cfg
    cache = KVCache.allocate(cfg.n_layers, rows, context + positions, cfg.n_kv_heads, cfg.head_dim,
                             device=ref.device, dtype=ref.dtype)
    x = torch.randn(rows, positions, cfg.dim, generator=torch.Generator().manual_seed(0)).to(ref.device, ref.dtype)
    slots = torch.arange(context, context + positions, device=ref.device)
    mask = cache_mask(slots, torch.ones(rows, context + positions, dtype=torch.bool, device=ref.device))

    def once() -> float:
        if ref.device.type == "cuda":
            torch.cuda.synchronize(ref.device)
        t = time.perf_counter()
        llm(x, slots.expand(rows, -1), mask=mask, cache=cache, slots=slots)
        if ref.device.type == "cuda":
            torch.cuda.synchronize(ref.device)
        return time.perf_counter() - t

    once()
    return min(once() for _ in range(repeats))


class WindowChooser:
    """Chooses the window of `jacobi="auto"` requests (see the module doc); thread-safe.

    `draft_stats(greedy)` gives (drafts kept, drafts verified) so far: the runner's counters.
    """

    def __init__(self, model: Janus, draft_stats: Callable[[bool], tuple[int, int]],
                 windows: tuple[int, ...] = WINDOWS, prior: tuple[int, int] = (1, 2)) -> None:
        self.model = model
        self.draft_stats = draft_stats
        self.windows = windows
        self.prior = prior
        n_gen = model.cfg.num_gen_tokens
        # A typical row mid-image: a prompt of about 64 tokens and half the image.
        self.context = min(64 + n_gen // 2, model.cfg.llm.max_seq_len - max(windows) - 1)
        self._costs: dict[int, dict[int, float]] = {}
        self._lock = threading.Lock()

    def costs(self, rows: int) -> dict[int, float]:
        """Seconds of a pass per window on `rows` rows (measured on first use)."""
        with self._lock:
            if rows not in self._costs:
                self._costs[rows] = {w: pass_seconds(self.model, rows, w + 1, self.context) for w in self.windows}
            return self._costs[rows]

    def accept_rate(self, greedy: bool) -> float:
        kept, verified = self.draft_stats(greedy)
        return (self.prior[0] + kept) / (self.prior[1] + verified)

    def rates(self, images: int, greedy: bool) -> dict[int, float]:
        """Expected image tokens per second per window for `images` images decoded together."""
        costs = self.costs(2 * images)
        a = self.accept_rate(greedy)
        return {w: (expected_tokens(a, w) if w else 1.0) / costs[w] for w in self.windows}

    def choose(self, images: int, greedy: bool) -> int:
        """The window with the highest expected rate; 0 (plain decoding) unless a window beats it."""
        rates = self.rates(images, greedy)
        best = max(rates, key=rates.get)
        return best if rates[best] > rates[0] else 0
