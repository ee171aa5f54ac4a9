"""The speculative Jacobi step on a toy target with a known distribution: every sequence it
produces is distributed exactly as plain sampling, with SJD's independent redraw and with
MC-SJD's coupled redraw (a chi-square test against the exact joint distribution, shown to fail
for a deliberately wrong coupling); the coupling keeps more drafts; greedy equals argmax decoding."""

from __future__ import annotations

import itertools

import pytest
import torch
from chi_square import chi_square

import openjanus.inference.sampling as spec

V, LENGTH, WINDOW = 3, 3, 2  # 27 sequences: a few thousand samples pin their distribution down


def toy_target(seed: int = 0, context: float = 2.0, length: int = LENGTH):
    """p(next | prefix) over V tokens: a logit per position plus `context` times a logit per
    previous token (so a changed draft changes what the next position should be)."""
    g = torch.Generator().manual_seed(seed)
    # (positions past LENGTH too: a window's last outputs look beyond the end)
    pos, prev = torch.randn(length + 16, V, generator=g), torch.randn(V, V, generator=g)

    def p(prefix: tuple[int, ...]) -> torch.Tensor:
        logits = pos[len(prefix)] + (context * prev[prefix[-1]] if prefix else 0)
        return torch.softmax(logits.double(), -1)

    return p


def exact_joint(p) -> dict[tuple[int, ...], float]:
    joint = {}
    for seq in itertools.product(range(V), repeat=LENGTH):
        joint[seq] = float(torch.prod(torch.stack([p(seq[:i])[t] for i, t in enumerate(seq)])))
    return joint


def jacobi_decode(p, generator, coupled: bool, greedy: bool = False, window: int = WINDOW, length: int = LENGTH):
    """One sequence, fed window by window as the runner does: (tokens, forward passes)."""
    tokens: list[int] = []
    probs = p(())[None]  # the prefill's one output: the first position's exact distribution
    drafts, proposals = torch.empty(0, dtype=torch.long), torch.empty(0, V, dtype=torch.double)
    passes = 1
    while True:
        best = probs.argmax(-1) if greedy else None
        step = spec.jacobi_step(None if greedy else probs, best, drafts, None if greedy else proposals,
                                length - len(tokens), window, generator, coupled=coupled)
        tokens += step.tokens.tolist()
        if step.drafts is None:
            return tuple(tokens), passes
        drafts, proposals = step.drafts, step.proposals
        # The next pass feeds [newest token, drafts...]: output i sees the drafts before i.
        probs = torch.stack([p(tuple(tokens) + tuple(drafts[:i].tolist())) for i in range(len(drafts) + 1)])
        passes += 1


N = 6000


def sample_counts(p, coupled: bool, seed: int = 0) -> tuple[dict, float]:
    g = torch.Generator().manual_seed(seed)
    counts: dict[tuple[int, ...], int] = {}
    passes = 0
    for _ in range(N):
        seq, k = jacobi_decode(p, g, coupled)
        counts[seq] = counts.get(seq, 0) + 1
        passes += k
    return counts, LENGTH * N / passes


TARGET = dict(seed=3, context=2.0)


@pytest.mark.parametrize("coupled", [False, True], ids=["SJD", "MC-SJD"])
def test_sequences_follow_the_exact_distribution(coupled):
    p = toy_target(**TARGET)
    counts, _ = sample_counts(p, coupled)
    statistic, critical = chi_square(counts, exact_joint(p))
    assert statistic < critical


def keep_old_draft(drafts, proposals, new_proposals, generator):
    return drafts  # the draft then follows the old proposal but is tested as if drawn from the new


def redraw_from_old_proposal(drafts, proposals, new_proposals, generator):
    k = torch.arange(drafts.shape[0])
    u = torch.rand(drafts.shape[0], generator=generator)
    keep = spec.accept_drafts(new_proposals[k, drafts], proposals[k, drafts], u)
    fresh = torch.multinomial(proposals, 1, generator=generator).squeeze(-1)  # not the residual
    return torch.where(keep, drafts, fresh)


