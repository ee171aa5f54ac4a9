"""The batch runner: rows of one KV cache, prefill, and one decoder per mode.

A `Job` is what to decode (the spec: rows of prompt ids, steps, sampling, its random stream);
its `JobState` is what the runner holds while it runs (first row, tokens so far, counters).
Tokenizers, templates and images live at the edge (`openjanus.processing`); which job runs
on which rows is the scheduler's decision (`openjanus.inference.scheduler`); threads and
requests live in `openjanus.inference.engine`. Every job has its own seeded generator, so a
job's tokens do not depend on which other jobs share its batch.

Rows are never padded: each job's rows start at cache slot 0 and have their own length, so a
job can join the running batch at any step (its prompt is prefilled on its own rows, then
its rows take part in the shared decode step) and leave as soon as it is done.

A step asks each decoder in turn (image, masked image, text, Jacobi) to sample its jobs' next
tokens and say what to feed back, then feeds them in one forward pass per fed length: plain
jobs and answers feed one token a row; every Jacobi job of window W feeds W + 1 positions (a
shorter window is padded; the padding writes a scratch slot), so the windows of every image
and every caller with that W are verified together. A row's arithmetic thus never depends on
its neighbours' windows: the matrix products it takes part in always have its own length
(batch invariance, bit for bit, in every weight format; int8 picks its kernel by that length).

Masked completion (image editing, outpainting, the windows of a large image): an image job may
carry `known` tokens. Those are fed, never sampled, in both CFG rows; the known tokens before
the first one to sample join the prompt's prefill, and each run of known tokens after a sampled
one is fed with it in one forward pass. A job whose tokens are all to be sampled decodes exactly
as a plain one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from openjanus.errors import UserError
from openjanus.inference.sampling import (
    branch_drafts,
    cfg_combine,
    draws_without_replacement,
    filter_logits,
    first_draft_alternatives,
    gumbel_drafts,
    gumbel_key,
    gumbel_noise,
    gumbel_tokens,
    longest_run,
    next_drafts,
    non_finite,
    sample,
    temper,
    verify_branches,
    verify_window,
)
from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask
from openjanus.processing import unconditional_prompt
from openjanus.requests import JACOBI_SAMPLERS, SamplingParams

__all__ = ["Job", "JobState", "BatchRunner", "NonFiniteLogits", "Decoder", "ImageDecoder", "MaskedImageDecoder",
           "TextDecoder", "JacobiDecoder", "image_job", "round_up"]


JacobiSampler = Literal["mcsjd", "gumbel", "sjd"]  # requests.JACOBI_SAMPLERS


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _upload(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor (row indices, slots) on `device` without waiting for the device:
    from pinned memory, asynchronously (a plain copy from pageable memory would sync)."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class NonFiniteLogits(UserError):
    """The model produced NaN or infinite logits (broken weights, or an overflow in fp16)."""

    def __init__(self) -> None:
        super().__init__("the model produced non-finite logits (NaN or inf): the weights are broken or "
                         "the dtype overflows; load with --check-finite, or try --dtype float32")


@dataclass(frozen=True, eq=False)
class Job:
    """What to decode: rows of equal length decoded together. An image job has 2 rows per image
    (conditional, unconditional, interleaved), a text job one row."""

    kind: Literal["image", "text"]
    prompt_ids: list[list[int]]  # one list per row, all the same length
    steps: int  # tokens to sample (image: num_gen_tokens; text: at most max_new_tokens)
    sampling: SamplingParams
    # One stream for all rows, or (image jobs) one per image: image i then draws from its own.
    generator: torch.Generator | Sequence[torch.Generator] | None
    guidance: float = 1.0  # image jobs
    eos_id: int | None = None  # text jobs: stop after sampling it
    image_mask: Tensor | None = None  # text jobs: bool [T], positions the image features fill
    pixel_values: Tensor | None = None  # text jobs: [n_images, 3, S, S]
    jacobi: int = 0  # image jobs of one image: draft this many tokens per forward pass (0 = off)
    # Sampled Jacobi: "mcsjd" (drafts redrawn coupled to the previous ones), "gumbel" (fixed
    # Gumbel noise per position: drafts kept iff they equal the noisy argmax) or "sjd" (afresh).
    jacobi_sampler: JacobiSampler = "mcsjd"
    # Jacobi jobs: rows (pairs of CFG rows) verifying the window at once, each with another
    # candidate for its first draft (greedy and Gumbel: the next best by the pass's scores, the
    # row kept longest wins; MC-SJD and SJD: more draws from the proposal without replacement,
    # kept by recursive rejection sampling); the job then holds 2 x branches rows.
    branches: int = 1
    # Plain image jobs: sample by the same fixed Gumbel noise per position as a "gumbel" Jacobi job
    # (one generator per image), so their tokens are those of any Jacobi window (jacobi="auto"
    # choosing no window); False: the plain sampler's draws from `generator`.
    gumbel: bool = False
    # Image jobs of masked completion: [images, steps] int64 on the model's device, the token at
    # each known position and -1 where it is sampled (the same positions for every image).
    known: Tensor | None = None
    # Derived from `known`: for each position t, the next position after t to sample (steps if none).
    _next_sample: list[int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        lengths = {len(r) for r in self.prompt_ids}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError("a job's rows must be non-empty and of equal length")
        if self.kind == "image" and len(self.prompt_ids) % 2:
            raise ValueError("an image job has a conditional and an unconditional row per image")
        if self.branches < 1 or (self.branches > 1 and not self.jacobi):
            raise ValueError(f"branches (>= 1) are rows of a Jacobi job's window, got {self.branches}")
        if self.jacobi and (self.kind != "image" or self.n_rows != 2 * self.branches):
            raise ValueError("speculative Jacobi decoding runs one image per job (two rows per branch)")
        if self.gumbel and (self.jacobi or not isinstance(self.generator, Sequence)
                            or len(self.generator) != self.images):
            raise ValueError("a plain Gumbel job has no window and a generator per image")
        if self.jacobi_sampler not in JACOBI_SAMPLERS:
            raise ValueError(f"jacobi_sampler must be one of {', '.join(JACOBI_SAMPLERS)}, got {self.jacobi_sampler!r}")
        if self.known is not None:
            if self.kind != "image" or tuple(self.known.shape) != (self.images, self.steps):
                raise ValueError(f"known tokens of an image job are [images, steps] = [{self.images}, "
                                 f"{self.steps}], got {list(self.known.shape)}")
            sampled = (self.known < 0).cpu()
            if bool((sampled != sampled[0]).any()):
                raise ValueError("every image of a job samples the same positions")
            todo = sampled[0].tolist()
            if not any(todo):
                raise ValueError("a masked job must sample at least one token")
            nxt, after = [self.steps] * self.steps, self.steps
            for t in range(self.steps - 1, -1, -1):
                nxt[t] = after
                if todo[t]:
                    after = t
            object.__setattr__(self, "_next_sample", nxt)

    @property
    def n_rows(self) -> int:
        return len(self.prompt_ids)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids[0])

    @property
    def length(self) -> int:
        """Cache slots each of this job's rows needs at most."""
        return self.prompt_len + self.steps

    @property
    def prefix(self) -> int:
        """Known tokens before the first one to sample (prefilled with the prompt)."""
        if self._next_sample is None:
            return 0
        return 0 if bool(self.known[0, 0] < 0) else self._next_sample[0]

    def next_sample(self, t: int) -> int:
        """The first position after `t` to sample (`steps` when none is left)."""
        return t + 1 if self._next_sample is None else self._next_sample[t]

    @property
    def images(self) -> int:
        """Images an image job makes (0 for text)."""
        return self.n_rows // (2 * self.branches) if self.kind == "image" else 0


