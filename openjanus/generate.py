"""The inference engine: sampling, classifier-free guidance, text streaming, image-token sampling.

It works on token ids and embeddings only; tokenizers, templates and image preprocessing
live in `openjanus.processing`. Sampling functions are pure and take a seeded
`torch.Generator`, so a seed reproduces the same output on the same device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from openjanus.model.janus import Janus
from openjanus.model.llm import KVCache, cache_mask


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax); top_k 0/None and top_p 1/None disable those filters."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


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


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> Tensor:
    """[B, V] logits -> [B] token ids. Greedy at temperature 0, otherwise one multinomial call."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def cfg_combine(logits: Tensor, weight: float) -> Tensor:
    """Interleaved [2B, V] rows (cond, uncond, cond, ...) -> guided [B, V] = u + w (c - u)."""
    cond, uncond = logits[0::2], logits[1::2]
    return uncond + weight * (cond - uncond)


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Right-align rows into [B, T] ids with a bool mask of real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, T - len(r):] = True
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: Tensor) -> Tensor:
    """RoPE positions counting real tokens only: [B, T] bool -> [B, T] long (pads get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class _Decoder:
    """Prefill once, then one fixed-shape step per token on a static KV cache."""

    def __init__(self, model: Janus, key_valid: Tensor, max_len: int, compile_step: bool) -> None:
        self.model = model
        B, T = key_valid.shape
        self.cache: KVCache = model.llm.new_cache(B, max_len)
        # Slots written later (generated tokens) are real; causality hides them until written.
        self.key_valid = torch.ones(B, max_len, dtype=torch.bool, device=key_valid.device)
        self.key_valid[:, :T] = key_valid
        self.prompt_len = T
        self.step_fn: Callable[[Tensor, Tensor, Tensor], Tensor] = self._step
        if compile_step:
            self.step_fn = torch.compile(self._step, dynamic=False)

    def prefill(self, h: Tensor, positions: Tensor) -> Tensor:
        T = h.shape[1]
        slots = torch.arange(T, device=h.device)
        # The prompt fills slots 0..T-1: attend over those only, not the whole preallocated cache.
        mask = cache_mask(slots, self.key_valid[:, :T])
        return self.model.llm(h, positions, mask=mask, cache=self.cache, slots=slots, kv_len=T)[:, -1]

    def _step(self, h: Tensor, positions: Tensor, slot: Tensor) -> Tensor:
        mask = cache_mask(slot, self.key_valid)
        return self.model.llm(h, positions, mask=mask, cache=self.cache, slots=slot)[:, -1]

    def step(self, h: Tensor, positions: Tensor, index: int) -> Tensor:
        """Feed one token per row ([B, 1, D]) into cache slot prompt_len + index."""
        slot = torch.tensor([self.prompt_len + index], device=h.device)
        return self.step_fn(h, positions, slot)


@torch.inference_mode()
def generate_image_tokens(
    model: Janus,
    prompts: list[list[int]],
    pad_id: int,
    n_per_prompt: int = 1,
    cfg_weight: float = 5.0,
    sampling: SamplingParams = SamplingParams(),
    generator: torch.Generator | None = None,
    compile_step: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Sample image tokens with classifier-free guidance.

    prompts: token ids of each prompt, each ending with `<begin_of_image>` (see
    `JanusProcessor.encode_t2i`). Rows are interleaved (cond, uncond) per image as in the
    official sampler; an unconditional row is its prompt with everything between the first
    token (BOS) and the last (`<begin_of_image>`) replaced by `pad_id`, attended normally.
    Returns [len(prompts) * n_per_prompt, num_gen_tokens] int64 in raster order, grouped
    by prompt.
    """
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
    if any(len(p) < 2 for p in prompts):
        raise ValueError("each prompt needs at least BOS and <begin_of_image>")
    device = model.llm.embed.weight.device
    rows: list[list[int]] = []
    for p in prompts:
        uncond = [p[0]] + [pad_id] * (len(p) - 2) + [p[-1]]
        rows += [p, uncond] * n_per_prompt
    ids, key_valid = left_pad(rows, pad_id, device)  # [2B, T]
    positions = positions_from_mask(key_valid)
    n_tokens = model.cfg.num_gen_tokens
    dec = _Decoder(model, key_valid, ids.shape[1] + n_tokens, compile_step)

    hidden = dec.prefill(model.embed_text(ids), positions)
    next_pos = positions[:, -1:] + 1  # [2B, 1]
    out = torch.empty(len(rows) // 2, n_tokens, dtype=torch.long, device=device)
    for i in range(n_tokens):
        logits = cfg_combine(model.image_logits(hidden), cfg_weight)
        codes = sample(logits, sampling, generator)  # [B]
        out[:, i] = codes
        if on_step is not None:
            on_step(i)
        if i + 1 == n_tokens:
            break
        h = model.embed_image_tokens(codes.repeat_interleave(2))[:, None]  # [2B, 1, D]
        hidden = dec.step(h, next_pos + i, i)
    return out


def generate_text(
    model: Janus,
    input_ids: Tensor,
    attention_mask: Tensor,
    eos_id: int,
    image_mask: Tensor | None = None,
    pixel_values: Tensor | None = None,
    max_new_tokens: int = 512,
    sampling: SamplingParams = SamplingParams(temperature=0.0),
    generator: torch.Generator | None = None,
    compile_step: bool = False,
    min_new_tokens: int = 0,
) -> Iterator[list[int | None]]:
    """Stream an answer for each row of a left-padded batch.

    Yields once per step a list with each row's new token id, or None for rows that have
    already emitted EOS (the EOS itself is yielded). Stops when every row is done or after
    `max_new_tokens`; EOS is suppressed for the first `min_new_tokens` steps.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    attention_mask = attention_mask.bool()
    if image_mask is None:
        image_mask = torch.zeros_like(attention_mask)
    total = input_ids.shape[1] + max_new_tokens
    if total > model.cfg.llm.max_seq_len:
        raise ValueError(f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) "
                         f"exceeds the model's {model.cfg.llm.max_seq_len} positions")
    with torch.inference_mode():
        positions = positions_from_mask(attention_mask)
        dec = _Decoder(model, attention_mask, total, compile_step)
        h = model.embed_chat(input_ids, image_mask, pixel_values)
        hidden = dec.prefill(h, positions)
        next_pos = positions[:, -1:] + 1
        done = [False] * input_ids.shape[0]
        for i in range(max_new_tokens):
            logits = model.text_logits(hidden).float()
            if i < min_new_tokens:
                logits[:, eos_id] = float("-inf")
            tokens = sample(logits, sampling, generator)
            step_out: list[int | None] = []
            for row, t in enumerate(tokens.tolist()):
                step_out.append(None if done[row] else t)
                done[row] = done[row] or t == eos_id
            yield step_out
            if all(done) or i + 1 == max_new_tokens:
                return
            hidden = dec.step(model.embed_text(tokens[:, None]), next_pos + i, i)
