"""Decoding on token ids and embeddings: sampling, classifier-free guidance, and the batch
runner that decodes many jobs together on one static KV cache.

Tokenizers, templates and images live at the edge (`openjanus.processing`); requests,
threads and streaming live in `openjanus.inference.engine`. Sampling functions are pure and take a
seeded `torch.Generator`; every job has its own, so a job's tokens do not depend on which
other jobs share its batch.

Rows are never padded: each job's rows start at cache slot 0 and have their own length, so a
job can join the running batch at any step (its prompt is prefilled on its own rows, then
its rows take part in the shared decode step) and leave as soon as it is done.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from openjanus.errors import UserError
from openjanus.inference.sampling import accept_drafts, cfg_combine, filter_logits, non_finite, residual, sample
from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask
from openjanus.processing import unconditional_prompt
from openjanus.requests import ImageRequest, SamplingParams

__all__ = ["Job", "BatchRunner", "NonFiniteLogits", "image_job", "generate_image_tokens", "generate_text",
           "round_up"]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _upload(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor (row indices, slots) on `device` without waiting for the device:
    from pinned memory, asynchronously (a plain copy from pageable memory would sync)."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _free_start(taken: list[tuple[int, int]], n_rows: int, max_rows: int) -> int | None:
    start = 0
    for a, b in sorted(taken):
        if a - start >= n_rows:
            break
        start = max(start, b)
    return start if start + n_rows <= max_rows else None


def _first_fit(taken: list[tuple[int, int]], sizes: list[int], max_rows: int) -> bool:
    """Whether row ranges of `sizes`, placed one after another lowest-first, all fit."""
    for n in sizes:
        start = _free_start(taken, n, max_rows)
        if start is None:
            return False
        taken.append((start, start + n))
    return True


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class NonFiniteLogits(UserError):
    """The model produced NaN or infinite logits (broken weights, or an overflow in fp16)."""

    def __init__(self) -> None:
        super().__init__("the model produced non-finite logits (NaN or inf): the weights are broken or "
                         "the dtype overflows; load with --check-finite, or try --dtype float32")


@dataclass(eq=False)
class Job:
    """Rows of equal length decoded together: an image job has 2 rows per image (conditional,
    unconditional, interleaved), a text job one row. Jobs are what the runner schedules."""

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

    # Filled by the runner.
    start_row: int = -1
    done_steps: int = 0
    forward_passes: int = 0
    finished: bool = False
    error: BaseException | None = None
    tokens: Tensor | None = None  # image: [n, steps] long on the model's device
    token_ids: list[int] = field(default_factory=list)  # text: sampled ids (EOS included)
    _nonfinite: Tensor | None = None
    # Speculative Jacobi state: hidden states of the last window [2, m, D], its draft tokens [m-1]
    # and the distributions they were drawn from [m-1, V] (None when greedy).
    _window: Tensor | None = None
    _drafts: Tensor | None = None
    _proposals: Tensor | None = None

    def __post_init__(self) -> None:
        lengths = {len(r) for r in self.prompt_ids}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError("a job's rows must be non-empty and of equal length")
        if self.kind == "image" and len(self.prompt_ids) % 2:
            raise ValueError("an image job has a conditional and an unconditional row per image")
        if self.jacobi and (self.kind != "image" or self.n_rows != 2):
            raise ValueError("speculative Jacobi decoding runs one image per job")

    @property
    def n_rows(self) -> int:
        return len(self.prompt_ids)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids[0])

    @property
    def length(self) -> int:
        """Cache slots this job needs at most."""
        return self.prompt_len + self.steps

    @property
    def rows(self) -> slice:
        return slice(self.start_row, self.start_row + self.n_rows)

    @property
    def next_slot(self) -> int:
        """Cache slot (= RoPE position) of the (first) token fed at the next decode step."""
        return self.prompt_len + self.done_steps - 1


class BatchRunner:
    """Decodes many jobs together on one KV cache of `max_rows` rows.

    `add` prefills a job on free rows at once (it joins at the next `step`); `step` samples one
    token for every job and feeds them back in one forward pass over the rows in use; finished
    and removed jobs free their rows at once. The cache grows in length buckets (and in row
    counts of powers of two) and is reused; attention reads only the slots in use, rounded up
    to a bucket, so a compiled step compiles once per (rows, bucket), never per prompt length.
    """

    def __init__(self, model: Janus, max_rows: int = 16, length_bucket: int = 128,
                 compile_step: bool = False, compile_backend: str | Callable = "inductor") -> None:
        if max_rows < 2:
            raise ValueError(f"max_rows must be >= 2 (an image takes two rows), got {max_rows}")
        self.model = model
        self.max_rows = max_rows
        self.length_bucket = length_bucket
        self.compile_step = compile_step
        self.jobs: list[Job] = []
        self.feature_cache = 64  # images whose understanding features are kept
        self._features: OrderedDict[bytes, Tensor] = OrderedDict()
        self.cache: KVCache | None = None
        self.hidden: Tensor | None = None  # [rows, D] last hidden state of every row
        self._step_fn: Callable[[Tensor, Tensor, int], Tensor] = self._decode
        if compile_step:
            # On a GPU the step is also captured as a CUDA graph per (rows, length bucket): one
            # launch per step instead of hundreds of small kernels. The cache tensors it writes
            # are static addresses (`_ensure_cache`), so a replay writes them in place.
            cuda = self.device.type == "cuda" and compile_backend == "inductor"
            self._step_fn = torch.compile(self._decode, dynamic=False, backend=compile_backend,
                                          mode="reduce-overhead" if cuda else None)

    @property
    def device(self) -> torch.device:
        return self.model.llm.embed.weight.device

    # --- admission --------------------------------------------------------------------------

    def _free_start(self, n_rows: int) -> int | None:
        """First row of a free contiguous range of n_rows rows, lowest first."""
        return _free_start([(j.start_row, j.start_row + j.n_rows) for j in self.jobs], n_rows, self.max_rows)

    def fits(self, job: Job) -> bool:
        return self._fits_with([], job)

    def _fits_with(self, pending: Sequence[Job], job: Job) -> bool:
        """Whether `job` finds free rows once the `pending` jobs (not yet added) have theirs."""
        free = self.max_rows - sum(j.n_rows for j in self.jobs) - sum(j.n_rows for j in pending)
        if job.n_rows > free:
            return False
        if not pending:
            return self._free_start(job.n_rows) is not None
        taken = [(j.start_row, j.start_row + j.n_rows) for j in self.jobs]
        return _first_fit([*taken], [j.n_rows for j in pending] + [job.n_rows], self.max_rows)

    def _ensure_cache(self, rows: int, length: int) -> None:
        llm = self.model.llm
        if length > llm.cfg.max_seq_len:
            raise UserError(f"the job needs {length} positions but the model has {llm.cfg.max_seq_len}")
        rows = min(self.max_rows, _pow2_at_least(rows))
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
        if self.compile_step:
            for t in [*new.k, *new.v]:
                torch._dynamo.mark_static_address(t)
        self.cache, self.hidden = new, hidden

    def add(self, job: Job) -> None:
        """Prefill `job` on free rows; it takes part in the next `step`."""
        failed = self.add_all([job])
        if failed:
            raise failed[0][1]

    @torch.inference_mode()
    def add_all(self, jobs: Sequence[Job]) -> list[tuple[Job, BaseException]]:
        """Prefill `jobs` (which must fit together) on free rows. Jobs whose prompts have the
        same length share one forward pass, as a left-padded batch without padding would.
        Returns the jobs whose own inputs failed (e.g. an image), with the error; the others
        take part in the next `step`."""
        device = self.device
        ready: list[tuple[Job, Tensor]] = []
        failed: list[tuple[Job, BaseException]] = []
        for job in jobs:
            try:
                ids = torch.tensor(job.prompt_ids, dtype=torch.long, device=device)  # [R, T]
                h = self.model.embed_text(ids)
                if job.kind == "text" and job.pixel_values is not None and job.pixel_values.shape[0]:
                    feats = self._und_features(job.pixel_values)  # [N, P, D]
                    h = self.model.splice_und_features(h, job.image_mask.to(device)[None], feats)
            except Exception as e:  # this job's own input: it alone fails
                failed.append((job, e))
                continue
            start = self._free_start(job.n_rows)
            if start is None:
                raise RuntimeError("no free rows for the job; check fits() first")
            self._ensure_cache(start + job.n_rows, job.length)
            job.start_row = start
            self.jobs.append(job)  # holds its rows from now on
            ready.append((job, h))
        by_length: dict[int, list[tuple[Job, Tensor]]] = {}
        for job, h in ready:
            by_length.setdefault(job.prompt_len, []).append((job, h))
        try:
            for group in by_length.values():
                self._prefill([j for j, _ in group], torch.cat([h for _, h in group]))
        except Exception:
            for job, _ in ready:
                self.remove(job)
            raise
        return failed

    def _prefill(self, jobs: list[Job], h: Tensor) -> None:
        """One forward pass over the prompts of `jobs` (all T long), h [R, T, D]."""
        device = self.device
        R, T = h.shape[:2]
        slots = torch.arange(T, device=device)
        positions = slots.expand(R, T)
        mask = cache_mask(slots, torch.ones(R, T, dtype=torch.bool, device=device))
        if len(jobs) == 1:  # write straight into the job's rows
            cache = self.cache.rows(jobs[0].start_row, jobs[0].start_row + R)
        else:  # a scratch cache, copied into each job's rows below
            llm = self.model.llm.cfg
            cache = KVCache.allocate(llm.n_layers, R, T, llm.n_kv_heads, llm.head_dim, device=device, dtype=h.dtype)
        # The prompt fills slots 0..T-1 of its own rows: attend over those only.
        out = self.model.llm(h, positions, mask=mask, cache=cache, slots=slots, kv_len=T)[:, -1]
        offset = 0
        for job in jobs:
            rows, mine = job.rows, slice(offset, offset + job.n_rows)
            offset += job.n_rows
            if len(jobs) > 1:
                self.cache.copy_(cache, rows, mine)
            self.hidden[rows] = out[mine]
            if job.jacobi:
                job._window = out[mine][:, None]  # [2, 1, D]: the exact distribution of the first token
            if job.kind == "image":
                job.tokens = torch.empty(job.n_rows // 2, job.steps, dtype=torch.long, device=device)
            job._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
            job.forward_passes += 1

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

    def remove(self, job: Job) -> None:
        """Take `job` out of the batch (finished or cancelled); its rows are free at once."""
        if job in self.jobs:
            self.jobs.remove(job)

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, x: Tensor, slots: Tensor, kv_len: int) -> Tensor:
        """Tokens [R, T, D] at per-row cache `slots` [R, T] -> hidden [R, T, D]."""
        key_idx = torch.arange(kv_len, device=x.device)
        # Rows are unpadded: a query's keys are exactly its row's slots up to its own.
        mask = (key_idx[None, None, :] <= slots[:, :, None])[:, None]  # [R, 1, T, kv_len]
        # The whole cache: the step writes its first R rows by index (no view of it to mutate).
        return self.model.llm(x, slots, mask=mask, cache=self.cache, slots=slots, kv_len=kv_len)

    @torch.inference_mode()
    def step(self) -> list[Job]:
        """Sample the next token(s) of every job and feed the continuing ones back; returns the
        jobs that finished (done or failed) in this step, already removed from the batch."""
        model, device = self.model, self.device
        finished: list[Job] = []
        feeds: list[tuple[Job, Tensor, Tensor]] = []  # (job, rows, embeddings [rows, T, D])
        hidden = self.hidden
        image_jobs = [j for j in self.jobs if j.kind == "image" and not j.jacobi]
        text_jobs = [j for j in self.jobs if j.kind == "text"]
        if image_jobs:
            rows = _upload(torch.cat([torch.arange(j.rows.start, j.rows.stop) for j in image_jobs]), device)
            logits = model.image_logits(hidden[rows])  # [R, codebook]: one read of the head for all jobs
            continuing: list[tuple[Job, Tensor]] = []
            for j, lg in zip(image_jobs, logits.split([j.n_rows for j in image_jobs])):
                guided = cfg_combine(lg, j.guidance)
                j._nonfinite |= non_finite(guided)
                try:
                    codes = sample(guided, j.sampling, j.generator)  # [n]
                except RuntimeError:  # multinomial refuses NaN/inf probabilities
                    j.error = NonFiniteLogits()
                    finished.append(j)
                    continue
                j.tokens[:, j.done_steps] = codes
                j.done_steps += 1
                if j.done_steps == j.steps:
                    if bool(j._nonfinite):
                        j.error = NonFiniteLogits()
                    finished.append(j)
                else:
                    continuing.append((j, codes.repeat_interleave(2)))
            if continuing:
                h = model.embed_image_tokens(torch.cat([c for _, c in continuing]))[:, None]  # [R, 1, D]
                for (j, _), hj in zip(continuing, h.split([j.n_rows for j, _ in continuing])):
                    feeds.append((j, torch.arange(j.rows.start, j.rows.stop), hj))
        if text_jobs:
            rows = torch.tensor([j.start_row for j in text_jobs], device=device)
            logits = model.text_logits(hidden[rows]).float()  # [J, vocab]
            picked: list[Tensor] = []
            bad = non_finite(logits, dim=-1)
            for j, lg in zip(text_jobs, logits.split(1)):
                try:
                    picked.append(sample(lg, j.sampling, j.generator))
                except RuntimeError:
                    picked.append(torch.zeros(1, dtype=torch.long, device=device))
            tokens = torch.cat(picked)
            # The one host sync of a text step: the tokens decide who stops.
            values, flags = torch.stack([tokens, bad.long()]).tolist()
            going: list[tuple[Job, int]] = []
            for j, t, b in zip(text_jobs, values, flags):
                if b:
                    j.error = NonFiniteLogits()
                    finished.append(j)
                    continue
                j.token_ids.append(t)
                j.done_steps += 1
                if j.done_steps == j.steps or t == j.eos_id:
                    finished.append(j)
                else:
                    going.append((j, t))
            if going:
                h = model.embed_text(torch.tensor([t for _, t in going], device=device))[:, None, None]
                feeds += [(j, torch.tensor([j.start_row]), hj) for (j, _), hj in zip(going, h)]
        for j in [j for j in self.jobs if j.jacobi]:
            try:
                window = self._jacobi_tokens(j)
            except RuntimeError:
                j.error = NonFiniteLogits()
                window = None
            if window is None:
                finished.append(j)
            else:
                h = model.embed_image_tokens(window)  # [L, D]
                feeds.append((j, torch.arange(j.rows.start, j.rows.stop), h[None].expand(2, -1, -1)))
        for j in finished:
            j.finished = True
            self.remove(j)
        # One forward pass per window length: plain jobs and answers feed one token per row.
        for length in sorted({h.shape[1] for _, _, h in feeds}):
            group = [(j, r, h) for j, r, h in feeds if h.shape[1] == length]
            rows = _upload(torch.cat([r for _, r, _ in group]), device)
            out = self._forward(rows, torch.cat([h for _, _, h in group]),
                                [j for j, _, _ in group])
            for (j, r, _), oj in zip(group, out.split([len(r) for _, r, _ in group])):
                j.forward_passes += 1
                if j.jacobi:
                    j._window = oj
                else:
                    self.hidden[_upload(r, device)] = oj[:, -1]
        return finished

    def _forward(self, rows: Tensor, h: Tensor, jobs: list[Job]) -> Tensor:
        """Feed `h` [N, T, D] to `rows` [N] (of `jobs`, at their next slots) in one pass over the
        cache rows [0, hi): rows not fed write only the scratch slot at the end of the cache and
        their output is dropped, so the batch stays a plain slice of the cache. -> [N, T, D]."""
        hi = max(j.rows.stop for j in self.jobs)
        if self.compile_step:
            hi = min(self.cache.batch, _pow2_at_least(hi))  # a few row buckets, not every count
        T = h.shape[1]
        scratch = self.cache.max_len - 1
        slots = torch.full((hi, T), scratch, dtype=torch.long)
        top = 0
        for j in jobs:
            slots[j.rows] = torch.arange(j.next_slot, j.next_slot + T)
            top = max(top, j.next_slot + T)
        kv_len = min(self.cache.max_len, round_up(top, self.length_bucket))
        x = torch.zeros(hi, T, h.shape[-1], device=h.device, dtype=h.dtype)
        x[rows] = h
        return self._step_fn(x, _upload(slots, h.device), kv_len)[rows]

    def _jacobi_tokens(self, j: Job) -> Tensor | None:
        """Verify the drafts of `j`'s last window, keep what is accepted, and return the next
        window to feed (the new exact token, then fresh drafts), or None when the image is done.

        Speculative Jacobi decoding (arXiv 2410.01699): the window's outputs give, in order, the
        exact distribution p of each draft's position as long as every draft before it was
        accepted. A draft x drawn from q is accepted with probability min(1, p(x)/q(x)); at the
        first rejection the token is drawn from normalise(max(0, p - q)), so every kept token is
        distributed exactly as plain sampling would draw it. Greedy: a draft is kept iff it is
        the argmax. Drafts for the next window come from the outputs past the rejection.
        """
        model, g = self.model, j.generator
        m = j._window.shape[1]
        logits = model.image_logits(j._window.reshape(2 * m, -1)).view(2, m, -1)  # [cond/uncond, m, V]
        guided = logits[1] + j.guidance * (logits[0] - logits[1])  # [m, V], as cfg_combine
        j._nonfinite |= non_finite(guided)
        greedy = j.sampling.temperature == 0
        probs = None if greedy else torch.softmax(
            filter_logits(guided / j.sampling.temperature, j.sampling.top_k, j.sampling.top_p), dim=-1)
        best = guided.argmax(-1) if greedy else None
        accepted = 0
        if m > 1:
            d = j._drafts  # [m-1], draft k checked against output k
            if greedy:
                ok = best[:m - 1] == d
            else:
                k = torch.arange(m - 1, device=d.device)
                u = torch.rand(m - 1, generator=g, device=d.device)
                ok = accept_drafts(probs[k, d], j._proposals[k, d], u)
            for flag in ok.tolist():  # the host decides how many tokens are kept
                if not flag:
                    break
                accepted += 1
        kept = [j._drafts[:accepted]] if accepted else []
        if greedy:
            new = best[accepted:accepted + 1]
        elif accepted < m - 1:
            new = torch.multinomial(residual(probs[accepted], j._proposals[accepted]), 1, generator=g)
        else:
            new = torch.multinomial(probs[m - 1], 1, generator=g)
        tokens = torch.cat([*kept, new])[:j.steps - j.done_steps]
        j.tokens[0, j.done_steps:j.done_steps + len(tokens)] = tokens
        j.done_steps += len(tokens)
        if j.done_steps == j.steps:
            if bool(j._nonfinite):
                raise RuntimeError("non-finite logits")
            return None
        # Fresh drafts: from the outputs past the rejected position, then the last output again.
        n_drafts = min(j.jacobi, j.steps - j.done_steps)
        src = torch.clamp(torch.arange(accepted + 1, accepted + 1 + n_drafts), max=m - 1).to(guided.device)
        if greedy:
            j._drafts = best[src]
        else:
            j._proposals = probs[src]  # [n_drafts, V]
            j._drafts = torch.multinomial(j._proposals, 1, generator=g).squeeze(-1)
        return torch.cat([new, j._drafts])

    def run(self, jobs: Sequence[Job], on_step: Callable[[], None] | None = None) -> None:
        """Run `jobs` to the end, admitting them in order as rows free up (no threads)."""
        queue = list(jobs)
        while queue or self.jobs:
            admitted = []
            while queue and self._fits_with(admitted, queue[0]):
                admitted.append(queue.pop(0))
            for _, error in self.add_all(admitted):
                raise error
            if not self.jobs:
                raise UserError(f"a job of {queue[0].n_rows} rows cannot fit in {self.max_rows} rows")
            for j in self.step():
                if j.error is not None:
                    raise j.error
            if on_step is not None:
                on_step()


# --- single-batch helpers on the same runner (tests, benchmarks) ------------------------------


def image_job(prompt_ids: Sequence[int], pad_id: int, n: int, guidance: float, sampling: SamplingParams,
              generator: torch.Generator | None, num_tokens: int, jacobi: int = 0) -> Job:
    """The job of `n` images of one prompt: (conditional, unconditional) rows per image."""
    rows = [list(prompt_ids), unconditional_prompt(prompt_ids, pad_id)] * n
    return Job("image", rows, num_tokens, sampling, generator, guidance=guidance, jacobi=jacobi)


def generate_image_tokens(
    model: Janus,
    prompt_ids: Sequence[int],
    pad_id: int,
    n: int = 1,
    guidance: float = ImageRequest.guidance,
    sampling: SamplingParams = SamplingParams(),
    generator: torch.Generator | None = None,
    compile_step: bool = False,
    jacobi: int = 0,
) -> Tensor:
    """Sample `n` images' tokens for one prompt (ids ending with `<begin_of_image>`) with
    classifier-free guidance: [n, num_gen_tokens] int64 in raster order. With `jacobi`, each
    image is its own job (they all draw from `generator`, in turn)."""
    if jacobi:
        jobs = [image_job(prompt_ids, pad_id, 1, guidance, sampling, generator, model.cfg.num_gen_tokens, jacobi)
                for _ in range(n)]
    else:
        jobs = [image_job(prompt_ids, pad_id, n, guidance, sampling, generator, model.cfg.num_gen_tokens)]
    BatchRunner(model, max_rows=2 * n, compile_step=compile_step).run(jobs)
    return torch.cat([j.tokens for j in jobs])


def generate_text(
    model: Janus,
    prompts: Sequence[Sequence[int]],
    eos_id: int | None,
    max_new_tokens: int = 512,
    sampling: SamplingParams = SamplingParams(temperature=0.0),
    generator: torch.Generator | None = None,
    image_masks: Sequence[Tensor | None] | None = None,
    pixel_values: Sequence[Tensor | None] | None = None,
) -> Iterator[list[int | None]]:
    """Decode each prompt (one row each, decoded together); yields once per step each row's
    new token id, or None for rows already done (EOS is yielded, then None)."""
    jobs = [Job("text", [list(p)], max_new_tokens, sampling, generator, eos_id=eos_id,
                image_mask=image_masks[i] if image_masks else None,
                pixel_values=pixel_values[i] if pixel_values else None) for i, p in enumerate(prompts)]
    runner = BatchRunner(model, max_rows=max(2, len(jobs)))
    for j in jobs:
        runner.add(j)
    while runner.jobs:
        before = [len(j.token_ids) for j in jobs]
        for j in runner.step():
            if j.error is not None:
                raise j.error
        yield [j.token_ids[-1] if len(j.token_ids) > b else None for j, b in zip(jobs, before)]