@dataclass
class _Drafts:
    """Speculative Jacobi state: hidden states of the last window [2 x branches, m, D], its draft
    tokens [m-1] and the distributions they were drawn from [m-1, V] (None when greedy or Gumbel);
    with branches, the other rows' first drafts [branches - 1] (their later drafts are the same)
    and the row whose run was kept last; Gumbel Jacobi: the image's noise key and the noise rows
    [V] of the positions in reach."""

    window: Tensor
    tokens: Tensor | None = None
    proposals: Tensor | None = None
    alternatives: Tensor | None = None
    winner: int = 0
    key: int | None = None
    noise: dict[int, Tensor] = field(default_factory=dict)

    def gumbel(self, positions: range, vocab: int, device: torch.device) -> Tensor:
        """Noise [len(positions), V] of these positions (drawn once each, then kept while in reach)."""
        missing = [j for j in positions if j not in self.noise]
        for j, row in zip(missing, gumbel_noise(self.key, missing, vocab, device)):
            self.noise[j] = row
        if not len(positions):
            return torch.empty(0, vocab, device=device)
        return torch.stack([self.noise[j] for j in positions])

    def forget_before(self, position: int) -> None:
        for j in [j for j in self.noise if j < position]:
            del self.noise[j]


@dataclass(eq=False)
class JobState:
    """A job while the runner holds it."""

    job: Job
    start_row: int
    done_steps: int = 0
    forward_passes: int = 0
    drafts_accepted: int = 0  # Jacobi jobs: drafts kept so far (tokens beyond one per pass)
    pass_ids: set[int] = field(default_factory=set)  # the runner's passes it took part in
    cached_prefix: int = 0  # text jobs: prompt positions whose keys/values came from the prefix cache
    keys: tuple = ()  # text jobs: a key per prompt position (the prefix cache's)
    fed_tokens: int = 0  # text jobs: sampled tokens fed back (their keys/values are cached)
    finished: bool = False
    error: BaseException | None = None
    tokens: Tensor | None = None  # image: [n, steps] long on the model's device
    token_ids: list[int] = field(default_factory=list)  # text: sampled ids (EOS included)
    nonfinite: Tensor | None = None  # bool on the device: a non-finite logit was seen
    drafts: _Drafts | None = None  # Jacobi jobs
    gumbel_keys: list[int] | None = None  # plain Gumbel jobs: each image's noise key

    @property
    def rows(self) -> slice:
        return slice(self.start_row, self.start_row + self.job.n_rows)

    @property
    def next_slot(self) -> int:
        """Cache slot (= RoPE position) of the (first) token fed at the next decode step."""
        return self.job.prompt_len + self.done_steps - 1

    def _row_ids(self) -> Tensor:
        return torch.arange(self.rows.start, self.rows.stop)


# (state, rows [N] on the host, embeddings [N, T, D]) to feed at the next slots of `state`.
Feed = tuple[JobState, Tensor, Tensor]


def _pass_length(feed: Feed) -> int:
    """The positions of the forward pass a feed (state, rows, h [N, L, D]) joins: a Jacobi job's
    whole window (window + 1, or more where a run of known tokens extends it), else its own L."""
    state, _, h = feed
    window = state.job.jacobi
    return max(h.shape[1], window + 1) if window else h.shape[1]


class Decoder:
    """One decode mode: which jobs it takes, how it samples their next tokens and what it feeds
    back, and what it keeps of the forward pass's output."""

    @staticmethod
    def takes(job: Job) -> bool:
        raise NotImplementedError

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        """Sample the next token(s) of `states`: (the states that finished, what to feed)."""
        raise NotImplementedError

    def fed(self, runner: BatchRunner, state: JobState, rows: Tensor, out: Tensor) -> None:
        """Keep the output [N, T, D] of what `state` fed on `rows`: the rows' last hidden states."""
        runner.hidden[_upload(rows, runner.device)] = out[:, -1]


