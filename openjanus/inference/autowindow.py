"""`jacobi="auto"`: the speculative Jacobi window, or plain decoding, that makes the most image
tokens per second on this model and machine, from what it measures.

A window of w drafts feeds w + 1 positions per row in a pass and keeps on average
E(w) = 1 + a + a^2 + ... + a^w tokens, a being the chance that a draft is kept given the one
before it was (a geometric model of the accepted run). Plain decoding keeps 1 token for a pass
of 1 position. So the rate of window w is E(w) / cost(w) against 1 / cost(0). cost(w) is a whole step for the
request's images, timed once per image count on scratch rows of the model: the forward pass of
w + 1 positions per row (memory-bound models: 17 positions cost little more than one;
compute-bound ones: many times more), the image head over its outputs, and the sampling or each
image's verification. `a` comes from the drafts the engine has verified so far (greedy and
sampled apart), starting from a prior of one in two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from openjanus.inference.sampling import jacobi_step, sample
from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask
from openjanus.requests import SamplingParams

__all__ = ["WINDOWS", "WindowChooser", "expected_tokens", "step_seconds"]

WINDOWS = (0, 1, 2, 4, 8, 16)  # 0: plain decoding


def expected_tokens(accept: float, window: int) -> float:
    """Tokens a pass keeps on average with `window` drafts when each is kept with probability
    `accept` after the one before it: 1 + a + ... + a^window."""
    return sum(accept ** i for i in range(window + 1))


@torch.inference_mode()
def step_seconds(model: Janus, images: int, window: int, greedy: bool, context: int, repeats: int = 5) -> float:
    """Seconds of one decode step for `images` images with `window` drafts each (0: plain
    decoding), on scratch rows holding `context` cached positions: the forward pass over
    2 x images rows of window + 1 positions, the image head over its outputs, and the sampling
    (plain: one guided draw per image; Jacobi: each image's verify-and-redraw step). Best of
    `repeats` after a warm-up: the machine may be shared."""
    llm = model.llm
    ref = llm.embed.weight
    cfg = llm.cfg
    rows, positions = 2 * images, window + 1
    cache = KVCache.allocate(cfg.n_layers, rows, context + positions, cfg.n_kv_heads, cfg.head_dim,
                             device=ref.device, dtype=ref.dtype)
    g = torch.Generator(device=ref.device).manual_seed(0)
    x = torch.randn(rows, positions, cfg.dim, generator=g, device=ref.device).to(ref.dtype)
    slots = torch.arange(context, context + positions, device=ref.device)
    mask = cache_mask(slots, torch.ones(rows, context + positions, dtype=torch.bool, device=ref.device))
    sampling = SamplingParams(temperature=0.0 if greedy else 1.0)
    drafts = torch.zeros(window, dtype=torch.long, device=ref.device)

    def once() -> float:
        if ref.device.type == "cuda":
            torch.cuda.synchronize(ref.device)
        t = time.perf_counter()
        out = llm(x, slots.expand(rows, -1), mask=mask, cache=cache, slots=slots)
        logits = model.image_logits(out.flatten(0, 1)).view(images, 2, positions, -1)  # [n, cond/uncond, m, V]
        guided = logits[:, 1] + 5.0 * (logits[:, 0] - logits[:, 1])  # [n, m, V]
        if not window:
            sample(guided[:, 0], sampling, g)
        for image in guided if window else []:
            probs = None if greedy else torch.softmax(image.float(), -1)
            proposals = None if greedy else probs[1:]
            jacobi_step(probs, image.argmax(-1) if greedy else None, drafts, proposals, model.cfg.num_gen_tokens,
                        window, g)
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
        self._costs: dict[tuple[int, bool], dict[int, float]] = {}
        self._lock = threading.Lock()

    def costs(self, images: int, greedy: bool) -> dict[int, float]:
        """Seconds of a step per window for `images` images (measured on first use)."""
        key = (images, greedy)
        with self._lock:
            if key not in self._costs:
                self._costs[key] = {w: step_seconds(self.model, images, w, greedy, self.context) for w in self.windows}
            return self._costs[key]

    def accept_rate(self, greedy: bool) -> float:
        kept, verified = self.draft_stats(greedy)
        return (self.prior[0] + kept) / (self.prior[1] + verified)

    def rates(self, images: int, greedy: bool) -> dict[int, float]:
        """Expected image tokens per second and image per window for `images` images decoded together."""
        costs = self.costs(images, greedy)
        a = self.accept_rate(greedy)
        return {w: (expected_tokens(a, w) if w else 1.0) / costs[w] for w in self.windows}

    def choose(self, images: int, greedy: bool) -> int:
        """The window with the highest expected rate; 0 (plain decoding) unless a window beats it."""
        rates = self.rates(images, greedy)
        best = max(rates, key=rates.get)
        return best if rates[best] > rates[0] else 0
