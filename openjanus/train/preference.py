"""Post-training losses and the log-probabilities they read: DPO and GRPO, for images and answers.

Pure functions over tensors, with no sampling and no rewards (those live in
`openjanus.posttrain`, above the inference pipeline): this module stays inside the training
package, which imports neither the pipeline nor the evaluation package.

* :func:`t2i_token_logprobs` -- per-token log-probabilities of given image tokens under the model,
  teacher-forced, with classifier-free guidance exactly as the sampler combines the logits
  (``u + w (c - u)``, then ``/ temperature``), so the policy that is trained is the one that
  sampled.
* :func:`answer_token_logprobs` -- per-token log-probabilities of given answer tokens after a
  (text-only) prompt.
* :func:`dpo_loss` -- Rafailov et al. 2023, eq. 7:
  ``-log sigma(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` on sequence log-probabilities.
* :func:`group_advantages` and :func:`grpo_loss` -- Shao et al. 2024 (DeepSeekMath), eq. 3 with
  the outcome-supervision advantage ``(r - mean) / (std + eps)`` within each prompt's group,
  the clipped ratio and the unbiased KL estimator ``exp(ref - logp) - (ref - logp) - 1``;
  optionally with the policy term on "critical" tokens only (:func:`critical_tokens`, the
  highest-entropy share of each image's tokens, after GCPO) while the KL term keeps all tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from openjanus.model.janus import Janus
from openjanus.processing import unconditional_prompt


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = True
    return ids, mask


def _attention(mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Positions [B, L] and a causal attention mask [B, 1, L, L] for left-padded rows whose
    first `mask.shape[1]` positions follow `mask` and the rest are all real."""
    B = mask.shape[0]
    full = torch.cat([mask, torch.ones(B, length - mask.shape[1], dtype=torch.bool, device=mask.device)], 1)
    positions = (full.long().cumsum(1) - 1).clamp(min=0)
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    attn = causal[None] & full[:, None, :]
    # A pad row attends to itself so that no softmax row is empty (its output is never read).
    attn = attn | torch.eye(length, dtype=torch.bool, device=mask.device)[None]
    return positions, attn[:, None]


def t2i_token_logprobs(model: Janus, prompt_ids: Sequence[Sequence[int]], tokens: Tensor, pad_id: int,
                       guidance: float, temperature: float = 1.0) -> Tensor:
    """log p(token_t | prompt, tokens_<t) [B, T] of image tokens [B, T] under classifier-free
    guidance: for each row a conditional and an unconditional sequence (prompt + image tokens)
    run through the LLM, their image logits combined as the sampler does. Gradients flow."""
    logp = t2i_guided_logprobs(model, prompt_ids, tokens, pad_id, guidance, temperature)
    return logp.gather(-1, tokens.to(logp.device)[..., None]).squeeze(-1)


def t2i_token_logprobs_entropy(model: Janus, prompt_ids: Sequence[Sequence[int]], tokens: Tensor, pad_id: int,
                               guidance: float, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """As :func:`t2i_token_logprobs` [B, T], and the entropy [B, T] (nats, no gradient) of the
    guided distribution at each image position: what :func:`critical_tokens` ranks."""
    logp = t2i_guided_logprobs(model, prompt_ids, tokens, pad_id, guidance, temperature)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.to(logp.device)[..., None]).squeeze(-1), entropy


