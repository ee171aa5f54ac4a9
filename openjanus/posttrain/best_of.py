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
    wide = [dataclasses.replace(r, n=r.n * n) for r in requests]
    results = pipe.run(wide)
    out, scores = [], []
    for req, res in zip(requests, results):
        rating = verifier([req.prompt] * len(res.images), res.images)
        order = sorted(range(len(rating)), key=lambda i: -rating[i])[:req.n]
        out.append(dataclasses.replace(res, request=req, images=[res.images[i] for i in order],
                                       tokens=res.tokens[order]))
        scores.append([rating[i] for i in order])
    return out, scores
