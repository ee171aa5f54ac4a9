"""Rewards for post-training and best-of-N: one number per (prompt, image) or (question, answer).

* :class:`ShapesReward` -- verifiable: the shapes-world scorer (objects, colours, counts,
  positions) checks the image against the prompt's GenEval spec. 1 when the spec is met, else
  half the share of its checks that pass (a denser signal than 0/1 within a group).
* :class:`SelfReward` -- the model's own understanding path: P("Yes") / (P("Yes") + P("No"))
  for "Does this image show: <prompt>? Answer yes or no." (no other model; works with any Janus
  checkpoint, the real Janus-Pro weights included).
* :func:`exact_answer_reward` -- understanding questions with exact answers (yes/no, counts).

A reward may be NaN (a scorer that cannot decide, a non-finite score): the GRPO loop skips that
sample and counts it, it never stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from PIL import Image

from openjanus.model.janus import Janus
from openjanus.processing import JanusProcessor
from openjanus.requests import Message
from openjanus.shapes.scorer import check_spec, detect
from openjanus.shapes.spec import Spec
from openjanus.shapes.text import normalize_answer
from openjanus.train.preference import _attention


class Reward(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image],
                 specs: Sequence[Spec | None]) -> list[float]: ...


def spec_reward(image: Image.Image, spec: Spec) -> float:
    """1.0 when the image meets the spec; else 0.5 x the share of the spec's checks (one per
    include, one per exclude) that pass."""
    check = check_spec(detect(image), spec)
    if check.correct:
        return 1.0
    n_checks = len(spec.include) + len(spec.exclude)
    return 0.5 * max(0.0, 1.0 - len(check.reasons) / n_checks)


class ShapesReward:
    """The shapes-world scorer as a reward; every prompt needs its GenEval spec."""

    name = "shapes"

    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image],
                 specs: Sequence[Spec | None]) -> list[float]:
        out = []
        for spec, im in zip(specs, images):
            out.append(float("nan") if spec is None else spec_reward(im, spec))
        return out


SELF_QUESTION = "Does this image show: {prompt}? Answer yes or no."


def _first_ids(processor: JanusProcessor, words: Sequence[str]) -> list[int]:
    ids = set()
    for w in words:
        enc = processor.tokenizer.encode(w, bos=False)
        if enc:
            ids.add(enc[0])
    return sorted(ids)


class SelfReward:
    """P(yes) / (P(yes) + P(no)) of the model's next token after the question about its image,
    summing the probabilities of the spellings "Yes"/"yes" (and "No"/"no")."""

    name = "self"

    def __init__(self, model: Janus, processor: JanusProcessor, question: str = SELF_QUESTION,
                 batch_size: int = 32) -> None:
        self.model, self.processor, self.question, self.batch_size = model, processor, question, batch_size
        self.yes = _first_ids(processor, ["Yes", "yes"])
        self.no = _first_ids(processor, ["No", "no"])
        if not self.yes or not self.no or set(self.yes) & set(self.no):
            raise ValueError("the tokenizer cannot tell 'yes' from 'no' by their first token")

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], images: Sequence[Image.Image],
                 specs: Sequence[Spec | None] = ()) -> list[float]:
        out: list[float] = []
        for s in range(0, len(prompts), self.batch_size):
            out += self._batch(prompts[s:s + self.batch_size], images[s:s + self.batch_size])
        return out

    def _batch(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> list[float]:
        model, proc = self.model, self.processor
        samples = [proc.encode_chat([Message("user", [im, self.question.format(prompt=p)])])
                   for p, im in zip(prompts, images)]
        device, dtype = model.llm.embed.weight.device, model.llm.embed.weight.dtype
        width = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), width), proc.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.bool)
        image_mask = torch.zeros((len(samples), width), dtype=torch.bool)
        for i, s in enumerate(samples):  # left padding: every row's last position is its own last token
            n = len(s.input_ids)
            ids[i, width - n:] = torch.tensor(s.input_ids)
            mask[i, width - n:] = True
            image_mask[i, width - n:] = torch.tensor(s.image_mask, dtype=torch.bool)
        pixels = torch.cat([s.pixel_values for s in samples if s.num_images])
        ids, mask = ids.to(device), mask.to(device)
        h = model.embed_chat(ids, image_mask.to(device), pixels.to(device, dtype))
        positions, attn = _attention(mask, ids.shape[1])
        hidden = model.llm(h, positions, mask=attn)
        logp = torch.log_softmax(model.text_logits(hidden[:, -1]).float(), -1)
        yes = torch.logsumexp(logp[:, self.yes], -1)
        no = torch.logsumexp(logp[:, self.no], -1)
        return torch.sigmoid(yes - no).tolist()  # = P(yes) / (P(yes) + P(no))


def exact_answer_reward(answers: Sequence[str], truths: Sequence[str]) -> list[float]:
    """1.0 where the normalised answer equals the normalised truth (yes/no, numbers, words)."""
    return [float(normalize_answer(a) == normalize_answer(t)) for a, t in zip(answers, truths)]


def finite(values: Sequence[float]) -> list[float]:
    """Rewards with anything non-finite (or not a number) turned into NaN: skipped samples."""
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = float("nan")
        out.append(f if math.isfinite(f) else float("nan"))
    return out