def _guided_tokens(runner: BatchRunner, states: list[JobState]) -> list[tuple[JobState, Tensor | None]]:
    """The next guided token of every image of each state's job ([n] per state), sampled from its
    rows' last hidden states with one read of the image head for all: (state, tokens), tokens
    None where the sampler refused the logits (NaN or inf; the state's error is set then)."""
    rows = _upload(torch.cat([s._row_ids() for s in states]), runner.device)
    logits = runner.model.image_logits(runner.hidden[rows])  # [R, codebook]
    out: list[tuple[JobState, Tensor | None]] = []
    for s, lg in zip(states, logits.split([s.job.n_rows for s in states])):
        guided = cfg_combine(lg, s.job.guidance)
        s.nonfinite |= non_finite(guided)
        try:
            if s.job.gumbel and s.job.sampling.temperature > 0:
                out.append((s, _gumbel_step(s, guided)))
            else:
                out.append((s, sample(guided, s.job.sampling, s.job.generator)))  # [n]
        except RuntimeError:  # multinomial refuses NaN/inf probabilities
            s.error = NonFiniteLogits()
            out.append((s, None))
    return out


def _gumbel_step(s: JobState, guided: Tensor) -> Tensor:
    """Guided logits [n, V] of a plain Gumbel job -> each image's token at position `done_steps`:
    its noisy argmax with the noise a Gumbel Jacobi job keyed the same would use there."""
    job = s.job
    if s.gumbel_keys is None:  # one draw from each image's stream, as a Jacobi job's first step
        s.gumbel_keys = [gumbel_key(g) for g in job.generator]
    scores = filter_logits(temper(guided, job.sampling.temperature), job.sampling.top_k, job.sampling.top_p)
    noise = torch.cat([gumbel_noise(key, [s.done_steps], scores.shape[-1], scores.device) for key in s.gumbel_keys])
    return gumbel_tokens(scores, noise)


class ImageDecoder(Decoder):
    """Plain image jobs: one guided token per image per step, one read of the image head for all."""

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "image" and not job.jacobi and job.known is None

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        model = runner.model
        finished: list[JobState] = []
        continuing: list[tuple[JobState, Tensor]] = []
        for s, tokens in _guided_tokens(runner, states):
            if tokens is None:
                finished.append(s)
                continue
            s.tokens[:, s.done_steps] = tokens
            s.done_steps += 1
            if s.done_steps == s.job.steps:
                if bool(s.nonfinite):
                    s.error = NonFiniteLogits()
                finished.append(s)
            else:
                continuing.append((s, tokens.repeat_interleave(2)))
        feeds: list[Feed] = []
        if continuing:
            h = model.embed_image_tokens(torch.cat([t for _, t in continuing]))[:, None]  # [R, 1, D]
            for (s, _), hs in zip(continuing, h.split([s.job.n_rows for s, _ in continuing])):
                feeds.append((s, s._row_ids(), hs))
        return finished, feeds


class MaskedImageDecoder(Decoder):
    """Image jobs with known tokens (masked completion): one guided token per image where the
    mask says sample, then that token and the run of known tokens after it fed in one pass.

    Invariant between steps: the rows' last hidden state predicts position `done_steps`, which
    is always one to sample (the prefill fed the known prefix; each feed runs up to the next).
    """

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "image" and not job.jacobi and job.known is not None

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        model = runner.model
        finished: list[JobState] = []
        continuing: list[tuple[JobState, Tensor]] = []
        for s, tokens in _guided_tokens(runner, states):
            if tokens is None:
                finished.append(s)
                continue
            job, t = s.job, s.done_steps
            s.tokens[:, t] = tokens
            u = job.next_sample(t)
            s.tokens[:, t + 1:u] = job.known[:, t + 1:u]
            s.done_steps = t + 1  # the slot of the first token fed (`next_slot`) is t's
            if u == job.steps:  # the rest is known: nothing more to feed
                s.done_steps = job.steps
                if bool(s.nonfinite):
                    s.error = NonFiniteLogits()
                finished.append(s)
            else:
                continuing.append((s, s.tokens[:, t:u]))
        feeds: list[Feed] = []
        for s, window in continuing:  # [n, L]: the sampled token, then the known run after it
            h = model.embed_image_tokens(window).repeat_interleave(2, dim=0)  # [2n, L, D]: cond, uncond
            feeds.append((s, s._row_ids(), h))
        return finished, feeds

    def fed(self, runner: BatchRunner, state: JobState, rows: Tensor, out: Tensor) -> None:
        runner.hidden[_upload(rows, runner.device)] = out[:, -1]
        state.done_steps = state.job.next_sample(state.done_steps - 1)


class TextDecoder(Decoder):
    """Text jobs: one token per row per step; the step's one host sync decides who stops."""

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "text"

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        model, device = runner.model, runner.device
        rows = torch.tensor([s.start_row for s in states], device=device)
        logits = model.text_logits(runner.hidden[rows]).float()  # [J, vocab]
        picked: list[Tensor] = []
        bad = non_finite(logits, dim=-1)
        failed: set[int] = set()
        for i, (s, lg) in enumerate(zip(states, logits.split(1))):
            try:
                picked.append(sample(lg, s.job.sampling, s.job.generator))
            except RuntimeError:  # multinomial refused the probabilities: the row fails (never a made-up token)
                failed.add(i)
                picked.append(torch.zeros(1, dtype=torch.long, device=device))
        tokens = torch.cat(picked)
        values, flags = torch.stack([tokens, bad.long()]).tolist()
        finished: list[JobState] = []
        going: list[tuple[JobState, int]] = []
        for i, (s, t, b) in enumerate(zip(states, values, flags)):
            if b or i in failed:
                s.error = NonFiniteLogits()
                finished.append(s)
                continue
            s.token_ids.append(t)
            s.done_steps += 1
            if s.done_steps == s.job.steps or t == s.job.eos_id:
                finished.append(s)
            else:
                going.append((s, t))
        feeds: list[Feed] = []
        if going:
            h = model.embed_text(torch.tensor([t for _, t in going], device=device))[:, None, None]
            feeds = [(s, torch.tensor([s.start_row]), hs) for (s, _), hs in zip(going, h)]
        return finished, feeds


