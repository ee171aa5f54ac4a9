"""Sampling as small pure functions on logits: filtering, drawing, classifier-free guidance,
and speculative Jacobi decoding's verify-and-redraw step.

Each takes a seeded `torch.Generator` where it draws, so a request's tokens depend on its own
random stream only; nothing here knows about rows, caches or requests.

Speculative Jacobi decoding (SJD, arXiv 2410.01699) feeds, after the newest exact token, drafts
for the next positions; one forward pass gives the target distribution p of every position,
exact as long as every draft before it is kept. A draft x drawn from a proposal q is kept with
probability min(1, p(x)/q(x)); at the first rejection the token is drawn from
normalise(max(0, p - q)). So each kept token is distributed exactly as plain sampling draws it.

MC-SJD (maximal-coupling SJD, arXiv 2510.24211) changes how the next drafts are drawn. SJD draws
each of them afresh from its new proposal q'; MC-SJD draws it from q' *coupled* with the previous
draft x at the same position (drawn from q): keep x with probability min(1, q'(x)/q(x)), else draw
from normalise(max(0, q' - q)). The new draft is still distributed as q' (the coupling's
marginal), so the verification above stays exact, but it equals the previous draft with the
largest probability any coupling allows, sum_v min(q, q'). Drafts stop flickering between
iterations, so the context the next pass verifies against changes less and more drafts are kept.

Why it stays lossless: a draft at position i is drawn from information about positions before i
only (q' comes from outputs that attend to the window up to i - 1; the previous draft there was
itself distributed as its proposal given the same kind of information), so given everything
that decides the tokens before i, the draft is distributed as the proposal it is tested with.

Gumbel Jacobi (fixed noise per position, Gumbel-max; Song et al., ICML 2021, "Accelerating
Feedforward Computation via Parallel Nonlinear Equation Solving", which did this for PixelCNN)
makes sampling a deterministic function of the prefix: position j of an image has its own
Gumbel noise g_j over the vocabulary, drawn from a stream that depends only on the image's key
and j (`gumbel_noise`), and its token is argmax(log p_j(. | x_<j) + g_j) over the filtered,
tempered guided distribution (`gumbel_tokens`). Since g_j is independent of everything that
decides x_<j, x_j is exactly a draw from p_j given its prefix (the Gumbel-max trick), so the image
is an exact sample. Jacobi decoding then works as it does for greedy decoding: a draft is kept iff
it equals that argmax under the window's context, so drafts can be any guess, the accepted
prefix plus one exact token advance every pass, and the tokens depend on the key only, never on
the window (`gumbel_drafts` makes the next window's guesses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from openjanus.requests import SamplingParams

__all__ = ["temper", "filter_logits", "sample", "multinomial_rows", "image_seed", "non_finite", "cfg_combine",
           "accept_drafts", "residual", "couple_drafts", "accepted_prefix", "JacobiStep", "verify_window",
           "next_drafts", "jacobi_step", "gumbel_key", "gumbel_noise", "gumbel_tokens", "gumbel_drafts"]


# Below this temperature, logits are shifted to a maximum of 0 before they are divided by it.
SHIFT_BELOW_TEMPERATURE = 0.01


def temper(logits: Tensor, temperature: float) -> Tensor:
    """`logits / temperature`, finite at any positive temperature.

    At tiny temperatures the plain quotient overflows to +-inf (1e-300 does in any dtype, 1e-4
    already in fp16), and the softmax of a row holding +inf is NaN. Below
    `SHIFT_BELOW_TEMPERATURE` each row is first shifted so its largest logit is 0: the same
    softmax mathematically, but the best token keeps 0 and the others go to -inf as the
    temperature goes to 0, so sampling becomes greedy in the limit (tokens tied for the best are
    drawn evenly). Above it the quotient is the plain one, bit for bit as before.
    """
    if temperature >= SHIFT_BELOW_TEMPERATURE:
        return logits / temperature
    # Times the reciprocal, capped at the dtype's largest value: a temperature such as 1e-300
    # is 0 in float32, and the shifted best logit (0) over 0 would be NaN.
    scale = min(1 / temperature, torch.finfo(logits.dtype).max)
    return (logits - logits.amax(dim=-1, keepdim=True)) * scale


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


def sample(logits: Tensor, params: SamplingParams,
           generator: torch.Generator | Sequence[torch.Generator] | None) -> Tensor:
    """[B, V] logits -> [B] token ids. Greedy at temperature 0. With one generator, one
    multinomial call for all B rows (the official sampler: a seed gives the official tokens of
    P images drawn together); with B generators, row i draws from generator i alone, exactly as
    torch.multinomial would for that row on its own (see `multinomial_rows`). Tiny temperatures
    tend to greedy (`temper`)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(temper(logits, params.temperature), params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    if isinstance(generator, Sequence):
        return multinomial_rows(probs, generator)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def multinomial_rows(probs: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """[B, V] probabilities -> [B] draws, row i from `generators[i]`: the token torch.multinomial
    (probs[i:i+1], 1, generator=generators[i]) draws, and the generator left in the same state.

    torch.multinomial draws one sample as argmax(p / q) with q ~ Exp(1), one variate per
    probability from the generator (tests/inference/test_sampling.py holds torch to it); here
    each row's variates come from its own generator, then one division and one argmax serve
    all rows: B small draws, no host sync.
    """
    if len(generators) != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows but {len(generators)} generators")
    q = torch.empty_like(probs)
    for row, g in zip(q, generators):
        row.exponential_(generator=g)
    return (probs / q).argmax(dim=-1)


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
    """Where to draw from after a rejection: normalise(max(0, p - q)) (unnormalised here), row
    by row over [..., V]; a row where p == q (up to rounding) has no residual: p itself."""
    r = (p - q).clamp(min=0)
    empty = r.sum(-1, keepdim=True) <= 0
    return torch.where(empty, p, r)


def couple_drafts(drafts: Tensor, proposals: Tensor, new_proposals: Tensor,
                  generator: torch.Generator | None) -> Tensor:
    """Maximal coupling: drafts [k] drawn from `proposals` [k, V] -> drafts [k] distributed as
    `new_proposals` [k, V] that equal the old ones with probability sum_v min(q, q') each.

    Keep the old draft x with probability min(1, q'(x)/q(x)) (speculative sampling's test with
    the roles of target and proposal taken by q' and q), else draw from normalise(max(0, q' - q)):
    P(new = v) = q(v) min(1, q'(v)/q(v)) + (1 - sum min(q, q')) (q'(v) - q(v))+ / sum (q' - q)+ = q'(v).
    """
    k = torch.arange(drafts.shape[0], device=drafts.device)
    u = torch.rand(drafts.shape[0], generator=generator, device=drafts.device)
    keep = accept_drafts(new_proposals[k, drafts], proposals[k, drafts], u)
    fresh = torch.multinomial(residual(new_proposals, proposals), 1, generator=generator).squeeze(-1)
    return torch.where(keep, drafts, fresh)


def accepted_prefix(ok: Tensor) -> int:
    """How many leading entries of the bool vector `ok` are True (one host sync)."""
    return int(ok.long().cumprod(0).sum()) if ok.numel() else 0


@dataclass
class JacobiStep:
    """What one verified window gives: the tokens kept (accepted drafts, then one exact token),
    how many drafts were accepted, and the drafts to feed next with the proposals they were drawn
    from (None when greedy; drafts None when nothing is left to draft)."""

    tokens: Tensor  # [n] long
    accepted: int
    drafts: Tensor | None  # [k] long
    proposals: Tensor | None  # [k, V]


def verify_window(probs: Tensor | None, best: Tensor | None, drafts: Tensor, proposals: Tensor | None,
                  generator: torch.Generator | None, known: Tensor | None = None) -> tuple[Tensor, int]:
    """Verify one window: (the tokens kept: accepted drafts, then one exact token; how many
    drafts were accepted).

    probs [m, V]: the target distribution at each of the window's m outputs (output i is exact
    when the window's drafts before it are kept); None when greedy, with `best` [m] its argmaxes.
    drafts [m-1]: the drafts the window fed after its exact token (draft i is checked against
    output i), drawn from `proposals` [m-1, V]. Greedy keeps a draft iff it is the argmax.
    known [<= m]: tokens fixed in advance at the outputs' positions (-1 where sampled; masked
    completion): a known draft is kept without a test, and a known next position takes its token.
    """
    greedy = probs is None
    m = (best if greedy else probs).shape[0]
    device = (best if greedy else probs).device
    accepted = 0
    if m > 1:
        if greedy:
            ok = best[:m - 1] == drafts
        else:
            k = torch.arange(m - 1, device=device)
            u = torch.rand(m - 1, generator=generator, device=device)
            ok = accept_drafts(probs[k, drafts], proposals[k, drafts], u)
        if known is not None:
            ok = ok | (known[:m - 1] >= 0)  # known tokens are exact
        accepted = accepted_prefix(ok)
    if known is not None and accepted < len(known) and bool(known[accepted] >= 0):
        new = known[accepted:accepted + 1]
    elif greedy:
        new = best[accepted:accepted + 1]
    elif accepted < m - 1:
        new = torch.multinomial(residual(probs[accepted], proposals[accepted]), 1, generator=generator)
    else:
        new = torch.multinomial(probs[m - 1], 1, generator=generator)
    return torch.cat([drafts[:accepted], new]), accepted


def branch_drafts(drafts: Tensor, alternatives: Tensor) -> Tensor:
    """The drafts of every branch of a window: [1 + len(alternatives), n], row 0 `drafts` [n] and
    row b the same with its first draft `alternatives[b - 1]`."""
    rows = drafts.expand(1 + len(alternatives), -1).clone()
    rows[1:, 0] = alternatives
    return rows


def longest_run(best: Tensor, drafts: Tensor, known: Tensor | None = None) -> int:
    """The branch whose drafts [K, m-1] the window keeps longest, the outputs being exact argmaxes
    `best` [K, m] (greedy, or Gumbel's noisy argmax): the first such branch on ties, so the main
    row (0) wins unless another keeps more. known [<= m]: tokens fixed in advance (kept)."""
    m = best.shape[1]
    ok = best[:, :m - 1] == drafts
    if known is not None:
        ok = ok | (known[:m - 1] >= 0)
    return int(ok.long().cumprod(1).sum(1).argmax())


def first_draft_alternatives(ranked: Tensor, draft: Tensor, count: int) -> Tensor:
    """`count` candidates for a first draft besides `draft` itself: the best of `ranked` [V] (the
    scores its position's token is the argmax of, or a proxy for them) other than `draft`."""
    top = torch.topk(ranked, min(count + 1, ranked.numel())).indices
    top = top[top != draft][:count]
    return torch.cat([top, draft.reshape(1).expand(count - len(top))])  # a tiny vocabulary: repeats


def draws_without_replacement(q: Tensor, first: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """`count` more draws from q [V] after `first` (a draw from q), without replacement: the first
    `count` of log q + Gumbel noise over the tokens other than `first`, in order (the Gumbel-top-k
    trick: successive draws, each from q with the earlier ones removed). -1 where q has no token
    left to draw."""
    u = torch.rand(q.shape, generator=generator, device=q.device, dtype=torch.float64)
    keys = q.double().log() - torch.log(-torch.log(u.clamp(min=1e-300)))
    keys[first] = float("-inf")
    values, tokens = torch.topk(keys, min(count, q.numel()))
    out = torch.where(torch.isfinite(values), tokens, -1)
    return torch.cat([out, out.new_full((count - len(out),), -1)])


def verify_first_draft(p: Tensor, q: Tensor, candidates: Tensor,
                       generator: torch.Generator | None) -> tuple[int, Tensor]:
    """Recursive rejection sampling (Jeon et al. 2024, "Recursive Speculative Decoding") of one
    position from several drafts drawn from q [V] without replacement (`candidates` [K], -1 for
    none): candidate i is kept with probability min(1, p_i/q_i), where p_1 = p, q_1 = q and after
    each rejection p_{i+1} = normalise(max(0, p_i - q_i)) and q_{i+1} = q_i without the rejected
    token; if all are rejected the token is drawn from the last p. The token follows p exactly.
    -> (index of the candidate kept, or -1; the token [1])."""
    p, q = p.double(), q.double()
    for i, x in enumerate(candidates.tolist()):
        if x < 0 or float(q[x]) <= 0:
            break
        u = torch.rand((), generator=generator, device=p.device, dtype=torch.float64)
        if accept_drafts(p[x], q[x], u):
            return i, candidates[i:i + 1]
        r = residual(p, q)
        p = r / r.sum()
        q = q.clone()
        q[x] = 0
        if q.sum() <= 0:
            break
        q = q / q.sum()
    return -1, torch.multinomial(p, 1, generator=generator)


def verify_branches(probs: Tensor, drafts: Tensor, alternatives: Tensor, proposals: Tensor,
                    generator: torch.Generator | None, known: Tensor | None = None) -> tuple[int, Tensor, int]:
    """Verify a sampled window fed on several rows, row b with first draft `alternatives[b - 1]`
    (drawn from the first proposal without replacement after `drafts[0]`) and the same later
    drafts: the first draft by recursive rejection sampling over the rows' candidates
    (`verify_first_draft`; output 0 is the same on every row), then the kept row's later drafts
    as `verify_window` does. probs [K, m, V]; drafts [m-1] from `proposals` [m-1, V]; known as
    `verify_window` (the first draft's position is sampled). -> (the row kept, the tokens kept,
    how many drafts were accepted)."""
    candidates = torch.cat([drafts[:1], alternatives])
    row, first = verify_first_draft(probs[0, 0], proposals[0], candidates, generator)
    if row < 0:
        return 0, first, 0
    rest, kept = verify_window(probs[row, 1:], None, drafts[1:], proposals[1:], generator,
                               known=None if known is None else known[1:])
    return row, torch.cat([first, rest]), 1 + kept


def next_drafts(probs: Tensor | None, best: Tensor | None, drafts: Tensor, proposals: Tensor | None,
                accepted: int, n_drafts: int, generator: torch.Generator | None, coupled: bool = True,
                known: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The `n_drafts` drafts to feed after the new token of a window that accepted `accepted`
    drafts, and the proposals they were drawn from (None when greedy); arguments as
    `verify_window`. Draft i's proposal is output accepted + 1 + i (the last output again past
    the window). `coupled`: MC-SJD's coupled redraw where the old window had a draft at the same
    position (SJD's independent redraw when False). known [n_drafts]: known tokens at the drafts'
    positions (-1 where sampled) replace those drafts."""
    greedy = probs is None
    m = (best if greedy else probs).shape[0]
    device = (best if greedy else probs).device
    src = torch.clamp(torch.arange(accepted + 1, accepted + 1 + n_drafts, device=device), max=m - 1)
    if greedy:
        nxt, new_proposals = best[src], None
    else:
        new_proposals = probs[src]  # [n_drafts, V]
        # The old window's drafts at the same positions (old draft accepted + 1 + i) are coupled;
        # positions the old window did not reach are drawn afresh.
        paired = max(min(n_drafts, m - 2 - accepted), 0) if coupled else 0
        parts = []
        if paired:
            old = slice(accepted + 1, accepted + 1 + paired)
            parts.append(couple_drafts(drafts[old], proposals[old], new_proposals[:paired], generator))
        if paired < n_drafts:
            parts.append(torch.multinomial(new_proposals[paired:], 1, generator=generator).squeeze(-1))
        nxt = torch.cat(parts)
    if known is not None:
        nxt = torch.where(known >= 0, known, nxt)
    return nxt, new_proposals


def jacobi_step(probs: Tensor | None, best: Tensor | None, drafts: Tensor, proposals: Tensor | None,
                remaining: int, window: int, generator: torch.Generator | None,
                coupled: bool = True) -> JacobiStep:
    """Verify one window and draw the next drafts (no known tokens): `verify_window`, then
    `next_drafts` for up to `window` of the `remaining` tokens still to sample after it (the
    step keeps at most `remaining`)."""
    tokens, accepted = verify_window(probs, best, drafts, proposals, generator)
    tokens = tokens[:remaining]
    n_drafts = min(window, remaining - len(tokens))
    if n_drafts <= 0:
        return JacobiStep(tokens, accepted, None, None)
    nxt, new_proposals = next_drafts(probs, best, drafts, proposals, accepted, n_drafts, generator, coupled)
    return JacobiStep(tokens, accepted, nxt, new_proposals)


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a request seeded `seed`: image 0 keeps it, the others are
    spread (by the golden-ratio increment) below 2**53, so `n=1, seed=image_seed(S, i)` draws
    exactly image i of `n=N, seed=S`. Below 2**53 because JSON readers that hold numbers as
    doubles (jq, JavaScript: the web page) would round a larger seed written in run.json."""
    return seed if index == 0 else (seed + index * 0x9E3779B97F4A7C15) % 2**53


# --- Gumbel Jacobi: sampling as a deterministic function of fixed per-position noise -----------

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix, so that
    nearby (key, position) pairs seed unrelated generators."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64  # modulo 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def gumbel_key(generator: torch.Generator | None) -> int:
    """An image's noise key: one draw from its random stream (so the key, and with it every
    token, depends on the image's seed alone)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def gumbel_noise(key: int, positions: Sequence[int], vocab: int, device: torch.device | str = "cpu") -> Tensor:
    """Gumbel(0, 1) noise [len(positions), vocab] (float32): row i belongs to position
    positions[i] of the image keyed `key`, from a generator seeded by (key, position) alone, so
    a position's noise is the same whenever, and in whichever window, it is asked for. Drawn as
    -log(-log u) from float64 uniforms in [0, 1): u = 0 gives -inf (that token never wins, with
    probability 2**-53), never a NaN; float64 so no two tokens tie in the noise."""
    rows = []
    for j in positions:
        # Mixed twice: every bit of the key counts, and a key's positions get distinct seeds.
        g = torch.Generator(device=device).manual_seed(_splitmix64(_splitmix64(key) + j) >> 1)
        u = torch.rand(vocab, generator=g, device=device, dtype=torch.float64)
        rows.append(-torch.log(-torch.log(u)))
    if not rows:
        return torch.empty(0, vocab, device=device)
    return torch.stack(rows).float()


def gumbel_tokens(scores: Tensor, noise: Tensor) -> Tensor:
    """argmax(scores + noise) row by row: [m, V] scores (filtered, tempered logits: log p up to a
    constant per row, -inf outside the filters) and [m, V] Gumbel noise -> [m] tokens, each an
    exact draw from softmax(scores) (the Gumbel-max trick) when its noise is independent of them."""
    return (scores.float() + noise).argmax(-1)


def gumbel_drafts(outputs: Tensor, accepted: int, n_drafts: int, newest: Tensor) -> Tensor:
    """The next window's `n_drafts` drafts after a Gumbel Jacobi pass that kept `accepted` drafts
    and then the exact token `newest` [1]: the pass's own tokens `outputs` [m] at the positions
    after it (Jacobi's update: each position's noisy argmax under the context this pass saw), then,
    at positions the window did not reach, the token before them again (image tokens often
    repeat their left neighbour; bench/study_gumbel_drafts.py finds it level with the token one
    row up, 2.12 and 2.11 tokens per pass at window 16 on the demo model, and needs nothing but
    the window). Any guess is lossless: it only decides how soon the exact tokens are found."""
    own = outputs[accepted + 1:accepted + 1 + n_drafts]
    last = own[-1:] if len(own) else newest[-1:]
    return torch.cat([own, last.expand(n_drafts - len(own))])
