"""One training sample = one token sequence with its targets, built with the inference templates.

Every sample is tokenized exactly as the model will see it at inference time:

* conversations use the "deepseek" chat template (`openjanus.processing.format_conversation`)
  and supervise only the assistant answers, each including the EOS that closes it (that EOS
  is what teaches the model to stop); system and user turns are masked;
* plain text and captions (`text_sample`) are BOS + text + EOS with every text token
  supervised (image placeholders, BOI and EOI are structure, not text, and are not targets);
* text-to-image (`t2i_sample`) is the prompt `JanusProcessor.t2i_prompt` builds for
  generation (ending with BOI), then the VQ codes, then EOI; only the image head is trained:
  code 0 is predicted from the BOI position, code i from code i-1's. The CFG-unconditional
  variant is the very row the sampler feeds at inference: BOS, pad tokens, BOI.

Targets are aligned with the inputs: position t holds the token to predict from t (the token
at t+1), IGNORE where nothing is supervised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from openjanus.processing import (
    JanusProcessor,
    Turn,
    expand_image_placeholders,
    format_conversation,
    unconditional_prompt,
)
from openjanus.train.batch import DATA_KINDS, IGNORE

__all__ = ["Sample", "Origin", "chat_sample", "text_sample", "t2i_sample", "first_sentence"]

Origin = tuple[str, int, int, int, int]  # (source, epoch, shard index, byte offset, line) of a record


@dataclass
class Sample:
    """One sequence, ready to be packed. All 1-D tensors have the sequence's length."""

    task: int  # index into `openjanus.train.batch.DATA_KINDS`
    input_ids: Tensor  # long: text ids; the placeholder id at und_mask; pad at gen_mask
    text_targets: Tensor  # long: next text token to predict, IGNORE where no text loss
    image_targets: Tensor  # long: next VQ code to predict, IGNORE where no image loss
    und_mask: Tensor  # bool: positions filled with understanding-image features
    gen_mask: Tensor  # bool: positions whose input is a VQ code
    gen_codes: Tensor  # long: the code at gen_mask positions, 0 elsewhere
    pixel_values: Tensor  # float32 [n_images, 3, S, S]: the understanding images, in order
    origin: Origin | None = None  # where the record came from, so a stream can re-read it on resume

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_supervised(self) -> int:
        """Positions with a text or an image target."""
        return int((self.text_targets != IGNORE).sum() + (self.image_targets != IGNORE).sum())


def _text_sample_tensors(
    task: str, ids: list[int], supervised: list[bool], und: list[bool], pixel_values: Tensor
) -> Sample:
    # A target at t is the token at t+1 when that token is supervised.
    n = len(ids)
    ids_t = torch.tensor(ids, dtype=torch.long)
    labels = torch.where(torch.tensor(supervised, dtype=torch.bool), ids_t, torch.full_like(ids_t, IGNORE))
    text_targets = torch.full((n,), IGNORE, dtype=torch.long)
    text_targets[:-1] = labels[1:]
    return Sample(
        task=DATA_KINDS.index(task),
        input_ids=ids_t,
        text_targets=text_targets,
        image_targets=torch.full((n,), IGNORE, dtype=torch.long),
        und_mask=torch.tensor(und, dtype=torch.bool),
        gen_mask=torch.zeros(n, dtype=torch.bool),
        gen_codes=torch.zeros(n, dtype=torch.long),
        pixel_values=pixel_values,
    )


def _expand_images(
    processor: JanusProcessor, ids: list[int], supervised: list[bool], n_images: int
) -> tuple[list[int], list[bool], list[bool]]:
    # The inference expansion; the inserted image tokens are never supervised.
    out_ids, und, source = expand_image_placeholders(ids, processor.tokenizer, processor.num_und_tokens, n_images)
    return out_ids, [s >= 0 and supervised[s] for s in source], und


def _empty_pixels(processor: JanusProcessor) -> Tensor:
    s = processor.image_config.image_size
    return torch.zeros(0, 3, s, s)


