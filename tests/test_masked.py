"""Masked completion in the runner: known tokens are fed, never sampled, and come back exactly;
runs of known tokens take one forward pass; a masked job's tokens do not depend on what shares
its batch; with nothing known it is a plain job; Jacobi treats known tokens as exact drafts.

Comparisons are exact, as in test_engine.py: each job has its own generator and its own rows,
and fp32 decode steps are per-row arithmetic.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny

from openjanus.inference.engine import run_jobs
from openjanus.inference.runner import BatchRunner, Job, image_job
from openjanus.processing import unconditional_prompt
from openjanus.requests import SamplingParams

GREEDY = SamplingParams(temperature=0.0)
SAMPLED = SamplingParams(temperature=1.0, top_k=50)
PROMPT = [1, 5, 6, 7, 8, 2]
PAD = 3


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=3)


def steps_of(model) -> int:
    return model.cfg.num_gen_tokens


def masked_job(model, known: torch.Tensor, sampling=GREEDY, seed=0, jacobi=0, prompt=PROMPT, branches=1,
               sampler="mcsjd") -> Job:
    base = image_job(prompt, PAD, known.shape[0], 5.0, sampling, torch.Generator().manual_seed(seed),
                     steps_of(model), jacobi=jacobi, branches=branches)
    return Job("image", base.prompt_ids, base.steps, sampling, base.generator, guidance=5.0, jacobi=jacobi,
               known=known, branches=branches, jacobi_sampler=sampler)


def known_tokens(model, pattern: torch.Tensor, n: int = 2, seed: int = 7) -> torch.Tensor:
    """[n, steps]: random known tokens where `pattern` [steps] is False, -1 where True."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.vq.codebook_size, (n, pattern.numel()), generator=g)
    return tokens.masked_fill(pattern, -1)