@pytest.mark.parametrize("wrong", [keep_old_draft, redraw_from_old_proposal], ids=lambda f: f.__name__)
def test_the_distribution_test_fails_for_a_wrong_coupling(monkeypatch, wrong):
    monkeypatch.setattr(spec, "couple_drafts", wrong)
    p = toy_target(**TARGET)
    counts, _ = sample_counts(p, coupled=True)
    statistic, critical = chi_square(counts, exact_joint(p))
    assert statistic > critical


def test_coupling_keeps_the_new_proposal_as_marginal():
    """couple_drafts alone: new drafts follow q' exactly, and equal the old draft as often as
    a maximal coupling allows (sum_v min(q, q'))."""
    g = torch.Generator().manual_seed(0)
    q, q2 = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    n = 40000
    old = torch.multinomial(q.expand(n, V), 1, generator=g).squeeze(-1)
    new = spec.couple_drafts(old, q.expand(n, V), q2.expand(n, V), g)
    freq = torch.bincount(new, minlength=V) / n
    # 3 standard errors of a frequency near 0.5 over 40000 draws: 0.0075.
    torch.testing.assert_close(freq, q2, atol=0.0075, rtol=0)
    same = (new == old).float().mean().item()
    assert abs(same - torch.minimum(q, q2).sum().item()) < 0.0075


def test_coupling_keeps_more_drafts_than_independent_redraws():
    # Context matters: a draft verified against the outputs of a pass that saw a different draft
    # before it is often rejected. SJD redraws every draft afresh each pass; MC-SJD keeps most of
    # them, so the context a pass saw is the one the next pass verifies (measured: 2.37 vs 2.91
    # tokens per pass here).
    p = toy_target(seed=1, context=1.0, length=32)
    g = torch.Generator().manual_seed(0)
    per_pass = {}
    for coupled in (False, True):
        tokens = passes = 0
        for _ in range(300):
            seq, k = jacobi_decode(p, g, coupled, window=8, length=32)
            tokens, passes = tokens + len(seq), passes + k
        per_pass[coupled] = tokens / passes
    assert per_pass[True] > per_pass[False] * 1.1, per_pass


def test_greedy_equals_argmax_decoding():
    p = toy_target(seed=2)
    prefix: tuple[int, ...] = ()
    for _ in range(LENGTH):
        prefix += (int(p(prefix).argmax()),)
    for window in (1, 2, 4):
        seq, passes = jacobi_decode(p, None, coupled=True, greedy=True, window=window)
        assert seq == prefix
        assert passes <= LENGTH + 1


@pytest.mark.parametrize("k", [1, 3, 6])
def test_recursive_rejection_over_drafts_without_replacement_keeps_p(k):
    """verify_first_draft with k candidates drawn from q without replacement (draws_without_
    replacement after a first draw): the token follows p exactly (chi-square over 30000 draws),
    and more candidates keep a draft more often (sum_v min(p, q) for one)."""
    g = torch.Generator().manual_seed(k)
    p = torch.tensor([0.05, 0.4, 0.05, 0.3, 0.1, 0.1], dtype=torch.float64)
    q = torch.tensor([0.4, 0.05, 0.3, 0.05, 0.1, 0.1], dtype=torch.float64)
    counts, kept, n = {}, 0, 30000
    for _ in range(n):
        first = torch.multinomial(q, 1, generator=g)
        candidates = torch.cat([first, spec.draws_without_replacement(q, first[0], k - 1, g)])
        row, token = spec.verify_first_draft(p, q, candidates, g)
        counts[(int(token),)] = counts.get((int(token),), 0) + 1
        kept += row >= 0
    statistic, critical = chi_square(counts, {(v,): float(p[v]) for v in range(len(p))})
    assert statistic < critical
    if k == 1:  # 3 standard errors of a frequency near 0.4 over 30000 draws: 0.0085
        assert abs(kept / n - float(torch.minimum(p, q).sum())) < 0.0085
    else:
        assert kept / n > float(torch.minimum(p, q).sum()) + 0.1


def test_draws_without_replacement_never_repeat_and_say_when_q_runs_out():
    g = torch.Generator().manual_seed(0)
    q = torch.tensor([0.5, 0.0, 0.3, 0.2])
    for _ in range(50):
        draws = spec.draws_without_replacement(q, torch.tensor(2), 3, g).tolist()
        assert sorted(draws) == [-1, 0, 3]  # token 1 has no mass, token 2 was the first draw
