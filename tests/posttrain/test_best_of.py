"""Best-of-N with self-verification: the kept images are the candidates the model rates highest,
taken from exactly what a plain request for N x n images with the same seed returns."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from openjanus.errors import UserError
from openjanus.posttrain.best_of import best_of
from openjanus.posttrain.rewards import SelfReward
from openjanus.requests import ImageRequest


def test_best_of_keeps_the_highest_self_rated_candidates(tiny_pipeline, one_thread):
    pipe = tiny_pipeline
    verifier = SelfReward(pipe.model, pipe.processor)
    reqs = [ImageRequest("a red circle", n=2, seed=4), ImageRequest("two blue stars", n=1, seed=5)]
    kept, scores = best_of(pipe, reqs, 3, verifier)
    plain = pipe.run([ImageRequest("a red circle", n=6, seed=4), ImageRequest("two blue stars", n=3, seed=5)])
    for req, k, s, p in zip(reqs, kept, scores, plain):
        # The request as it ran (the model's defaults filled in, as every result carries it), for n asked.
        assert k.request == dataclasses.replace(p.request, n=req.n)
        assert k.tokens.shape[0] == req.n == len(k.images) == len(s)
        rating = verifier([req.prompt] * len(p.images), p.images)
        top = sorted(range(len(rating)), key=lambda i: -rating[i])[:req.n]
        assert torch.equal(k.tokens, p.tokens[top])
        assert s == sorted(s, reverse=True) and s == [rating[i] for i in top]


def test_best_of_must_be_positive(tiny_pipeline):
    with pytest.raises(UserError, match="best-of must be a positive integer"):
        best_of(tiny_pipeline, [ImageRequest("x")], 0)


def test_generate_best_of_writes_the_kept_images_and_their_ratings(tmp_path, tiny_checkpoint):
    import json

    from openjanus.cli import main

    assert main(["generate", "a red circle", "--model", str(tiny_checkpoint), "-n", "2", "--best-of", "3",
                 "--out", str(tmp_path / "o")]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["best_of"] == 3 and len(run["images"]) == 2
    ratings = [im["self_rating"] for im in run["images"]]
    assert ratings == sorted(ratings, reverse=True) and all(0 < r < 1 for r in ratings)