def patterns(steps: int) -> dict[str, torch.Tensor]:
    half = steps // 2
    idx = torch.arange(steps)
    return {"lower half": idx >= half, "upper half": idx < half, "stripes": (idx // 3) % 2 == 1,
            "every other": idx % 2 == 0, "one token": idx == steps - 5, "last token": idx == steps - 1}


@torch.no_grad()
def reference_greedy(model, known: torch.Tensor) -> torch.Tensor:
    """Greedy masked completion by full recomputation at every sampled position (no cache)."""
    rows = torch.tensor([PROMPT, unconditional_prompt(PROMPT, PAD)] * known.shape[0])
    out = known.clone()
    for t in range(known.shape[1]):
        if out[0, t] >= 0:
            continue
        h = torch.cat([model.embed_text(rows), model.embed_image_tokens(out[:, :t].repeat_interleave(2, 0))], 1)
        hidden = model.llm(h, torch.arange(h.shape[1]).expand(h.shape[0], -1))[:, -1]
        lg = model.image_logits(hidden)
        out[:, t] = (lg[1::2] + 5.0 * (lg[0::2] - lg[1::2])).argmax(-1)
    return out


@pytest.mark.parametrize("name", ["lower half", "upper half", "stripes", "one token"])
def test_greedy_masked_completion_equals_full_recomputation(model, name):
    known = known_tokens(model, patterns(steps_of(model))[name])
    (state,) = run_jobs(BatchRunner(model, rows=4), [masked_job(model, known)])
    assert torch.equal(state.tokens, reference_greedy(model, known))


@pytest.mark.parametrize("name", list(patterns(16)))
def test_known_tokens_come_back_exactly_and_runs_take_one_pass(model, name):
    steps = steps_of(model)
    pattern = patterns(steps)[name]
    known = known_tokens(model, pattern)
    (state,) = run_jobs(BatchRunner(model, rows=4), [masked_job(model, known, SAMPLED, seed=1)])
    assert torch.equal(state.tokens[:, ~pattern], known[:, ~pattern])
    assert int(state.tokens.min()) >= 0
    # one pass for the prompt with the known prefix, then one per sampled token except the last
    assert state.forward_passes == int(pattern.sum())


def test_nothing_known_is_a_plain_job(model):
    everything = torch.full((3, steps_of(model)), -1)
    for sampling in (GREEDY, SAMPLED):
        plain = image_job(PROMPT, PAD, 3, 5.0, sampling, torch.Generator().manual_seed(5), steps_of(model))
        (a,) = run_jobs(BatchRunner(model, rows=6), [plain])
        (b,) = run_jobs(BatchRunner(model, rows=6), [masked_job(model, everything, sampling, seed=5)])
        assert torch.equal(a.tokens, b.tokens) and a.forward_passes == b.forward_passes


def test_masked_jobs_give_the_same_tokens_alone_and_in_any_mix(model):
    steps = steps_of(model)
    pats = patterns(steps)

    def jobs():
        return [masked_job(model, known_tokens(model, pats["lower half"]), SAMPLED, seed=1),
                image_job([1, 9, 2], PAD, 2, 3.0, SAMPLED, torch.Generator().manual_seed(2), steps),
                masked_job(model, known_tokens(model, pats["stripes"], n=1), SAMPLED, seed=3, prompt=[1, 4, 4, 2]),
                Job("text", [[1, 5, 9, 9]], 7, SAMPLED, torch.Generator().manual_seed(4)),
                masked_job(model, known_tokens(model, pats["every other"], n=1), GREEDY, jacobi=3),
                masked_job(model, known_tokens(model, pats["upper half"], n=3), SAMPLED, seed=6)]

    def out(states):
        return [s.tokens.tolist() if s.tokens is not None else s.token_ids for s in states]

    alone = [out(run_jobs(BatchRunner(model, rows=8), [j]))[0] for j in jobs()]
    assert out(run_jobs(BatchRunner(model, rows=16), jobs())) == alone
    order = [5, 2, 0, 4, 1, 3]
    mixed = out(run_jobs(BatchRunner(model, rows=10), [jobs()[i] for i in order]))
    assert mixed == [alone[i] for i in order]


@pytest.mark.parametrize("name", ["lower half", "upper half", "stripes", "every other", "last token"])
def test_jacobi_with_known_tokens_equals_plain_masked_greedy(model, name):
    known = known_tokens(model, patterns(steps_of(model))[name], n=1)
    (plain,) = run_jobs(BatchRunner(model, rows=2), [masked_job(model, known)])
    for window in (1, 4):
        (fast,) = run_jobs(BatchRunner(model, rows=2), [masked_job(model, known, jacobi=window)])
        assert torch.equal(fast.tokens, plain.tokens), window
        assert fast.forward_passes <= plain.forward_passes


@pytest.mark.parametrize("name", ["lower half", "stripes", "every other"])
def test_branched_jacobi_with_known_tokens_gives_one_rows_tokens(model, name):
    """Branches over known runs (a known first draft needs no candidates): greedy gives plain
    masked decoding's tokens, Gumbel the tokens of one row, in no more passes than one row."""
    known = known_tokens(model, patterns(steps_of(model))[name], n=1)
    (plain,) = run_jobs(BatchRunner(model, rows=2), [masked_job(model, known)])
    (fast,) = run_jobs(BatchRunner(model, rows=6), [masked_job(model, known, jacobi=4, branches=3)])
    assert torch.equal(fast.tokens, plain.tokens)
    gumbel = [run_jobs(BatchRunner(model, rows=2 * k), [masked_job(model, known, SAMPLED, seed=9, jacobi=4, branches=k,
                                                                   sampler="gumbel")])[0] for k in (1, 3)]
    assert torch.equal(gumbel[0].tokens, gumbel[1].tokens)
    assert torch.equal(gumbel[1].tokens[:, known[0] >= 0], known[:, known[0] >= 0])


def test_sampled_jacobi_keeps_known_tokens(model):
    pattern = patterns(steps_of(model))["stripes"]
    known = known_tokens(model, pattern, n=1)
    (state,) = run_jobs(BatchRunner(model, rows=2), [masked_job(model, known, SAMPLED, seed=9, jacobi=4)])
    assert torch.equal(state.tokens[:, ~pattern], known[:, ~pattern]) and int(state.tokens.min()) >= 0


def test_bad_known_tokens_are_refused(model):
    steps = steps_of(model)
    with pytest.raises(ValueError, match=r"\[images, steps\]"):
        masked_job(model, torch.full((2, steps - 1), -1))
    mixed = torch.full((2, steps), -1)
    mixed[1, 0] = 4
    with pytest.raises(ValueError, match="same positions"):
        masked_job(model, mixed)
    with pytest.raises(ValueError, match="at least one"):
        masked_job(model, torch.zeros(2, steps, dtype=torch.long))