class JacobiDecoder(Decoder):
    """Image jobs of one image decoded by speculative Jacobi decoding: each step verifies the
    drafts of every job's last window and feeds each a new window (the rule: `sampling.
    verify_window`; the next drafts: Gumbel Jacobi's own tokens, `sampling.gumbel_drafts`, or
    MC-SJD's coupled / SJD's fresh redraw, `sampling.next_drafts`). Each job's window goes
    through the image head on its own (a shared product over neighbours' windows of other sizes
    changed bf16 bits); windows of one length are fed in one forward pass.

    With known tokens (masked completion) a known position's draft is the known token and is
    kept without a test; a window reaches over known runs to hold `jacobi` positions to sample.
    """

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "image" and bool(job.jacobi)

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        model = runner.model
        windows = [s.drafts.window for s in states]  # each [2, m, D]
        # Each job's window through the image head on its own: a product's rows round alike only
        # when computed alike, and a job's tokens must not depend on its neighbours (issue 23).
        logits = [model.image_logits(w.flatten(0, 1)) for w in windows]  # [2 x branches x m, V] each
        finished: list[JobState] = []
        going: list[tuple[JobState, Tensor]] = []
        for s, w, lg in zip(states, windows, logits):
            kept, before = s.drafts_accepted, s.done_steps
            try:
                window = self._next_window(s, lg.view(w.shape[0], w.shape[1], -1))
            except RuntimeError:  # non-finite logits (multinomial refuses them too)
                s.error = NonFiniteLogits()
                window = None
            if window is not None and s.job.branches > 1:
                runner.share_branch(s, before)
            # Drafts verified: those kept, and the first rejected one if any was (one row's
            # acceptance, what `auto` weighs windows with: branched jobs are not counted).
            kept = s.drafts_accepted - kept
            if s.job.branches == 1:
                stats = runner.draft_stats[s.job.sampling.temperature == 0]
                stats[0] += kept
                stats[1] += kept + (kept < w.shape[1] - 1)
            if window is None:
                finished.append(s)
            else:
                going.append((s, window))
        feeds: list[Feed] = []
        if going:
            going = [(s, self._branch_rows(s, w)) for s, w in going]  # [branches, L] each
            h = model.embed_image_tokens(torch.cat([w.flatten() for _, w in going]))  # [sum L, D]
            for (s, w), hs in zip(going, h.split([w.numel() for _, w in going])):
                # Each branch's window on its conditional and unconditional rows.
                feeds.append((s, s._row_ids(), hs.view(*w.shape, -1).repeat_interleave(2, dim=0)))
        return finished, feeds

    @staticmethod
    def _branch_rows(s: JobState, window: Tensor) -> Tensor:
        """The window [L] (the new exact token, then the drafts) as each branch feeds it: [branches,
        L], branch b > 0 with its own first draft."""
        d, branches = s.drafts, s.job.branches
        rows = window.expand(branches, -1)
        if d.alternatives is None:
            return rows
        rows = rows.clone()
        rows[1:, 1] = torch.where(d.alternatives >= 0, d.alternatives, window[1])  # none left: a copy
        return rows

    def fed(self, runner: BatchRunner, state: JobState, rows: Tensor, out: Tensor) -> None:
        state.drafts.window = out

    @staticmethod
    def _next_window(s: JobState, logits: Tensor) -> Tensor | None:
        """Keep what the last window accepts (`logits` [cond/uncond, m, V] of its m outputs); the
        next window (the new exact token, then the next drafts), or None when the image is done."""
        job, d = s.job, s.drafts
        m = logits.shape[1]
        base = s.done_steps  # the position output 0 predicts
        known = job.known[0] if job.known is not None else None  # [steps], -1 where sampled
        # [branches, m, V], as cfg_combine: each branch's (cond, uncond) rows.
        guided = logits[1::2] + job.guidance * (logits[0::2] - logits[1::2])
        s.nonfinite |= non_finite(guided)
        greedy = job.sampling.temperature == 0
        gumbel = not greedy and job.jacobi_sampler == "gumbel"
        probs = best = scores = None
        if greedy:
            best = guided.argmax(-1)
        else:
            scores = filter_logits(temper(guided, job.sampling.temperature), job.sampling.top_k, job.sampling.top_p)
            if gumbel:  # each output's token: its position's noisy argmax, a deterministic function
                if d.key is None:
                    d.key = gumbel_key(job.generator)
                best = gumbel_tokens(scores, d.gumbel(range(base, base + m), scores.shape[-1], scores.device))
            else:
                probs = torch.softmax(scores, dim=-1)
        drafts = d.tokens if d.tokens is not None else torch.empty(0, dtype=torch.long, device=guided.device)
        known_here = None if known is None else known[base:base + m]
        if d.alternatives is not None and probs is not None:  # sampled drafts on several rows
            d.winner, tokens, accepted = verify_branches(probs, drafts, d.alternatives, d.proposals, job.generator,
                                                         known=known_here)
        else:
            # Argmax drafts: the branch the model kept longest (the first on ties: the main row);
            # every branch saw the same exact prefix, so its kept run is exact.
            d.winner = 0 if d.alternatives is None else longest_run(
                best, branch_drafts(drafts, d.alternatives), known_here)
        if d.winner:
            drafts = torch.cat([d.alternatives[d.winner - 1:d.winner], drafts[1:]])
        if best is not None:
            best = best[d.winner]
        if probs is not None:
            probs = probs[d.winner]
        if d.alternatives is None or probs is None:
            tokens, accepted = verify_window(probs, best, drafts, d.proposals, job.generator, known=known_here)
        tokens = tokens[:job.steps - base]
        s.tokens[0, base:base + len(tokens)] = tokens
        s.done_steps += len(tokens)
        s.drafts_accepted += accepted
        if job.next_sample(s.done_steps - 1) >= job.steps:  # done, or only known tokens are left
            if known is not None:
                s.tokens[0, s.done_steps:] = known[s.done_steps:]
            s.done_steps = job.steps
            if bool(s.nonfinite):
                raise RuntimeError("non-finite logits")
            return None
        # Drafts up to the `jacobi`-th position still to sample (known positions: the known token).
        last = s.done_steps - 1
        for _ in range(job.jacobi):
            if job.next_sample(last) >= job.steps:
                break
            last = job.next_sample(last)
        n_drafts = last - s.done_steps + 1
        known_next = None if known is None else known[s.done_steps:s.done_steps + n_drafts]
        if gumbel:
            d.forget_before(s.done_steps)
            nxt = gumbel_drafts(best, accepted, n_drafts, tokens[-1:])
            d.tokens = nxt if known_next is None else torch.where(known_next >= 0, known_next, nxt)
            d.proposals = None
        else:
            d.tokens, d.proposals = next_drafts(
                probs, best, drafts, d.proposals, accepted, n_drafts, job.generator,
                coupled=job.jacobi_sampler == "mcsjd", known=known_next)
        d.alternatives = None
        if job.branches > 1 and (known_next is None or bool(known_next[0] < 0)):
            # The other branches' first drafts: the next best candidates at the first draft's
            # position, by the pass's output there (past the window: its last output, a proxy),
            # with that position's own noise when Gumbel.
            if gumbel or greedy:
                j = min(len(tokens), m - 1)
                ranked = guided[d.winner, j] if greedy else (
                    scores[d.winner, j].float() + d.gumbel(range(s.done_steps, s.done_steps + 1),
                                                           scores.shape[-1], scores.device)[0])
                d.alternatives = first_draft_alternatives(ranked, d.tokens[0], job.branches - 1)
            else:  # more draws from the first draft's proposal, without replacement (-1: none left)
                d.alternatives = draws_without_replacement(d.proposals[0], d.tokens[0], job.branches - 1,
                                                           job.generator)
        return torch.cat([tokens[-1:], d.tokens])


