"""Speculative Jacobi decoding is lossless: greedy tokens equal plain decoding exactly, and
sampled tokens follow the plain sampler's distribution (a chi-square test against the exact
distribution, which fails when the acceptance rule is broken)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

import openjanus.inference.runner as gen
from openjanus.inference.engine import generate_image_tokens, run_jobs
from openjanus.inference.runner import BatchRunner, image_job
from openjanus.requests import ImageRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ([1, 5, 6, 7, 8], [1, 40, 41, 2], [1, *range(10, 40), 2])


@pytest.mark.parametrize("seed", [1, 2])
def test_greedy_tokens_equal_plain_decoding(seed):
    model = build_tiny(seed=seed)
    for prompt in PROMPTS:
        plain = generate_image_tokens(model, prompt, 3, n=2, sampling=GREEDY)
        for window in (1, 3, 8):
            jacobi = generate_image_tokens(model, prompt, 3, n=2, sampling=GREEDY, jacobi=window)
            assert torch.equal(plain, jacobi), (prompt, window)


def test_greedy_through_the_engine_and_fewer_forward_passes(tiny_pipeline):
    for prompt in ("a red circle", "two blue squares left of a green star"):
        plain = tiny_pipeline.generate(ImageRequest(prompt, n=2, sampling=GREEDY))
        fast = tiny_pipeline.generate(ImageRequest(prompt, n=2, sampling=GREEDY, jacobi=4))
        assert torch.equal(plain.tokens, fast.tokens)
        assert fast.cost.forward_passes <= 2 * plain.cost.forward_passes  # per image: never more than plain


# --- the sampled distribution -----------------------------------------------------------------

TOP_K = 3  # a small support, so that a few thousand samples pin the joint distribution down
CFG = 5.0


def exact_first_two(model, prompt):
    """P(t0, t1) of plain CFG sampling with top-k, by full recomputation: {(t0, t1): p}."""
    rows = torch.tensor([prompt, gen.unconditional_prompt(prompt, 3)])
    h = model.embed_text(rows)

    def dist(h):
        hidden = model.llm(h, torch.arange(h.shape[1]).expand(2, -1))[:, -1]
        lg = model.image_logits(hidden)
        guided = lg[1] + CFG * (lg[0] - lg[1])
        return torch.softmax(gen.filter_logits(guided[None], TOP_K, None), -1)[0].double()

    with torch.no_grad():
        p0 = dist(h)
        joint = {}
        for t0 in p0.nonzero().flatten().tolist():
            p1 = dist(torch.cat([h, model.embed_image_tokens(torch.tensor([t0, t0]))[:, None]], 1))
            for t1 in p1.nonzero().flatten().tolist():
                joint[(t0, t1)] = float(p0[t0] * p1[t1])
    return joint


def jacobi_first_two(model, prompt, n, seed):
    g = torch.Generator().manual_seed(seed)
    sampling = SamplingParams(temperature=1.0, top_k=TOP_K)
    counts: dict[tuple[int, int], int] = {}
    per_run = 16
    for _ in range(n // per_run):
        # steps=2: the first token is drawn exactly, the second is a draft verified in one window.
        jobs = [image_job(prompt, 3, 1, CFG, sampling, g, 2, jacobi=3) for _ in range(per_run)]
        for s in run_jobs(BatchRunner(model, rows=2 * per_run), jobs):
            key = tuple(s.tokens[0].tolist())
            counts[key] = counts.get(key, 0) + 1
    return counts


def chi_square(counts, joint) -> float:
    n = sum(counts.values())
    if not set(counts) <= set(joint):
        return float("inf")  # a pair the plain sampler can never produce
    return sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in joint.items())


# Critical value of chi-square with 8 degrees of freedom (9 pairs) at p = 0.001.
CRITICAL = 26.12
N_SAMPLES = 2400
PROMPT = [1, 9, 8, 7, 6, 5]


@pytest.fixture(scope="module")
def model_and_joint():
    model = build_tiny(seed=3)
    return model, exact_first_two(model, PROMPT)


def test_sampled_tokens_follow_the_plain_distribution(model_and_joint):
    model, joint = model_and_joint
    assert len(joint) == TOP_K**2
    assert chi_square(jacobi_first_two(model, PROMPT, N_SAMPLES, seed=0), joint) < CRITICAL


@pytest.mark.parametrize("broken", ["always accept", "resample from p"])
def test_the_distribution_test_fails_when_the_rule_is_broken(model_and_joint, monkeypatch, broken):
    model, joint = model_and_joint
    if broken == "always accept":
        monkeypatch.setattr(gen, "accept_drafts", lambda p, q, u: torch.ones_like(p, dtype=torch.bool))
    else:
        monkeypatch.setattr(gen, "residual", lambda p, q: p)
    assert chi_square(jacobi_first_two(model, PROMPT, N_SAMPLES, seed=0), joint) > CRITICAL