def chat_sample(
    processor: JanusProcessor,
    messages: Sequence[Turn],
    pixel_values: Tensor | None = None,
    system_prompt: str = "",
    task: str = "und",
) -> Sample:
    """A conversation with loss on the assistant answers only (each with its closing EOS).

    `messages` alternate "user" / "assistant", starting with "user", each with non-empty
    `content`; `<image_placeholder>`s in the contents match `pixel_values` [n, 3, S, S] in
    order. The token ids are exactly `processor.encode_prompt(format_conversation(...))`'s.
    """
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, msg in enumerate(messages):
        want = ("user", "assistant")[i % 2]
        if msg.get("role") != want:
            raise ValueError(f"message {i} has role {msg.get('role')!r}; roles must alternate user, assistant, ...")
        if not msg.get("content", "").strip():
            raise ValueError(f"message {i} ({want}) is empty")
    pixel_values = _empty_pixels(processor) if pixel_values is None else pixel_values
    tok = processor.tokenizer
    eos = tok.specials.eos
    # Rebuild the template string piece by piece to know where each answer lies. An answer's
    # span starts right after "<|Assistant|>:" so that the token carrying the space before the
    # answer is supervised too: at inference the prompt ends with ":" and the model emits it.
    raw = system_prompt + "\n\n" if system_prompt else ""
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        head = f"{processor.roles.resolve(msg['role'])}:"
        sep = eos if i % 2 else "\n\n"
        body = f" {msg['content'].strip()}{sep}"
        if i % 2:
            spans.append((len(raw) + len(head), len(raw) + len(head) + len(body)))
        raw += head + body
    prompt = format_conversation(messages, system_prompt, processor.roles, eos)
    lead = len(raw) - len(raw.lstrip())
    if raw.strip() != prompt:  # the template changed under us: the spans would be wrong
        raise AssertionError("chat_sample's template reconstruction disagrees with format_conversation")
    enc = tok.tokenizer.encode(prompt, add_special_tokens=False)
    supervised = [any(a <= start + lead < b for a, b in spans) for start, _ in enc.offsets]
    ids, sup, und = _expand_images(processor, [tok.bos_id, *enc.ids], [False, *supervised], pixel_values.shape[0])
    return _text_sample_tensors(task, ids, sup, und, pixel_values)


def text_sample(
    processor: JanusProcessor, text: str, pixel_values: Tensor | None = None, task: str = "text"
) -> Sample:
    """Plain text or a caption: BOS + text + EOS, every text token supervised (EOS included).

    `<image_placeholder>`s in `text` match `pixel_values` in order (a caption is
    "<image_placeholder>A red square." with one image); the image tokens are not targets.
    """
    if not text.strip():
        raise ValueError("the text is empty")
    pixel_values = _empty_pixels(processor) if pixel_values is None else pixel_values
    tok = processor.tokenizer
    body = tok.encode(text, bos=False)
    structure = {tok.image_id, tok.boi_id, tok.eoi_id}
    ids = [tok.bos_id, *body, tok.eos_id]
    sup = [False, *[t not in structure for t in body], True]
    ids, sup, und = _expand_images(processor, ids, sup, pixel_values.shape[0])
    return _text_sample_tensors(task, ids, sup, und, pixel_values)


def t2i_sample(
    processor: JanusProcessor, caption: str, codes: Sequence[int] | Tensor, unconditional: bool = False
) -> Sample:
    """Text-to-image: the inference prompt (…<|Assistant|>:<begin_of_image>), the codes, EOI.

    Only image targets: code 0 from the BOI position, code i from code i-1's position; the
    last code and EOI predict nothing. `unconditional` replaces the caption (and the template
    around it) by pad tokens, keeping BOS and BOI, as the sampler's unconditional row does.
    """
    codes_t = torch.as_tensor(codes, dtype=torch.long).flatten()
    n = codes_t.shape[0]
    if n != processor.num_gen_tokens:
        raise ValueError(f"{n} codes given; the model generates {processor.num_gen_tokens} per image")
    if not caption.strip() and not unconditional:
        raise ValueError("the caption is empty")
    tok = processor.tokenizer
    prompt = tok.encode(processor.t2i_prompt(caption))  # BOS ... BOI
    if unconditional:
        prompt = unconditional_prompt(prompt, tok.pad_id)
    p = len(prompt)
    total = p + n + 1
    input_ids = torch.full((total,), tok.pad_id, dtype=torch.long)
    input_ids[:p] = torch.tensor(prompt, dtype=torch.long)
    input_ids[-1] = tok.eoi_id
    gen_mask = torch.zeros(total, dtype=torch.bool)
    gen_mask[p : p + n] = True
    gen_codes = torch.zeros(total, dtype=torch.long)
    gen_codes[p : p + n] = codes_t
    image_targets = torch.full((total,), IGNORE, dtype=torch.long)
    image_targets[p - 1 : p - 1 + n] = codes_t  # BOI predicts code 0, code i-1 predicts code i
    return Sample(
        task=DATA_KINDS.index("gen"),
        input_ids=input_ids,
        text_targets=torch.full((total,), IGNORE, dtype=torch.long),
        image_targets=image_targets,
        und_mask=torch.zeros(total, dtype=torch.bool),
        gen_mask=gen_mask,
        gen_codes=gen_codes,
        pixel_values=_empty_pixels(processor),
    )


# A sentence ends at . ! ? followed by whitespace or the end (so "1.5" and "e.g.x" do not end
# one), or at a full-width 。！？, which CJK text follows without a space.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|[\u3002\uff01\uff1f]")


def first_sentence(text: str) -> str:
    """The first sentence of `text` (up to and including its end mark), or all of it."""
    text = text.strip()
    m = _SENTENCE_END.search(text)
    return text[: m.end()] if m else text