def _prefill_key(job: Job) -> tuple | None:
    """What decides an image job's prefill (its prompt rows; only jobs without known tokens or
    images in the prompt), so that jobs with the same key have the same prefill bit for bit; None
    for jobs whose prefill is never shared."""
    if job.kind != "image" or job.known is not None:
        return None
    # A branched job prefills its first branch's rows alone: not the pass of a job with its rows.
    return job.branches, tuple(tuple(r) for r in job.prompt_ids)


def _position_keys(job: Job, image_hashes: list[bytes]) -> tuple:
    """A key per prompt position of a text job: its token id, or at an image's positions the
    image's content hash and the offset in it (the ids there are one placeholder for all images)."""
    keys: list = list(job.prompt_ids[0])
    if image_hashes:
        where = job.image_mask.nonzero().flatten().tolist()
        per_image = len(where) // len(image_hashes)
        for i, pos in enumerate(where):
            keys[pos] = (image_hashes[i // per_image], i % per_image)
    return tuple(keys)


class PrefixCache:
    """Keys and values of finished conversations, reused by later prompts that start the same way
    (a chat's next turn repeats every earlier turn and image): exact, shared by all callers,
    least recently used first out.

    An entry is one row's cached positions with a key per position: the token id, or at an
    image's positions the image's content hash and the offset in it (the ids there are all the
    same placeholder). A prompt reuses the longest common prefix with any entry: the keys and
    values of positions before it depend on those positions only. `capacity` (cached positions)
    is set by the engine to what the KV budget leaves beside the running jobs, and `trim`
    evicts down to it.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, tuple[tuple, Tensor, Tensor]] = OrderedDict()  # id -> (keys, k, v)
        self._next = 0
        self.tokens = 0  # cached positions held

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: tuple) -> tuple[int, Tensor | None, Tensor | None]:
        """(length P of the longest prefix of `keys` held, its keys [layers, H, P, hd] and values)."""
        best, found = 0, None
        for eid, (stored, _, _) in self._entries.items():
            n = min(len(stored), len(keys))
            same = next((i for i in range(n) if stored[i] != keys[i]), n)
            if same > best:
                best, found = same, eid
        if found is None:
            return 0, None, None
        self._entries.move_to_end(found)  # most recently used last
        _, k, v = self._entries[found]
        return best, k[:, :, :best], v[:, :, :best]

    def store(self, keys: tuple, k: Tensor, v: Tensor) -> None:
        """Hold one row's keys/values k, v [layers, H, P, hd] for the positions `keys` [P],
        unless an entry already covers them (the owner trims to capacity with `trim`, once the
        job that made the entry has freed its rows)."""
        if not keys:
            return
        for eid, (stored, _, _) in list(self._entries.items()):
            if stored[:len(keys)] == keys:  # covered already
                self._entries.move_to_end(eid)
                return
            if keys[:len(stored)] == stored:  # the new entry covers this one
                self._drop(eid)
        self._entries[self._next] = (keys, k, v)
        self._next += 1
        self.tokens += len(keys)

    def trim(self) -> None:
        """Drop least recently used entries until what is held fits the capacity."""
        while self._entries and self.tokens > self.capacity:
            self._drop(next(iter(self._entries)))

    def _drop(self, eid: int) -> None:
        keys, _, _ = self._entries.pop(eid)
        self.tokens -= len(keys)




class BatchRunner:
    """Decodes many jobs together on one KV cache of at most `rows` rows.

    `add_all` prefills jobs on the rows the scheduler chose (they join at the next `step`);
    `step` samples the next token(s) of every job and feeds them back; finished and removed
    jobs free their rows at once. The cache grows in length buckets (and in row counts of
    powers of two) and is reused; attention reads only the slots in use, rounded up to a
    bucket, so a compiled step compiles once per (rows, bucket), never per prompt length.
    """

    def __init__(self, model: Janus, rows: int = 16, length_bucket: int = 128,
                 compile: bool = False, compile_backend: str | Callable = "inductor",
                 prefix_cache: bool = False) -> None:
        if rows < 2:
            raise ValueError(f"rows must be >= 2 (an image takes two rows), got {rows}")
        self.model = model
        self.rows = rows
        self.length_bucket = length_bucket
        self.compile = compile
        self.states: list[JobState] = []
        self.passes = 0  # forward passes run: prefills, and decode steps (each feeds every job)
        self.prefix_cache: PrefixCache | None = PrefixCache() if prefix_cache else None
        # Jacobi drafts (kept, verified) so far, greedy (True) and sampled apart.
        self.draft_stats: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}
        # In this order: jobs that share a random stream (chunks of one request) see the same
        # order of draws whichever other jobs run beside them.
        self.decoders = (ImageDecoder(), MaskedImageDecoder(), TextDecoder(), JacobiDecoder())
        self.feature_cache = 64  # images whose understanding features are kept
        self._features: OrderedDict[bytes, Tensor] = OrderedDict()
        self.cache: KVCache | None = None
        self.hidden: Tensor | None = None  # [rows, D] last hidden state of every row
        self._step_fn: Callable[[Tensor, Tensor, int], Tensor] = self._decode
        if compile:
            # On a GPU the step is also captured as a CUDA graph per (rows, length bucket): one
            # launch per step instead of hundreds of small kernels. The cache tensors it writes
            # are static addresses (`_ensure_cache`), so a replay writes them in place.
            cuda = self.device.type == "cuda" and compile_backend == "inductor"
            self._step_fn = torch.compile(self._decode, dynamic=False, backend=compile_backend,
                                          mode="reduce-overhead" if cuda else None)

    @property
    def device(self) -> torch.device:
        return self.model.llm.embed.weight.device

    def _decoder(self, job: Job) -> Decoder:
        return next(d for d in self.decoders if d.takes(job))

    # --- joining and leaving ----------------------------------------------------------------

    def _ensure_cache(self, rows: int, length: int) -> None:
        llm = self.model.llm
        if length > llm.cfg.max_seq_len:
            raise UserError(f"the job needs {length} positions but the model has {llm.cfg.max_seq_len}")
        rows = min(self.rows, _pow2_at_least(rows))
        # + 1: the scratch slot at the end, written by rows a pass does not feed (not a position).
        length = min(llm.cfg.max_seq_len + 1, round_up(length + 1, self.length_bucket))
        old = self.cache
        if old is not None and old.batch >= rows and old.max_len >= length:
            return
        if old is not None:
            rows, length = max(rows, old.batch), max(length, old.max_len)
        ref = llm.embed.weight
        new = KVCache.allocate(llm.cfg.n_layers, rows, length, llm.cfg.n_kv_heads, llm.cfg.head_dim,
                               device=ref.device, dtype=ref.dtype)
        hidden = torch.zeros(rows, llm.cfg.dim, device=self.device, dtype=llm.embed.weight.dtype)
        if old is not None:
            new.copy_(old, slice(0, old.batch))
            hidden[:old.batch] = self.hidden
        if self.compile:
            for t in [*new.k, *new.v]:
                torch._dynamo.mark_static_address(t)
        self.cache, self.hidden = new, hidden

    def add(self, job: Job, start_row: int = 0) -> JobState:
        """Prefill `job` on rows from `start_row`; it takes part in the next `step`."""
        states, failed = self.add_all([(job, start_row)])
        if failed:
            raise failed[0][1]
        return states[0]

    @torch.inference_mode()
    def add_all(self, placed: Sequence[tuple[Job, int]]) -> tuple[list[JobState], list[tuple[Job, BaseException]]]:
        """Prefill jobs on the rows given (job, first row), which must be free. Each job's prompt
        is its own forward pass, never shared with another job's: the row count of a pass's
        matrix products would then depend on the neighbours, and with some kernels (bf16 on CPUs
        without bf16 instructions, int8) so would the bits, breaking same-seed-same-output
        (issue 23; the cost is measured by bench/bench_batch_invariance.py). Returns the states of
        the jobs that joined, and the jobs whose own inputs failed (e.g. an image), with the error."""
        device = self.device
        ready: list[tuple[JobState, Tensor]] = []
        failed: list[tuple[Job, BaseException]] = []
        for job, start in placed:
            if start < 0 or start + job.n_rows > self.rows or any(
                    start < s.rows.stop and s.rows.start < start + job.n_rows for s in self.states):
                raise ValueError(f"rows {start}..{start + job.n_rows - 1} are not free")
            try:
                # [R, T]; a Jacobi job's branches share one prompt: embedded and run once (`_prefill`).
                ids = torch.tensor(job.prompt_ids[:job.n_rows // job.branches], dtype=torch.long, device=device)
                h = self.model.embed_text(ids)
                hashes: list[bytes] = []
                if job.kind == "text" and job.pixel_values is not None and job.pixel_values.shape[0]:
                    feats, hashes = self._und_features(job.pixel_values)  # [N, P, D]
                    h = self.model.splice_und_features(h, job.image_mask.to(device)[None], feats)
                if job.prefix:  # known image tokens before the first to sample, in both CFG rows
                    known = self.model.embed_image_tokens(job.known[:, :job.prefix].to(device))  # [n, P, D]
                    h = torch.cat([h, known.repeat_interleave(2, dim=0)], dim=1)
            except Exception as e:  # this job's own input: it alone fails
                failed.append((job, e))
                continue
            self._ensure_cache(start + job.n_rows, job.length)
            state = JobState(job, start)
            if job.kind == "text":
                state.keys = _position_keys(job, hashes)
            self.states.append(state)  # holds its rows from now on
            ready.append((state, h))
        try:
            done: dict[tuple, JobState] = {}  # image jobs prefilled in this call, by their prompt rows
            for state, h in ready:
                # Each job is prefilled in a pass of its own: a product's rows round the same only
                # when computed the same way, so a request never shares its prefill (batch invariance).
                # An image job whose rows are exactly those of one prefilled just before (the images
                # of a Jacobi request) takes a copy of that pass's keys/values: the very bits its
                # own pass would have computed (the same rows through the same pass), one pass fewer.
                key = _prefill_key(state.job)
                if key is not None and key in done:
                    self._copy_prefill(done[key], state)
                elif not self._prefill_from_cache(state, h):
                    self._prefill(state, h)
                    if key is not None:
                        done[key] = state
        except Exception:
            for state, _ in ready:
                self.remove(state)
            raise
        return [s for s, _ in ready], failed

    def _prefill_from_cache(self, state: JobState, h: Tensor) -> bool:
        """Prefill a text job whose prompt starts as a prefix-cache entry does: copy the entry's
        keys/values into its row, run the rest of the prompt on its own. False when nothing is
        cached for it (it is prefilled whole)."""
        if self.prefix_cache is None or state.job.kind != "text":
            return False
        # At least the last prompt position runs: its output is the first token's distribution.
        keys = state.keys[:-1]
        n, k, v = self.prefix_cache.lookup(keys)
        if n == 0:
            return False
        row = state.start_row
        for layer in range(len(self.cache.k)):
            self.cache.k[layer][row, :, :n] = k[layer]
            self.cache.v[layer][row, :, :n] = v[layer]
        state.cached_prefix = n
        self._prefill(state, h[:, n:], start=n)
        return True

    def _prefill(self, state: JobState, h: Tensor, start: int = 0) -> None:
        """One forward pass over the prompt of `state`'s job (its R rows), h [R, T, D]: the prompt
        positions from `start` (slots before it already hold keys/values, from the prefix cache),
        written straight into the job's rows of the cache."""
        device = self.device
        branches = state.job.branches  # h holds the first branch's rows: the others take copies
        R, T = h.shape[:2]
        slots = torch.arange(start, start + T, device=device)
        positions = slots.expand(R, T)
        mask = cache_mask(slots, torch.ones(R, start + T, dtype=torch.bool, device=device))
        cache = self.cache.rows(state.start_row, state.start_row + R)
        # The prompt fills slots 0..start+T-1 of its own rows: attend over those only.
        self.passes += 1
        out = self.model.llm(h, positions, mask=mask, cache=cache, slots=slots, kv_len=start + T)[:, -1]
        if branches > 1:
            self._copy_rows(state, 0, slice(0, start + T))
            out = out.repeat(branches, 1)
        self._start(state, out)

    def _copy_rows(self, state: JobState, branch: int, slots: slice) -> None:
        """Copy the keys/values of one branch's rows of a Jacobi job, at `slots`, to its others."""
        first, span = state.start_row, 2 * state.job.branches
        src = slice(first + 2 * branch, first + 2 * branch + 2)
        dst = [r for r in range(first, first + span) if not src.start <= r < src.stop]
        for t in [*self.cache.k, *self.cache.v]:
            t[dst, :, slots] = t[src, :, slots].repeat(len(dst) // 2, 1, 1, 1)

    def share_branch(self, state: JobState, before: int) -> None:
        """After a branched Jacobi pass: every branch takes the keys/values of the tokens the
        winning branch kept (its slots from the newest exact token fed, before the pass had made
        `before` tokens, up to the newest now), so all start the next window from the same prefix."""
        first = state.job.prompt_len + before - 1
        self._copy_rows(state, state.drafts.winner, slice(first, state.next_slot))

    def _copy_prefill(self, src: JobState, state: JobState) -> None:
        """Start `state` from the prefill of `src`, a job of the same prompt rows prefilled earlier in
        the same `add_all` (no step has run since): its rows' keys/values and last hidden states,
        copied."""
        T = src.job.prompt_len
        for layer in range(len(self.cache.k)):
            self.cache.k[layer][state.rows, :, :T] = self.cache.k[layer][src.rows, :, :T]
            self.cache.v[layer][state.rows, :, :T] = self.cache.v[layer][src.rows, :, :T]
        self._start(state, self.hidden[src.rows].clone(), max(src.pass_ids))

    def _start(self, state: JobState, out: Tensor, pass_id: int | None = None) -> None:
        """Set `state` going after its prefill (the runner's pass `pass_id`, by default the last),
        whose last hidden states are `out` [R, D]."""
        device, job = self.device, state.job
        self.hidden[state.rows] = out
        if job.jacobi:
            state.drafts = _Drafts(window=out[:, None])  # [2, 1, D]: the exact distribution of the first token
        if job.kind == "image":
            state.tokens = torch.empty(job.images, job.steps, dtype=torch.long, device=device)
            if job.prefix:
                state.tokens[:, :job.prefix] = job.known[:, :job.prefix]
                state.done_steps = job.prefix
        state.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        state.forward_passes += 1
        state.pass_ids.add(self.passes if pass_id is None else pass_id)

    def _und_features(self, pixels: Tensor) -> tuple[Tensor, list[bytes]]:
        """Understanding features [N, P, D] of preprocessed images [N, 3, S, S], and each image's
        content hash. Each image is encoded on its own (so its features never depend on what it
        was batched with) and remembered by content: a conversation re-sends its images every
        turn, and benchmarks ask many questions about one image."""
        out, hashes = [], []
        dtype = self.model.llm.embed.weight.dtype
        for image in pixels:
            key = hashlib.sha1(image.contiguous().view(torch.uint8).cpu().numpy().tobytes()).digest()
            feats = self._features.pop(key, None)
            if feats is None:
                feats = self.model.encode_und_images(image[None].to(self.device, dtype))[0]
            self._features[key] = feats  # most recently used last
            while len(self._features) > self.feature_cache:
                self._features.popitem(last=False)
            out.append(feats)
            hashes.append(key)
        return torch.stack(out), hashes

    def remove(self, state: JobState, keep_prefix: bool = False) -> None:
        """Take a job out of the batch (finished or cancelled); its rows are free at once. With
        `keep_prefix`, a text job's cached positions (prompt and the answer tokens fed) go to
        the prefix cache first."""
        if state not in self.states:
            return
        if keep_prefix and self.prefix_cache is not None and state.job.kind == "text" and state.error is None:
            # Fed: the prompt, then every sampled token but a last one that ended the job unfed.
            fed = state.job.prompt_len + state.fed_tokens
            keys = state.keys + tuple(state.token_ids[:state.fed_tokens])
            row = state.start_row
            k = torch.stack([t[row, :, :fed] for t in self.cache.k])  # [layers, H, fed, hd]
            v = torch.stack([t[row, :, :fed] for t in self.cache.v])
            self.prefix_cache.store(keys[:fed], k, v)
        self.states.remove(state)

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, x: Tensor, slots: Tensor, kv_len: int) -> Tensor:
        """Tokens [R, T, D] at per-row cache `slots` [R, T] -> hidden [R, T, D]."""
        key_idx = torch.arange(kv_len, device=x.device)
        # Rows are unpadded: a query's keys are exactly its row's slots up to its own.
        mask = (key_idx[None, None, :] <= slots[:, :, None])[:, None]  # [R, 1, T, kv_len]
        # The whole cache: the step writes its first R rows by index (no view of it to mutate).
        return self.model.llm(x, slots, mask=mask, cache=self.cache, slots=slots, kv_len=kv_len)

    @torch.inference_mode()
    def step(self) -> list[JobState]:
        """Sample the next token(s) of every job and feed the continuing ones back; returns the
        jobs that finished (done or failed) in this step, already removed from the batch."""
        finished: list[JobState] = []
        feeds: list[Feed] = []
        for decoder in self.decoders:
            mine = [s for s in self.states if decoder.takes(s.job)]
            if mine:
                done, fed = decoder.sample(self, mine)
                finished += done
                feeds += fed
        for s in finished:
            s.finished = True
            self.remove(s, keep_prefix=True)
        # One forward pass per fed length: plain jobs and answers feed one token per row, Jacobi
        # jobs their full windows (positions past what a window holds now are padding).
        groups: dict[int, list[Feed]] = {}
        for feed in feeds:
            groups.setdefault(_pass_length(feed), []).append(feed)
        for length in sorted(groups):
            group = groups[length]
            self.passes += 1
            for (s, r, h), out in zip(group, self._forward(group, length)):
                s.forward_passes += 1
                s.fed_tokens += h.shape[1]
                s.pass_ids.add(self.passes)
                self._decoder(s.job).fed(self, s, r, out)
        return finished

    def _forward(self, feeds: list[Feed], T: int) -> list[Tensor]:
        """Feed every (state, rows [N], h [N, L <= T, D]) at its state's next slots in one pass over
        the cache rows [0, hi), T positions: positions past a row's L, and rows not fed,
        write only the scratch slot at the end of the cache and their output is dropped, so the
        batch stays a plain slice of the cache. -> the outputs [N, L, D] of each feed."""
        hi = max(s.rows.stop for s in self.states)
        if self.compile:
            hi = min(self.cache.batch, _pow2_at_least(hi))  # a few row buckets, not every count
        scratch = self.cache.max_len - 1
        slots = torch.full((hi, T), scratch, dtype=torch.long)
        top = 0
        for s, r, h in feeds:
            L = h.shape[1]
            slots[r, :L] = torch.arange(s.next_slot, s.next_slot + L)
            top = max(top, s.next_slot + L)
        kv_len = min(self.cache.max_len, round_up(top, self.length_bucket))
        h0 = feeds[0][2]
        x = torch.zeros(hi, T, h0.shape[-1], device=h0.device, dtype=h0.dtype)
        rows = _upload(torch.cat([r for _, r, _ in feeds]), h0.device)
        x[rows] = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, T - h.shape[1])) for _, _, h in feeds])
        out = self._step_fn(x, _upload(slots, h0.device), kv_len)[rows]
        return [o[:, :h.shape[1]] for o, (_, _, h) in zip(out.split([len(r) for _, r, _ in feeds]), feeds)]


def image_job(prompt_ids: Sequence[int], pad_id: int, n: int, guidance: float, sampling: SamplingParams,
              generator: torch.Generator | None, num_tokens: int, jacobi: int = 0,
              jacobi_sampler: JacobiSampler = "mcsjd", gumbel: bool = False, branches: int = 1) -> Job:
    """The job of `n` images of one prompt: (conditional, unconditional) rows per image (per
    branch of a Jacobi image)."""
    rows = [list(prompt_ids), unconditional_prompt(prompt_ids, pad_id)] * (n * branches)
    return Job("image", rows, num_tokens, sampling, generator, guidance=guidance, jacobi=jacobi,
               jacobi_sampler=jacobi_sampler, gumbel=gumbel, branches=branches)
