"""JanusPipeline: batching, streaming, dtypes, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.errors import UserError
from openjanus.inference.engine import tokens_to_pil
from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import ChatRequest, ImageRequest, Message, SamplingParams


def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 30), (20, 64), (32, 32))]


def test_batched_answers_equal_one_by_one(tiny_pipeline):
    ims = images()
    qs = ["what is this?", "how many circles are there in this picture of shapes?", "is there a star?"]
    batched = tiny_pipeline.answer(ims, qs, max_new_tokens=6)
    alone = [tiny_pipeline.answer([im], [q], max_new_tokens=6)[0] for im, q in zip(ims, qs)]
    assert batched == alone


def test_stream_pieces_join_to_the_answer(tiny_pipeline):
    request = ChatRequest.ask("describe", images()[:2], max_new_tokens=8)
    handle = tiny_pipeline.submit(request)
    events = list(handle)
    result = handle.result()
    assert sum(1 for e in events if e.token_ids) == 8 or result.finish_reason == "stop"  # + a final flush
    assert "".join(e.text for e in events).strip() == result.text
    assert [t for e in events for t in e.token_ids if t != tiny_pipeline.processor.tokenizer.eos_id] == result.token_ids
    assert result.text == tiny_pipeline.generate(request).text


def test_multi_turn_with_images_in_two_turns(tiny_pipeline):
    a, b = images()[:2]
    chat = [Message("user", [a, "first"]), Message("assistant", "ok"), Message("user", [b, "second"])]
    out = tiny_pipeline.generate(ChatRequest(chat, max_new_tokens=4))
    assert isinstance(out.text, str) and out.prompt_tokens > 2 * tiny_pipeline.model.cfg.num_und_tokens
    with pytest.raises(UserError, match="placeholders"):
        tiny_pipeline.submit(ChatRequest([Message("user", [a, "<image_placeholder> <image_placeholder>"])]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_vq_decoding_in_every_dtype(tiny_pipeline, dtype):
    vq = tiny_pipeline.model.gen_tokenizer
    codes = torch.randint(0, tiny_pipeline.model.cfg.vq.codebook_size, (2, tiny_pipeline.model.cfg.num_gen_tokens))
    ref = vq.decode_codes(codes)
    low = vq.to(dtype).decode_codes(codes)
    vq.float()
    assert low.dtype == dtype
    # Half precision rounds activations to 8/11 mantissa bits through ~20 conv layers.
    tol = {torch.float32: 0.0, torch.bfloat16: 0.15, torch.float16: 0.02}[dtype]
    assert (low.float() - ref).abs().max() <= tol


def test_uint8_conversion_truncates_like_the_reference():
    x = torch.tensor([[-1.0, 0.999, 1.2, -0.0001]]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    arr = np.asarray(tokens_to_pil(x)[0])[0, :, 0]
    # (x + 1) / 2 * 255 -> 0, 254.87, 280.5 (clipped to 255), 127.49 -> truncated: 0, 254, 255, 127
    assert arr.tolist() == [0, 254, 255, 127]


def test_bad_parameters_are_user_errors(tiny_pipeline):
    with pytest.raises(UserError, match="images per prompt"):
        ImageRequest("x", n=0)
    with pytest.raises(UserError, match="temperature"):
        ImageRequest("x", sampling=SamplingParams(temperature=-0.5))
    with pytest.raises(UserError, match="tokens"):
        tiny_pipeline.submit(ImageRequest("word " * 600))
    with pytest.raises(UserError, match="image tokens"):
        tiny_pipeline.decode_tokens(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(UserError, match="2 images but 1 questions"):
        tiny_pipeline.answer(images()[:2], ["q"])


def test_preset_pipeline_and_default_model_message(monkeypatch, tmp_path):
    pipe = JanusPipeline.load("tiny", device="cpu")
    assert pipe.generate(ImageRequest("a")).tokens.shape == (1, pipe.model.cfg.num_gen_tokens)
    monkeypatch.setattr("openjanus.inference.pipeline.DEMO_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(UserError, match="no --model given"):
        JanusPipeline.load(None)