def critical_tokens(entropy: Tensor, fraction: float) -> Tensor:
    """A mask [N, T] of each row's ``ceil(fraction * T)`` highest-entropy tokens (ties: the
    earlier position first): the positions where the sampler's choice was most open, which
    GCPO (critical-token policy optimisation for autoregressive text-to-image) restricts the
    policy update to. ``fraction`` 1 keeps every token."""
    if entropy.ndim != 2:
        raise ValueError(f"entropy must be [N, T], got {list(entropy.shape)}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = min(entropy.shape[1], math.ceil(fraction * entropy.shape[1]))
    order = torch.argsort(entropy.detach(), dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros(entropy.shape, dtype=torch.bool, device=entropy.device)
    return mask.scatter_(1, order, True)


def t2i_guided_logprobs(model: Janus, prompt_ids: Sequence[Sequence[int]], tokens: Tensor, pad_id: int,
                        guidance: float, temperature: float = 1.0) -> Tensor:
    """The whole guided distribution [B, T, V] (log-probabilities) at every image position."""
    if tokens.ndim != 2 or tokens.shape[0] != len(prompt_ids):
        raise ValueError(f"tokens must be [B, T] with B = {len(prompt_ids)} prompts, got {list(tokens.shape)}")
    if temperature <= 0:
        raise ValueError("log-probabilities need a positive temperature")
    rows: list[Sequence[int]] = []
    for ids in prompt_ids:
        rows += [list(ids), unconditional_prompt(ids, pad_id)]
    device = model.llm.embed.weight.device
    ids, pmask = _left_pad(rows, pad_id)
    ids, pmask = ids.to(device), pmask.to(device)
    B, T = tokens.shape
    P = ids.shape[1]
    doubled = tokens.to(device).repeat_interleave(2, dim=0)  # [2B, T]: cond, uncond per row
    h_text = model.embed_text(ids)
    h_img = model.embed_image_tokens(doubled[:, :-1]).to(h_text.dtype)
    h = torch.cat([h_text, h_img], 1)  # [2B, P + T - 1]
    positions, attn = _attention(pmask, P + T - 1)
    hidden = model.llm(h, positions, mask=attn)
    logits = model.image_logits(hidden[:, P - 1:]).float()  # [2B, T, V]: predicts tokens 0..T-1
    guided = logits[1::2] + guidance * (logits[0::2] - logits[1::2])
    return F.log_softmax(guided / temperature, dim=-1)


def answer_token_logprobs(model: Janus, prompt_ids: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                          pad_id: int, pixel_values: Tensor | None = None,
                          image_masks: Sequence[Sequence[bool]] | None = None) -> tuple[Tensor, Tensor]:
    """log p(answer tokens | prompt) per token [B, A] and a mask [B, A] of real answer tokens.
    Prompts may hold understanding images: `image_masks` marks their positions in each prompt
    and `pixel_values` [N, 3, S, S] are the images in order."""
    if len(prompt_ids) != len(answers) or not answers:
        raise ValueError("one answer per prompt, at least one")
    if any(len(a) == 0 for a in answers):
        raise ValueError("an answer needs at least one token")
    device = model.llm.embed.weight.device
    A = max(len(a) for a in answers)
    rows = [list(p) + list(a) + [pad_id] * (A - len(a)) for p, a in zip(prompt_ids, answers)]
    lead = [max(len(p) for p in prompt_ids) - len(p) for p in prompt_ids]
    width = max(len(r) + k for r, k in zip(rows, lead))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    und = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, k) in enumerate(zip(rows, lead)):
        ids[i, k:k + len(r)] = torch.tensor(r)
        mask[i, k:k + len(prompt_ids[i]) + len(answers[i])] = True
        if image_masks is not None:
            und[i, k:k + len(prompt_ids[i])] = torch.tensor(list(image_masks[i]), dtype=torch.bool)
    ids, mask, und = ids.to(device), mask.to(device), und.to(device)
    h = model.embed_chat(ids, und, None if pixel_values is None else pixel_values.to(device))
    positions, attn = _attention(mask, width)
    hidden = model.llm(h, positions, mask=attn)
    P = max(len(p) for p in prompt_ids)
    logits = model.text_logits(hidden[:, P - 1:P - 1 + A]).float()  # predicts answer tokens 0..A-1
    target = ids[:, P:P + A]
    logp = F.log_softmax(logits, -1).gather(-1, target[..., None]).squeeze(-1)
    real = torch.tensor([[j < len(a) for j in range(A)] for a in answers], device=device)
    return logp * real, real


# --- DPO ---------------------------------------------------------------------------------------


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean DPO loss over pairs of sequence log-probabilities [N] (Rafailov et al. 2023, eq. 7;
    with `label_smoothing` e, the conservative form -(1-e) log s(x) - e log s(-x)).
    Also returns the implicit rewards beta * (pi - ref) and the pair accuracy."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    chosen_reward = beta * (policy_chosen - ref_chosen).detach()
    rejected_reward = beta * (policy_rejected - ref_rejected).detach()
    return losses.mean(), {"reward/chosen": chosen_reward.mean(), "reward/rejected": rejected_reward.mean(),
                           "reward/accuracy": (margin.detach() > 0).float().mean(),
                           "reward/margin": (chosen_reward - rejected_reward).mean()}


# --- GRPO --------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """(r - mean) / (std + eps) within consecutive groups of `group_size` rewards [N]; NaN
    rewards (skipped samples) take no part in their group's statistics and get advantage 0.
    A group with fewer than two finite rewards, or all of them equal, gets exactly 0 everywhere
    (nothing to compare)."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {group_size}")
    r = rewards.view(-1, group_size).double()
    ok = torch.isfinite(r)
    n = ok.sum(1, keepdim=True)
    filled = torch.where(ok, r, 0.0)
    mean = filled.sum(1, keepdim=True) / n.clamp(min=1)
    var = (torch.where(ok, r - mean, 0.0) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    lo = torch.where(ok, r, float("inf")).amin(1, keepdim=True)
    hi = torch.where(ok, r, float("-inf")).amax(1, keepdim=True)
    varied = (n >= 2) & (hi > lo)  # a flat group has nothing to compare: advantage exactly 0
    adv = (r - mean) / torch.where(varied, var.sqrt() + eps, 1.0)
    adv = torch.where(ok & varied, adv, 0.0)
    return adv.view(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)


@dataclass
class GRPOLoss:
    loss: Tensor
    kl: Tensor  # mean per-token KL estimate (detached)
    clipped: Tensor  # fraction of tokens whose ratio was clipped (detached)
    ratio: Tensor  # mean ratio (detached)


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor | None = None,
              clip_eps: float = 0.2, kl_beta: float = 0.04, critical: Tensor | None = None) -> GRPOLoss:
    """GRPO's objective, negated, for per-token log-probabilities [N, T]: per sample the mean over
    its tokens of ``-(min(rho A, clip(rho, 1-e, 1+e) A) - beta KL)``, then the mean over samples.
    `mask` [N, T] marks real tokens (None: all are); samples with no real token count zero.
    `critical` [N, T] (GCPO): the policy term is the mean over each sample's critical real tokens
    only, the KL term stays the mean over all its real tokens."""
    if mask is None:
        mask = torch.ones_like(logp, dtype=torch.bool)
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach().to(logp.dtype)[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    surrogate = -torch.minimum(unclipped, clipped)
    if ref_logp is not None and kl_beta:
        d = ref_logp.detach() - logp
        kl = torch.exp(d) - d - 1
        kl_term = kl_beta * kl
    else:
        kl = torch.zeros_like(logp)
        kl_term = None
    lengths = m.sum(1).clamp(min=1)
    if critical is None:
        per_token = surrogate if kl_term is None else surrogate + kl_term
        loss = ((per_token * m).sum(1) / lengths).mean()
    else:
        c = m * critical.to(logp.dtype)
        per_sample = (surrogate * c).sum(1) / c.sum(1).clamp(min=1)
        if kl_term is not None:
            per_sample = per_sample + (kl_term * m).sum(1) / lengths
        loss = per_sample.mean()
    n = m.sum().clamp(min=1)
    was_clipped = ((ratio - ratio.clamp(1 - clip_eps, 1 + clip_eps)).abs() > 0).to(logp.dtype)
    return GRPOLoss(loss, ((kl * m).sum() / n).detach(), ((was_clipped * m).sum() / n).detach(),
                    ((ratio * m).sum() / n).detach())


__all__ = ["t2i_token_logprobs", "t2i_token_logprobs_entropy", "critical_tokens", "t2i_guided_logprobs",
           "answer_token_logprobs", "dpo_loss", "group_advantages", "grpo_loss", "GRPOLoss"]
