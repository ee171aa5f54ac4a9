"""`jacobi="auto"`: the speculative Jacobi window, or plain decoding, that makes the most image
tokens per second on this model and machine, from what it measures.

A window of w drafts feeds w + 1 positions per row in a pass and keeps on average
E(w) = 1 + a + a^2 + ... + a^w tokens, a being the chance that a draft is kept given the one
before it was (a geometric model of the accepted run); a request of several images waits for
its slowest, which keeps fewer (`expected_tokens`). Plain decoding keeps 1 token for a pass of
1 position. So the rate of window w is E(w) / cost(w) against 1 / cost(0), less what a window
adds besides its steps: each image of a Jacobi request is its own job, prefilled in a pass of
its own (batch invariance), where plain decoding prefills all the images in one, so a window
pays (images - 1) extra prefills over the image (`prefill_seconds`). cost(w) is a whole runner step for
the request's images, timed once per image count on a scratch runner of the model: the forward
pass of w + 1 positions per row (memory-bound models: 17 positions cost little more than one;
compute-bound ones: many times more), the image head over its outputs, the sampling or each
image's verification, and the runner's own work, which a small model's step is mostly. `a`
comes from the drafts the engine has verified so far (greedy and sampled apart), starting from
a prior of one in two.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from statistics import NormalDist

import torch

from openjanus.inference.runner import BatchRunner, image_job
from openjanus.model.janus import Janus
from openjanus.requests import SamplingParams

__all__ = ["WINDOWS", "WindowChooser", "expected_tokens", "step_seconds", "prefill_seconds"]

WINDOWS = (0, 1, 2, 4, 8, 16)  # 0: plain decoding
# A window must promise this much more than plain decoding: its costs are timed once, on a
# machine that may be shared, so a near-tie is no reason to leave plain decoding.
MARGIN = 1.1


def expected_tokens(accept: float, window: int, images: int = 1, length: int = 576) -> float:
    """Tokens per pass of a request of `images` images of `length` tokens each, with `window`
    drafts per pass, each kept with probability `accept` after the one before it was.

    One image keeps 1 + a + ... + a^w tokens a pass on average. A request of several images
    takes as many passes as its slowest image: after P passes an image holds about P E tokens,
    give or take sigma sqrt(P) (sigma^2 the variance of one pass's tokens), and the slowest of n
    lags the mean by z_n sigma sqrt(P), z_n the expected largest of n standard normals. So P
    solves P E - z_n sigma sqrt(P) = length."""
    mean = sum(accept ** k for k in range(window + 1))
    if images == 1 or window == 0:
        return mean
    second = 1 + sum((2 * k + 1) * accept ** k for k in range(1, window + 1))  # E[(1 + min(G, w))^2]
    sigma = max(second - mean ** 2, 0.0) ** 0.5
    z = NormalDist().inv_cdf((images - 0.375) / (images + 0.25))  # Blom's approximation
    root = (z * sigma + (z * z * sigma * sigma + 4 * mean * length) ** 0.5) / (2 * mean)
    return length / root ** 2


def step_seconds(model: Janus, images: int, window: int, greedy: bool, context: int, repeats: int = 5) -> float:
    """Seconds of one runner step for `images` images with `window` drafts each (0: plain
    decoding) whose rows hold about `context` cached positions: everything a real step does
    (the forward pass over 2 x images rows of window + 1 positions, the image head, the sampling
    or each image's verification, the runner's own work), on a scratch runner. Best of `repeats`
    after a warm-up step: the machine may be shared."""
    runner = BatchRunner(model, rows=2 * images)
    sampling = SamplingParams(temperature=0.0 if greedy else 1.0)
    prompt = [0] * context
    steps = model.cfg.num_gen_tokens
    if window:
        # The sampler auto runs by default (ImageRequest.jacobi_sampler); the others cost the same.
        jobs = [image_job(prompt, 0, 1, 5.0, sampling, torch.Generator().manual_seed(i), steps, jacobi=window,
                          jacobi_sampler="gumbel") for i in range(images)]
    else:
        jobs = [image_job(prompt, 0, images, 5.0, sampling, torch.Generator().manual_seed(0), steps)]
    runner.add_all([(job, 2 * i) for i, job in enumerate(jobs)])
    device = runner.device
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        finished = runner.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if finished:  # the last step feeds nothing: not a full step
            break
        times.append(time.perf_counter() - t)
    # The first step is a warm-up unless it is the only full one (a short image, a long window).
    return min(times[1:] or times)


def prefill_seconds(model: Janus, context: int, repeats: int = 5) -> float:
    """Seconds to prefill one image job (its 2 rows of `context` positions) on a scratch runner:
    what each further image of a Jacobi request costs beyond plain decoding. Best of `repeats`
    (the first adds allocate the cache)."""
    runner = BatchRunner(model, rows=2 * (repeats + 1))
    sampling = SamplingParams(temperature=1.0)
    device = runner.device
    times = []
    for i in range(repeats + 1):
        job = image_job([0] * context, 0, 1, 5.0, sampling, torch.Generator().manual_seed(i),
                        model.cfg.num_gen_tokens, jacobi=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        runner.add_all([(job, 2 * i)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return min(times[1:])


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
        # A typical prompt (the rows then hold it and the image as it grows).
        self.context = min(32, model.cfg.llm.max_seq_len - n_gen)
        self._costs: dict[tuple[int, bool], dict[int, float]] = {}
        self._prefill: float | None = None
        self._lock = threading.Lock()

    def costs(self, images: int, greedy: bool) -> dict[int, float]:
        """Seconds of a step per window for `images` images (measured on first use)."""
        key = (images, greedy)
        with self._lock:
            if key not in self._costs:
                self._costs[key] = {w: step_seconds(self.model, images, w, greedy, self.context) for w in self.windows}
            return self._costs[key]

    def prefill_cost(self) -> float:
        """Seconds of one image job's own prefill (measured on first use)."""
        with self._lock:
            if self._prefill is None:
                self._prefill = prefill_seconds(self.model, self.context)
            return self._prefill

    def accept_rate(self, greedy: bool) -> float:
        kept, verified = self.draft_stats(greedy)
        return (self.prior[0] + kept) / (self.prior[1] + verified)

    def rates(self, images: int, greedy: bool) -> dict[int, float]:
        """Expected image tokens per second and image per window for `images` images decoded together."""
        costs = self.costs(images, greedy)
        a = self.accept_rate(greedy)
        n_gen = self.model.cfg.num_gen_tokens
        extra = (images - 1) * self.prefill_cost() if images > 1 else 0.0  # a window's own prefills

        def rate(w: int) -> float:
            seconds = n_gen / expected_tokens(a, w, images, n_gen) * costs[w] + (extra if w else 0.0)
            return n_gen / seconds

        return {w: rate(w) for w in self.windows}

    def choose(self, images: int, greedy: bool) -> int:
        """The window with the highest expected rate; 0 (plain decoding) unless a window beats it
        by `MARGIN`."""
        rates = self.rates(images, greedy)
        best = max(rates, key=rates.get)
        return best if rates[best] > MARGIN * rates[0] else 0
