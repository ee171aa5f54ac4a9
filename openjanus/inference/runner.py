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
tokens and say what to feed back, then feeds everything in one forward pass per window length.

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
from openjanus.inference.sampling import accept_drafts, cfg_combine, filter_logits, non_finite, residual, sample
from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask
from openjanus.processing import unconditional_prompt
from openjanus.requests import SamplingParams

__all__ = ["Job", "JobState", "BatchRunner", "NonFiniteLogits", "Decoder", "ImageDecoder", "MaskedImageDecoder",
           "TextDecoder", "JacobiDecoder", "image_job", "round_up"]


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
    generator: torch.Generator | None
    guidance: float = 1.0  # image jobs
    eos_id: int | None = None  # text jobs: stop after sampling it
    image_mask: Tensor | None = None  # text jobs: bool [T], positions the image features fill
    pixel_values: Tensor | None = None  # text jobs: [n_images, 3, S, S]
    jacobi: int = 0  # image jobs of one image: draft this many tokens per forward pass (0 = off)
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
        if self.jacobi and (self.kind != "image" or self.n_rows != 2):
            raise ValueError("speculative Jacobi decoding runs one image per job")
        if self.known is not None:
            if self.kind != "image" or tuple(self.known.shape) != (self.n_rows // 2, self.steps):
                raise ValueError(f"known tokens of an image job are [images, steps] = [{self.n_rows // 2}, "
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
        return self.n_rows // 2 if self.kind == "image" else 0


@dataclass
class _Drafts:
    """Speculative Jacobi state: hidden states of the last window [2, m, D], its draft tokens
    [m-1] and the distributions they were drawn from [m-1, V] (None when greedy)."""

    window: Tensor
    tokens: Tensor | None = None
    proposals: Tensor | None = None


@dataclass(eq=False)
class JobState:
    """A job while the runner holds it."""

    job: Job
    start_row: int
    done_steps: int = 0
    forward_passes: int = 0
    finished: bool = False
    error: BaseException | None = None
    tokens: Tensor | None = None  # image: [n, steps] long on the model's device
    token_ids: list[int] = field(default_factory=list)  # text: sampled ids (EOS included)
    nonfinite: Tensor | None = None  # bool on the device: a non-finite logit was seen
    drafts: _Drafts | None = None  # Jacobi jobs

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


class ImageDecoder(Decoder):
    """Plain image jobs: one guided token per image per step, one read of the image head for all."""

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "image" and not job.jacobi and job.known is None

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        model, device = runner.model, runner.device
        finished: list[JobState] = []
        rows = _upload(torch.cat([s._row_ids() for s in states]), device)
        logits = model.image_logits(runner.hidden[rows])  # [R, codebook]
        continuing: list[tuple[JobState, Tensor]] = []
        for s, lg in zip(states, logits.split([s.job.n_rows for s in states])):
            guided = cfg_combine(lg, s.job.guidance)
            s.nonfinite |= non_finite(guided)
            try:
                tokens = sample(guided, s.job.sampling, s.job.generator)  # [n]
            except RuntimeError:  # multinomial refuses NaN/inf probabilities
                s.error = NonFiniteLogits()
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
        model, device = runner.model, runner.device
        finished: list[JobState] = []
        rows = _upload(torch.cat([s._row_ids() for s in states]), device)
        logits = model.image_logits(runner.hidden[rows])  # [R, codebook]
        continuing: list[tuple[JobState, Tensor]] = []
        for s, lg in zip(states, logits.split([s.job.n_rows for s in states])):
            job, t = s.job, s.done_steps
            guided = cfg_combine(lg, job.guidance)
            s.nonfinite |= non_finite(guided)
            try:
                tokens = sample(guided, job.sampling, job.generator)  # [n]
            except RuntimeError:  # multinomial refuses NaN/inf probabilities
                s.error = NonFiniteLogits()
                finished.append(s)
                continue
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
        for s, lg in zip(states, logits.split(1)):
            try:
                picked.append(sample(lg, s.job.sampling, s.job.generator))
            except RuntimeError:
                picked.append(torch.zeros(1, dtype=torch.long, device=device))
        tokens = torch.cat(picked)
        values, flags = torch.stack([tokens, bad.long()]).tolist()
        finished: list[JobState] = []
        going: list[tuple[JobState, int]] = []
        for s, t, b in zip(states, values, flags):
            if b:
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
    """Image jobs of one image decoded by speculative Jacobi decoding (arXiv 2410.01699): each
    step verifies the drafts of the last window and feeds a new window.

    The window's outputs give, in order, the exact distribution p of each draft's position as
    long as every draft before it was accepted. A draft x drawn from q is accepted with
    probability min(1, p(x)/q(x)); at the first rejection the token is drawn from
    normalise(max(0, p - q)), so every kept token is distributed exactly as plain sampling would
    draw it. Greedy: a draft is kept iff it is the argmax. Drafts for the next window come from
    the outputs past the rejection.

    With known tokens (masked completion) a known position's draft is the known token and is
    kept without a test; a window reaches over known runs to hold `jacobi` positions to sample.
    """

    @staticmethod
    def takes(job: Job) -> bool:
        return job.kind == "image" and bool(job.jacobi)

    def sample(self, runner: BatchRunner, states: list[JobState]) -> tuple[list[JobState], list[Feed]]:
        finished: list[JobState] = []
        feeds: list[Feed] = []
        for s in states:
            try:
                window = self._next_window(runner.model, s)
            except RuntimeError:
                s.error = NonFiniteLogits()
                window = None
            if window is None:
                finished.append(s)
            else:
                h = runner.model.embed_image_tokens(window)  # [L, D]
                feeds.append((s, s._row_ids(), h[None].expand(2, -1, -1)))
        return finished, feeds

    def fed(self, runner: BatchRunner, state: JobState, rows: Tensor, out: Tensor) -> None:
        state.drafts.window = out

    @staticmethod
    def _next_window(model: Janus, s: JobState) -> Tensor | None:
        """Keep what the last window accepts; the next window (the new exact token, then fresh
        drafts), or None when the image is done."""
        job, d, g = s.job, s.drafts, s.job.generator
        m = d.window.shape[1]
        base = s.done_steps  # the position output 0 predicts
        known = job.known[0] if job.known is not None else None  # [steps], -1 where sampled
        logits = model.image_logits(d.window.reshape(2 * m, -1)).view(2, m, -1)  # [cond/uncond, m, V]
        guided = logits[1] + job.guidance * (logits[0] - logits[1])  # [m, V], as cfg_combine
        s.nonfinite |= non_finite(guided)
        greedy = job.sampling.temperature == 0
        probs = None if greedy else torch.softmax(
            filter_logits(guided / job.sampling.temperature, job.sampling.top_k, job.sampling.top_p), dim=-1)
        best = guided.argmax(-1) if greedy else None
        accepted = 0
        if m > 1:
            drafts = d.tokens  # [m-1], draft k checked against output k
            if greedy:
                ok = best[:m - 1] == drafts
            else:
                k = torch.arange(m - 1, device=drafts.device)
                u = torch.rand(m - 1, generator=g, device=drafts.device)
                ok = accept_drafts(probs[k, drafts], d.proposals[k, drafts], u)
            if known is not None:
                ok = ok | (known[base:base + m - 1] >= 0)  # known tokens are exact
            for flag in ok.tolist():  # the host decides how many tokens are kept
                if not flag:
                    break
                accepted += 1
        kept = [d.tokens[:accepted]] if accepted else []
        at = base + accepted
        if known is not None and at < job.steps and bool(known[at] >= 0):
            new = known[at:at + 1]  # every draft kept and the next position is known
        elif greedy:
            new = best[accepted:accepted + 1]
        elif accepted < m - 1:
            new = torch.multinomial(residual(probs[accepted], d.proposals[accepted]), 1, generator=g)
        else:
            new = torch.multinomial(probs[m - 1], 1, generator=g)
        tokens = torch.cat([*kept, new])[:job.steps - s.done_steps]
        s.tokens[0, s.done_steps:s.done_steps + len(tokens)] = tokens
        s.done_steps += len(tokens)
        if job.next_sample(s.done_steps - 1) >= job.steps:  # done, or only known tokens are left
            if known is not None:
                s.tokens[0, s.done_steps:] = known[s.done_steps:]
            s.done_steps = job.steps
            if bool(s.nonfinite):
                raise RuntimeError("non-finite logits")
            return None
        # Fresh drafts up to the `jacobi`-th position still to sample: from the outputs past the
        # rejected position, then the last output again (known positions: the known token).
        last = s.done_steps - 1
        for _ in range(job.jacobi):
            if job.next_sample(last) >= job.steps:
                break
            last = job.next_sample(last)
        n_drafts = last - s.done_steps + 1
        src = torch.clamp(torch.arange(accepted + 1, accepted + 1 + n_drafts), max=m - 1).to(guided.device)
        if greedy:
            d.tokens = best[src]
        else:
            d.proposals = probs[src]  # [n_drafts, V]
            d.tokens = torch.multinomial(d.proposals, 1, generator=g).squeeze(-1)
        if known is not None:
            ahead = known[s.done_steps:s.done_steps + n_drafts]
            d.tokens = torch.where(ahead >= 0, ahead, d.tokens)
        return torch.cat([new, d.tokens])


class BatchRunner:
    """Decodes many jobs together on one KV cache of at most `rows` rows.

    `add_all` prefills jobs on the rows the scheduler chose (they join at the next `step`);
    `step` samples the next token(s) of every job and feeds them back; finished and removed
    jobs free their rows at once. The cache grows in length buckets (and in row counts of
    powers of two) and is reused; attention reads only the slots in use, rounded up to a
    bucket, so a compiled step compiles once per (rows, bucket), never per prompt length.
    """

    def __init__(self, model: Janus, rows: int = 16, length_bucket: int = 128,
                 compile: bool = False, compile_backend: str | Callable = "inductor") -> None:
        if rows < 2:
            raise ValueError(f"rows must be >= 2 (an image takes two rows), got {rows}")
        self.model = model
        self.rows = rows
        self.length_bucket = length_bucket
        self.compile = compile
        self.states: list[JobState] = []
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
        """Prefill jobs on the rows given (job, first row), which must be free. Jobs whose prompts
        (with the known image tokens before their first sampled one) have the same length share
        one forward pass. Returns the states of the jobs that joined, and the jobs whose own
        inputs failed (e.g. an image), with the error."""
        device = self.device
        ready: list[tuple[JobState, Tensor]] = []
        failed: list[tuple[Job, BaseException]] = []
        for job, start in placed:
            if start < 0 or start + job.n_rows > self.rows or any(
                    start < s.rows.stop and s.rows.start < start + job.n_rows for s in self.states):
                raise ValueError(f"rows {start}..{start + job.n_rows - 1} are not free")
            try:
                ids = torch.tensor(job.prompt_ids, dtype=torch.long, device=device)  # [R, T]
                h = self.model.embed_text(ids)
                if job.kind == "text" and job.pixel_values is not None and job.pixel_values.shape[0]:
                    feats = self._und_features(job.pixel_values)  # [N, P, D]
                    h = self.model.splice_und_features(h, job.image_mask.to(device)[None], feats)
                if job.prefix:  # known image tokens before the first to sample, in both CFG rows
                    known = self.model.embed_image_tokens(job.known[:, :job.prefix].to(device))  # [n, P, D]
                    h = torch.cat([h, known.repeat_interleave(2, dim=0)], dim=1)
            except Exception as e:  # this job's own input: it alone fails
                failed.append((job, e))
                continue
            self._ensure_cache(start + job.n_rows, job.length)
            state = JobState(job, start)
            self.states.append(state)  # holds its rows from now on
            ready.append((state, h))
        by_length: dict[int, list[tuple[JobState, Tensor]]] = {}
        for state, h in ready:
            by_length.setdefault(h.shape[1], []).append((state, h))
        try:
            for group in by_length.values():
                self._prefill([s for s, _ in group], torch.cat([h for _, h in group]))
        except Exception:
            for state, _ in ready:
                self.remove(state)
            raise
        return [s for s, _ in ready], failed

    def _prefill(self, states: list[JobState], h: Tensor) -> None:
        """One forward pass over the prompts of `states` (all T long), h [R, T, D]."""
        device = self.device
        R, T = h.shape[:2]
        slots = torch.arange(T, device=device)
        positions = slots.expand(R, T)
        mask = cache_mask(slots, torch.ones(R, T, dtype=torch.bool, device=device))
        if len(states) == 1:  # write straight into the job's rows
            cache = self.cache.rows(states[0].start_row, states[0].start_row + R)
        else:  # a scratch cache, copied into each job's rows below
            llm = self.model.llm.cfg
            cache = KVCache.allocate(llm.n_layers, R, T, llm.n_kv_heads, llm.head_dim, device=device, dtype=h.dtype)
        # The prompt fills slots 0..T-1 of its own rows: attend over those only.
        out = self.model.llm(h, positions, mask=mask, cache=cache, slots=slots, kv_len=T)[:, -1]
        offset = 0
        for s in states:
            job = s.job
            rows, mine = s.rows, slice(offset, offset + job.n_rows)
            offset += job.n_rows
            if len(states) > 1:
                self.cache.copy_(cache, rows, mine)
            self.hidden[rows] = out[mine]
            if job.jacobi:
                s.drafts = _Drafts(window=out[mine][:, None])  # [2, 1, D]: the exact distribution of the first token
            if job.kind == "image":
                s.tokens = torch.empty(job.images, job.steps, dtype=torch.long, device=device)
                if job.prefix:
                    s.tokens[:, :job.prefix] = job.known[:, :job.prefix]
                    s.done_steps = job.prefix
            s.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
            s.forward_passes += 1

    def _und_features(self, pixels: Tensor) -> Tensor:
        """Understanding features [N, P, D] of preprocessed images [N, 3, S, S], each image
        encoded on its own (so its features never depend on what it was batched with) and
        remembered by content: a conversation re-sends its images every turn, and benchmarks
        ask many questions about one image."""
        out = []
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
        return torch.stack(out)

    def remove(self, state: JobState) -> None:
        """Take a job out of the batch (finished or cancelled); its rows are free at once."""
        if state in self.states:
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
            self.remove(s)
        # One forward pass per window length: plain jobs and answers feed one token per row.
        for length in sorted({h.shape[1] for _, _, h in feeds}):
            group = [(s, r, h) for s, r, h in feeds if h.shape[1] == length]
            rows = _upload(torch.cat([r for _, r, _ in group]), self.device)
            out = self._forward(rows, torch.cat([h for _, _, h in group]), [s for s, _, _ in group])
            for (s, r, _), os in zip(group, out.split([len(r) for _, r, _ in group])):
                s.forward_passes += 1
                self._decoder(s.job).fed(self, s, r, os)
        return finished

    def _forward(self, rows: Tensor, h: Tensor, states: list[JobState]) -> Tensor:
        """Feed `h` [N, T, D] to `rows` [N] (of `states`, at their next slots) in one pass over the
        cache rows [0, hi): rows not fed write only the scratch slot at the end of the cache and
        their output is dropped, so the batch stays a plain slice of the cache. -> [N, T, D]."""
        hi = max(s.rows.stop for s in self.states)
        if self.compile:
            hi = min(self.cache.batch, _pow2_at_least(hi))  # a few row buckets, not every count
        T = h.shape[1]
        scratch = self.cache.max_len - 1
        slots = torch.full((hi, T), scratch, dtype=torch.long)
        top = 0
        for s in states:
            slots[s.rows] = torch.arange(s.next_slot, s.next_slot + T)
            top = max(top, s.next_slot + T)
        kv_len = min(self.cache.max_len, round_up(top, self.length_bucket))
        x = torch.zeros(hi, T, h.shape[-1], device=h.device, dtype=h.dtype)
        x[rows] = h
        return self._step_fn(x, _upload(slots, h.device), kv_len)[rows]


def image_job(prompt_ids: Sequence[int], pad_id: int, n: int, guidance: float, sampling: SamplingParams,
              generator: torch.Generator | None, num_tokens: int, jacobi: int = 0) -> Job:
    """The job of `n` images of one prompt: (conditional, unconditional) rows per image."""
    rows = [list(prompt_ids), unconditional_prompt(prompt_ids, pad_id)] * n
    return Job("image", rows, num_tokens, sampling, generator, guidance=guidance, jacobi=jacobi)
