"""Sampling as small pure functions on logits: filtering, drawing, classifier-free guidance,
and speculative (Jacobi) decoding's accept test and residual.

Each takes a seeded `torch.Generator` where it draws, so a request's tokens depend on its own
random stream only; nothing here knows about rows, caches or requests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from openjanus.requests import SamplingParams

__all__ = ["filter_logits", "sample", "non_finite", "cfg_combine", "accept_drafts", "residual"]


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Mask logits outside the top-k and the top-p nucleus with -inf (applied in that order)."""
    if top_k:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """[B, V] logits -> [B] token ids. Greedy at temperature 0, otherwise one multinomial call
    for all B rows (as the official sampler, so a seed gives the official tokens)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def non_finite(logits: Tensor, dim: int | None = None) -> Tensor:
    """True where `logits` (over `dim`, or all of them) hold a NaN or an infinity, on the device.

    Through their sum: any NaN or infinity makes the sum non-finite (NaN + x, inf - inf = NaN),
    and finite logits only overflow it beyond ~1e34, which a working model never gives. One
    reduction instead of isfinite's four passes: ~0.15 ms a step less on a 16384-way head.
    """
    total = logits.sum() if dim is None else logits.sum(dim)
    return ~torch.isfinite(total)


def cfg_combine(logits: Tensor, weight: float) -> Tensor:
    """Interleaved [2B, V] rows (cond, uncond, cond, ...) -> guided [B, V] = u + w (c - u)."""
    cond, uncond = logits[0::2], logits[1::2]
    return uncond + weight * (cond - uncond)


def accept_drafts(p_draft: Tensor, q_draft: Tensor, uniform: Tensor) -> Tensor:
    """Speculative sampling's test: keep a draft drawn from q with probability min(1, p/q).
    All [k]: the target's and the proposal's probability of each draft, and U(0, 1) draws."""
    return uniform * q_draft < p_draft


def residual(p: Tensor, q: Tensor) -> Tensor:
    """Where to draw from after a rejection: normalise(max(0, p - q)) (unnormalised here)."""
    r = (p - q).clamp(min=0)
    return r if float(r.sum()) > 0 else p  # p == q up to rounding: then p itself
