"""int8 weight-only quantisation: close to the float layer, applied to exactly the LLM and heads."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from torch import nn
from torch.testing import assert_close

from openjanus.errors import UserError
from openjanus.inference.engine import generate_image_tokens
from openjanus.quantize import Int8Linear, quantize_model
from openjanus.requests import SamplingParams


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


@pytest.mark.parametrize("in_features", [256, 300])  # 300: torch's int8 kernel needs a multiple of 16
@pytest.mark.parametrize("rows", [1, 2, 4, 16, 17, 40])
def test_int8_cpu_paths_equal_the_dequantised_product(rows, in_features):
    # Every CPU path (torch's int8 kernel for few rows, bf16 GEMM on converted weights for many)
    # and the generic path of other devices compute x @ (q * scale).T within bf16 rounding.
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(in_features, 520).bfloat16())
    x = torch.randn(rows, in_features).bfloat16()
    exact = x.float() @ (q.weight.float() * q.scale[:, None]).t() + q.bias.float()
    out = q(x).float()
    # bf16 rounding of the scale and of the result: relative 2^-8 each, on sum |x w|.
    mag = x.float().abs() @ (q.weight.float() * q.scale[:, None]).abs().t()
    assert ((out - exact).abs() <= 2 ** -7 * mag + 2 ** -7 * exact.abs() + 1e-2).all()


@pytest.mark.parametrize("fmt", ["bfloat16", "bfloat16+int8"])
def test_low_precision_models_generate(fmt):
    model = build_tiny(seed=5)
    prompt = [1, 5, 6, 7, 8, 9]
    greedy = SamplingParams(temperature=0.0)
    ref = generate_image_tokens(model, prompt, 3, n=2, sampling=greedy)
    model = model.to(torch.bfloat16)
    if "int8" in fmt:
        quantize_model(model, "int8")
    out = generate_image_tokens(model, prompt, 3, n=2, sampling=greedy)
    assert out.shape == ref.shape
    assert ((0 <= out) & (out < model.cfg.vq.codebook_size)).all()
    assert out[:, 0].tolist() == ref[:, 0].tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_int8_linear_cuda_matches_cpu():
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(256, 300).bfloat16())
    x = torch.randn(8, 256).bfloat16()
    assert_close(q.cuda()(x.cuda()).float().cpu(), q.cpu()(x).float(), rtol=2e-2, atol=5e-2)


def test_auto_dtype_is_bf16_only_where_the_cpu_has_bf16(monkeypatch):
    from openjanus import devices as pipeline

    cpu = torch.device("cpu")
    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: True)
    assert pipeline.resolve_dtype("auto", cpu) == torch.bfloat16
    assert pipeline.resolve_dtype("float32", cpu) == torch.float32  # the exact, official-equal format
    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: False)
    assert pipeline.resolve_dtype(None, cpu) == torch.float32
    assert pipeline.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
