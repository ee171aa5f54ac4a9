"""Samples from records: the chat template, answer-only masking, captions, text-to-image and CFG."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from data_helpers import CFG
from PIL import Image

from openjanus.inference.runner import image_job
from openjanus.processing import format_conversation, preprocess_und_images, unconditional_prompt
from openjanus.requests import SamplingParams
from openjanus.train.batch import DATA_KINDS, IGNORE
from openjanus.train.data import BadRecord, SampleBuilder
from openjanus.train.sequences import chat_sample, first_sentence, t2i_sample, text_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def _pixels(n: int) -> torch.Tensor:
    return torch.randn(n, 3, CFG.vision.image_size, CFG.vision.image_size)


def _supervised(sample) -> list[int]:
    return sample.text_targets[sample.text_targets != IGNORE].tolist()


def test_chat_ids_are_the_inference_encoding(proc):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": "<image_placeholder>\nhow many circles?"},
                {"role": "assistant", "content": "there are three."}]
    pixels = preprocess_und_images([image], proc.image_config)
    sample = chat_sample(proc, messages, pixels, system_prompt="be brief.")
    prompt = format_conversation(messages, "be brief.", proc.roles, proc.tokenizer.specials.eos)
    ref = proc.encode_prompt(prompt, [image])
    assert sample.input_ids.tolist() == ref.input_ids
    assert sample.und_mask.tolist() == ref.image_mask
    assert torch.equal(sample.pixel_values, ref.pixel_values)
    assert sample.task == DATA_KINDS.index("und") and not sample.gen_mask.any()
    assert (sample.image_targets == IGNORE).all()


def test_answers_only_are_supervised_with_their_eos(proc):
    tok = proc.tokenizer
    messages = [{"role": "user", "content": "<image_placeholder>\nwhat is in this picture?"},
                {"role": "assistant", "content": "a red circle."},
                {"role": "user", "content": "how many triangles are there?"},
                {"role": "assistant", "content": "there are three."}]
    sample = chat_sample(proc, messages, _pixels(1), system_prompt="describe the image in detail.")
    expected = tok.encode(" a red circle.", bos=False) + [tok.eos_id] + tok.encode(" there are three.", bos=False) \
        + [tok.eos_id]
    assert _supervised(sample) == expected
    # Every target lies after an "<|Assistant|>:" and before the EOS closing that answer; the
    # system prompt, the user turns and the image are never targets.
    text = tok.decode(_supervised(sample), skip_special=False)
    assert text == f" a red circle.{tok.specials.eos} there are three.{tok.specials.eos}"
    first_answer = sample.input_ids.tolist().index(tok.encode("<|Assistant|>", bos=False)[0])
    assert (sample.text_targets[:first_answer] == IGNORE).all()
    assert (sample.text_targets[sample.und_mask] == IGNORE).all()
    # Position t predicts token t+1.
    sup = (sample.text_targets != IGNORE).nonzero().flatten()
    assert torch.equal(sample.text_targets[sup], sample.input_ids[sup + 1])


def test_chat_roles_must_alternate(proc):
    with pytest.raises(ValueError, match="alternate"):
        chat_sample(proc, [{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="empty"):
        chat_sample(proc, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}])


def test_text_and_caption_supervise_every_text_token(proc):
    tok = proc.tokenizer
    s = text_sample(proc, "the cat sat on the mat.")
    body = tok.encode("the cat sat on the mat.", bos=False)
    assert s.input_ids.tolist() == [tok.bos_id, *body, tok.eos_id]
    assert _supervised(s) == [*body, tok.eos_id]
    assert s.task == DATA_KINDS.index("text")

    cap = text_sample(proc, "<image_placeholder>a red circle.", _pixels(1), task="und")
    n = proc.num_und_tokens
    assert cap.input_ids[:n + 3].tolist() == [tok.bos_id, tok.boi_id, *[tok.image_id] * n, tok.eoi_id]
    assert _supervised(cap) == [*tok.encode("a red circle.", bos=False), tok.eos_id]
    assert (cap.text_targets[: n + 1] == IGNORE).all()  # BOS, BOI and the image predict nothing
    assert cap.pixel_values.shape[0] == 1


def test_t2i_sample_targets_are_exactly_the_codes(proc):
    tok = proc.tokenizer
    codes = torch.randint(0, CFG.vq.codebook_size, (proc.num_gen_tokens,))
    s = t2i_sample(proc, "a red square above a blue star.", codes)
    prompt = tok.encode(proc.t2i_prompt("a red square above a blue star."))
    assert prompt[-1] == tok.boi_id
    p, n = len(prompt), proc.num_gen_tokens
    assert len(s) == p + n + 1
    assert s.input_ids[:p].tolist() == prompt and s.input_ids[-1].item() == tok.eoi_id
    assert torch.equal(s.gen_mask.nonzero().flatten(), torch.arange(p, p + n))
    assert torch.equal(s.gen_codes[s.gen_mask], codes)
    # Code 0 from BOI, code i from code i-1; nothing else; no text loss at all.
    assert torch.equal(s.image_targets[p - 1 : p - 1 + n], codes)
    assert (s.image_targets[: p - 1] == IGNORE).all() and (s.image_targets[p - 1 + n :] == IGNORE).all()
    assert (s.text_targets == IGNORE).all()
    assert s.task == DATA_KINDS.index("gen") and s.n_supervised == n


def test_cfg_dropout_row_is_the_inference_unconditional_row(proc):
    tok = proc.tokenizer
    codes = torch.randint(0, CFG.vq.codebook_size, (proc.num_gen_tokens,))
    cond = t2i_sample(proc, "a green star.", codes)
    uncond = t2i_sample(proc, "a green star.", codes, unconditional=True)
    ids = tok.encode(proc.t2i_prompt("a green star."))
    p = len(ids)
    # The row the sampler feeds for the unconditional branch (the job the engine runs).
    job = image_job(ids, tok.pad_id, 1, 5.0, SamplingParams(), None, proc.num_gen_tokens)
    assert uncond.input_ids[:p].tolist() == job.prompt_ids[1]
    assert uncond.input_ids[0] == tok.bos_id and uncond.input_ids[p - 1] == tok.boi_id
    assert (uncond.input_ids[1 : p - 1] == tok.pad_id).all()
    assert torch.equal(uncond.image_targets, cond.image_targets)
    assert torch.equal(uncond.input_ids[p:], cond.input_ids[p:])


def test_first_sentence():
    assert first_sentence("A red fox. It sits in the snow.") == "A red fox."
    assert first_sentence("  Is it red? Yes!  ") == "Is it red?"
    assert first_sentence("no end mark here") == "no end mark here"
    assert first_sentence("version 1.5 of a model. More.") == "version 1.5 of a model."
    assert first_sentence("一只红狐狸。在雪中。") == "一只红狐狸。"
    assert first_sentence("一只红狐狸。") == "一只红狐狸。"


def _gen_builder(proc, **kw) -> SampleBuilder:
    return SampleBuilder("gen", proc, seq_len=4096, codebook_size=CFG.vq.codebook_size, **kw)


def test_caption_augmentation_probabilities_and_determinism(proc, tmp_path):
    tok = proc.tokenizer
    codes = list(range(proc.num_gen_tokens))
    record = {"caption": "a red square. it is above a star.", "codes": codes}
    full = tok.encode(proc.t2i_prompt("a red square. it is above a star."))
    first = tok.encode(proc.t2i_prompt("a red square."))
    uncond_full = unconditional_prompt(full, tok.pad_id)
    uncond_first = unconditional_prompt(first, tok.pad_id)

    def prompt_of(builder, seed):
        s = builder.build(record, tmp_path / "x.jsonl", random.Random(seed))
        return s.input_ids[: int(s.gen_mask.nonzero()[0])].tolist()

    assert prompt_of(_gen_builder(proc, p_uncond=0, p_first_sentence=1), 0) == first
    assert prompt_of(_gen_builder(proc, p_uncond=1, p_first_sentence=0), 0) == uncond_full
    assert prompt_of(_gen_builder(proc, p_uncond=0, p_first_sentence=0), 0) == full

    builder = _gen_builder(proc)  # defaults: p_uncond 0.1, p_first_sentence 0.25
    n = 2000
    seen = [prompt_of(builder, seed) for seed in range(n)]
    assert seen == [prompt_of(builder, seed) for seed in range(n)]  # same rng seed, same sample
    n_uncond = sum(p in (uncond_full, uncond_first) for p in seen)
    n_first = sum(p in (first, uncond_first) for p in seen)
    # Binomial standard deviations at n = 2000: 0.0067 (p = 0.1) and 0.0097 (p = 0.25); 4 sigma.
    # (The draws are seeded, so the test is deterministic; the bound says the rates are right.)
    assert abs(n_uncond / n - 0.1) < 0.027
    assert abs(n_first / n - 0.25) < 0.039


def test_builder_rejects_bad_gen_records(proc, tmp_path):
    b = _gen_builder(proc)
    rng = random.Random(0)
    good = list(range(proc.num_gen_tokens))
    for record, reason in (
        ({"caption": "  ", "codes": good}, "empty_text"),
        ({"caption": "x", "codes": good[:-1]}, "bad_codes"),
        ({"caption": "x", "codes": [CFG.vq.codebook_size] * proc.num_gen_tokens}, "bad_codes"),
        ({"caption": "x", "codes": good, "image": "a.png"}, "bad_schema"),
        ({"caption": "x", "codes_row": 0}, "bad_codes"),  # no codes file next to the shard
        ({"caption": 3, "codes": good}, "bad_schema"),
    ):
        with pytest.raises(BadRecord) as e:
            b.build(record, tmp_path / "x.jsonl", rng)
        assert e.value.reason == reason, record
    with pytest.raises(BadRecord) as e:
        SampleBuilder("gen", proc, seq_len=10).build({"caption": "x", "codes": good}, tmp_path / "x.jsonl", rng)
    assert e.value.reason == "too_long"
