"""DPO and GRPO losses against their papers' formulas, and the teacher-forced log-probabilities
against the sampler.

Tolerances: the DPO value is checked against a number worked out by hand to 6 decimals; the GRPO
gradients against an independent per-sample, per-token loop in float64 (the two differ only by
summation order, ~1e-15, so 1e-10 catches any wrong term or sign).
"""

from __future__ import annotations

import pytest
import torch

from openjanus.requests import ImageRequest, SamplingParams
from openjanus.train.preference import (
    critical_tokens,
    dpo_loss,
    group_advantages,
    grpo_loss,
    t2i_guided_logprobs,
    t2i_token_logprobs,
    t2i_token_logprobs_entropy,
)


def test_dpo_loss_matches_a_hand_computed_value():
    # Rafailov et al. 2023, eq. 7: -log sigma(beta ((pi_c - ref_c) - (pi_r - ref_r))).
    # pi_c = -1, pi_r = -2, ref_c = -1.5, ref_r = -1, beta = 0.5:
    #   margin = 0.5 * ((-1 + 1.5) - (-2 + 1)) = 0.5 * 1.5 = 0.75
    #   loss = -log sigma(0.75) = log(1 + e^-0.75) = log(1.4723666) = 0.386871
    loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.0]), beta=0.5)
    assert abs(float(loss) - 0.386871) < 1e-6
    assert abs(float(m["reward/chosen"]) - 0.25) < 1e-7 and abs(float(m["reward/rejected"]) + 0.5) < 1e-7
    assert float(m["reward/accuracy"]) == 1.0
    # A pair the policy ranks the wrong way round: margin -0.75, loss log(1 + e^0.75) = 1.136871.
    loss, _ = dpo_loss(torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-1.5]), beta=0.5)
    assert abs(float(loss) - 1.136871) < 1e-6


def test_group_advantages_by_hand_and_nan_rewards_are_left_out():
    # [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.866025.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3]), 4, eps=0.0)
    torch.testing.assert_close(adv[:4], torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-6, rtol=0)
    assert torch.equal(adv[4:], torch.zeros(4))  # a flat group: nothing to learn
    # [1, nan, 0, 0]: the NaN sample is skipped; over [1, 0, 0] mean 1/3, std sqrt(1/3).
    adv = group_advantages(torch.tensor([1.0, float("nan"), 0.0, 0.0]), 4, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.154701, 0.0, -0.577350, -0.577350]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)


def _reference_grpo(logp, old, ref, adv, eps, beta):
    """DeepSeekMath eq. 3, literally: per sample, per token, in Python loops."""
    total = 0.0
    for i in range(logp.shape[0]):
        obj = 0.0
        for t in range(logp.shape[1]):
            ratio = torch.exp(logp[i, t] - old[i, t])
            surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[i])
            kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            obj = obj + (surrogate - beta * kl) / logp.shape[1]
        total = total + obj
    return -total / logp.shape[0]


def test_grpo_gradient_matches_a_reference_implementation():
    # A toy policy: per token a softmax over 5 actions with free logits; 4 samples x 3 tokens.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, 5, (4, 3), generator=g)
    old = (torch.log_softmax(logits.detach() + 0.3 * torch.randn(4, 3, 5, generator=g, dtype=torch.float64), -1)
           .gather(-1, actions[..., None]).squeeze(-1))  # a stale policy: ratios away from 1, some clipped
    ref = (torch.log_softmax(torch.randn(4, 3, 5, generator=g, dtype=torch.float64), -1)
           .gather(-1, actions[..., None]).squeeze(-1))
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=torch.float64), 4)

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)

    ours = grpo_loss(logp(), old, ref, adv, clip_eps=0.2, kl_beta=0.04)
    (g_ours,) = torch.autograd.grad(ours.loss, logits)
    want = _reference_grpo(logp(), old, ref, adv, 0.2, 0.04)
    (g_ref,) = torch.autograd.grad(want, logits)
    assert 0 < float(ours.clipped) < 1  # the case exercises both branches of the min
    torch.testing.assert_close(ours.loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def _reference_gcpo(logp, old, ref, adv, eps, beta, critical):
    """GRPO with the policy term on critical tokens only (its mean over them), the KL term on
    every token (its mean over all), per sample and per token in Python loops."""
    total = 0.0
    for i in range(logp.shape[0]):
        n_crit = int(critical[i].sum())
        obj = 0.0
        for t in range(logp.shape[1]):
            if critical[i, t]:
                ratio = torch.exp(logp[i, t] - old[i, t])
                obj = obj + torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[i]) / n_crit
            kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            obj = obj - beta * kl / logp.shape[1]
        total = total + obj
    return -total / logp.shape[0]


