"""int8 weight-only quantisation: close to the float layer, applied to exactly the LLM and heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from openjanus.errors import UserError
from openjanus.generate import generate_image_tokens
from openjanus.quantize import Int8Linear, quantize_model
from openjanus.requests import SamplingParams

from conftest import build_tiny


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = nn.Linear(256, 512, bias=True)
    q = Int8Linear(linear)
    x = torch.randn(3, 5, 256)
    ref = linear(x)
    out = q(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    # Per-channel int8 rounds each weight by at most scale/2 = max|w|/254; with bf16 activations
    # (rel. 2^-8) the error stays within ~1% of the output range: a check that catches a wrong
    # scale axis or a transposed weight by orders of magnitude.
    assert_close(out, ref, rtol=0, atol=0.01 * ref.abs().max().item())
    assert q.weight.dtype == torch.int8 and q.scale.shape == (512,)


def test_quantize_model_replaces_the_llm_and_heads_only():
    model = build_tiny(seed=4)
    quantize_model(model, "int8")
    assert isinstance(model.llm.lm_head, Int8Linear) and isinstance(model.gen_head.out, Int8Linear)
    assert all(isinstance(layer.attn.q_proj, Int8Linear) and isinstance(layer.mlp.down_proj, Int8Linear)
               for layer in model.llm.layers)
    for part in (model.und_encoder, model.gen_tokenizer, model.und_aligner, model.gen_aligner):
        assert not any(isinstance(m, Int8Linear) for m in part.modules())
    with pytest.raises(UserError, match="unknown quantization"):
        quantize_model(model, "int4")


def test_quantized_model_generates_and_mostly_agrees_greedily():
    model = build_tiny(seed=5)
    prompt = [1, 5, 6, 7, 8, 9]
    greedy = SamplingParams(temperature=0.0)
    ref = generate_image_tokens(model, prompt, 3, n=2, sampling=greedy)
    quantize_model(model, "int8")
    out = generate_image_tokens(model, prompt, 3, n=2, sampling=greedy)
    assert out.shape == ref.shape
    assert out[:, 0].tolist() == ref[:, 0].tolist()  # the first token: no earlier difference to amplify
