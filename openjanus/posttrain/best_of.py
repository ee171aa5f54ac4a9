"""Best-of-N with self-verification at inference: sample N images per image asked for, keep the
ones the model itself rates highest (reward (b): P("Yes") / (P("Yes") + P("No")) for "Does this
image show: <prompt>?"), so no other model is needed.

    results, scores = best_of(pipe, [ImageRequest("a red star", n=2, seed=0)], n=4)   # 8 sampled, 2 kept

The candidates are what a plain request for N x n images with the same seed returns, so a
best-of-N result is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from openjanus.errors import UserError
from openjanus.posttrain.rewards import SelfReward
from openjanus.requests import ImageRequest, ImageResult


def best_of(pipe: Any, requests: Sequence[ImageRequest], n: int,
            verifier: SelfReward | None = None) -> tuple[list[ImageResult], list[list[float]]]:
    """For each request, `request.n * n` candidates, the `request.n` with the highest self-rating
    kept (best first). Returns the results and the kept images' ratings."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"best-of must be a positive integer, got {n!r}")
    verifier = verifier or SelfReward(pipe.model, pipe.processor)
    results = pipe.run([widened(r, n) for r in requests])
    out, scores = [], []
    for req, res in zip(requests, results):
        kept, rating = keep_best(verifier, req, res)
        out.append(kept)
        scores.append(rating)
    return out, scores


def widened(request: ImageRequest, n: int) -> ImageRequest:
    """The request for the candidates: `n` times the images, the same seed."""
    return dataclasses.replace(request, n=request.n * n)


def keep_best(verifier: SelfReward, request: ImageRequest, candidates: ImageResult) -> tuple[ImageResult, list[float]]:
    """The `request.n` candidates the model rates highest (best first), and their ratings."""
    rating = verifier([request.prompt] * len(candidates.images), candidates.images)
    order = sorted(range(len(rating)), key=lambda i: -rating[i])[:request.n]
    # The request as it ran (the model's defaults filled in), for the n asked.
    ran = dataclasses.replace(candidates.request, n=request.n)
    kept = dataclasses.replace(candidates, request=ran, images=[candidates.images[i] for i in order],
                               tokens=candidates.tokens[order],
                               seeds=None if candidates.seeds is None else [candidates.seeds[i] for i in order])
    return kept, [rating[i] for i in order]