def test_critical_tokens_are_each_rows_highest_entropy_share():
    ent = torch.tensor([[0.1, 2.0, 0.5, 3.0, 0.0], [1.0, 1.0, 1.0, 0.2, 1.0]])
    # ceil(0.4 * 5) = 2 per row: row 0 its two largest (positions 3, 1); row 1 a four-way tie at
    # 1.0, broken by position (0, 1).
    want = torch.tensor([[False, True, False, True, False], [True, True, False, False, False]])
    assert torch.equal(critical_tokens(ent, 0.4), want)
    assert critical_tokens(ent, 0.3).sum(1).tolist() == [2, 2]  # ceil(1.5) = 2
    assert bool(critical_tokens(ent, 1.0).all())
    with pytest.raises(ValueError):
        critical_tokens(ent, 0.0)


def test_gcpo_gradient_matches_a_reference_implementation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, 5, (4, 6), generator=g)
    old = (torch.log_softmax(logits.detach() + 0.3 * torch.randn(4, 6, 5, generator=g, dtype=torch.float64), -1)
           .gather(-1, actions[..., None]).squeeze(-1))
    ref = (torch.log_softmax(torch.randn(4, 6, 5, generator=g, dtype=torch.float64), -1)
           .gather(-1, actions[..., None]).squeeze(-1))
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.2], dtype=torch.float64), 4)
    lp_all = torch.log_softmax(logits.detach(), -1)
    crit = critical_tokens(-(lp_all.exp() * lp_all).sum(-1), 0.3)  # 2 of 6 tokens per sample

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)

    ours = grpo_loss(logp(), old, ref, adv, clip_eps=0.2, kl_beta=0.04, critical=crit)
    (g_ours,) = torch.autograd.grad(ours.loss, logits)
    want = _reference_gcpo(logp(), old, ref, adv, 0.2, 0.04, crit)
    (g_ref,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(ours.loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    # On policy (no ratio clipped) the policy gradient reaches the critical tokens' logits only.
    lp = logp()
    (g_pg,) = torch.autograd.grad(grpo_loss(lp, lp.detach(), None, adv, kl_beta=0.0, critical=crit).loss, logits)
    assert bool((g_pg.abs().sum(-1)[~crit] == 0).all()) and bool((g_pg.abs().sum(-1)[crit] > 0).all())
    # All tokens critical is plain GRPO.
    full = torch.ones_like(crit)
    torch.testing.assert_close(grpo_loss(logp(), old, ref, adv, kl_beta=0.04, critical=full).loss,
                               grpo_loss(logp(), old, ref, adv, kl_beta=0.04).loss, rtol=1e-12, atol=1e-14)


def test_on_policy_grpo_is_the_policy_gradient():
    # With old = logp (one update per batch) and no KL, the gradient is -mean_i A_i mean_t grad logp.
    logits = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    actions = torch.randint(0, 6, (3, 4))
    adv = torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64)
    lp = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    (g1,) = torch.autograd.grad(grpo_loss(lp, lp.detach(), None, adv, kl_beta=0.0).loss, logits)
    lp = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
    (g2,) = torch.autograd.grad(-(adv[:, None] * lp).mean(1).mean(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)


def test_teacher_forced_logprobs_are_the_samplers_distribution(tiny_pipeline, one_thread):
    # Greedy sampling through the engine picks the argmax of the guided logits at every step;
    # the teacher-forced guided distribution must put its maximum on the very same tokens, for
    # prompts of different lengths batched together (left padding).
    pipe = tiny_pipeline
    prompts = ["a red circle", "three blue squares left of a green star"]
    res = pipe.run([ImageRequest(p, n=2, guidance=4.0, sampling=SamplingParams(temperature=0.0), seed=1)
                    for p in prompts])
    tokens = torch.cat([r.tokens for r in res])
    tok = pipe.processor.tokenizer
    ids = [tok.encode(pipe.processor.t2i_prompt(p)) for p in prompts for _ in range(2)]
    with torch.no_grad():
        full = t2i_guided_logprobs(pipe.model, ids, tokens, tok.pad_id, guidance=4.0)
        lp = t2i_token_logprobs(pipe.model, ids, tokens, tok.pad_id, guidance=4.0)
    assert torch.equal(full.argmax(-1), tokens)
    lp2, ent = t2i_token_logprobs_entropy(pipe.model, ids, tokens, tok.pad_id, guidance=4.0)
    torch.testing.assert_close(lp2.detach(), lp, rtol=0, atol=0)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1), rtol=0, atol=0)
    torch.testing.assert_close(lp, full.gather(-1, tokens[..., None]).squeeze(-1), rtol=0, atol=0)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(tokens.shape), rtol=0, atol=1e-5)
