"""Every speed-motivated formulation against the formulation it replaced, bit for bit in fp32:
grouped-KV attention without a repeated cache, the kernel-choosing Linear, in-place VQ
activations. fp32 must keep reproducing the official code exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny
from torch import Tensor, nn
from torch.testing import assert_close

from openjanus.config import JanusConfig
from openjanus.model import llm as llm_mod
from openjanus.model import vq as vq_mod
from openjanus.model.linear import Linear
from openjanus.model.llm import Attention, apply_rope, cache_mask

EXACT = dict(rtol=0, atol=0)


def _attention_repeat_interleave(self: Attention, x, cos, sin, mask, layer, cache, slots, kv_len=None) -> Tensor:
    """The attention as it was: the cache repeated for every query head."""
    B, T, _ = x.shape
    q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
    k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        k, v = cache.update(layer, slots, k, v, kv_len)
    if self.n_kv_heads != self.n_heads:
        rep = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


def _decode(llm, h: Tensor, kv_len: int | None) -> Tensor:
    """Prefill 5 positions, then decode the rest one at a time; all hidden states [B, T, D]."""
    B, T, _ = h.shape
    pos = torch.arange(T).expand(B, T)
    valid = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) > 0.2
    cache = llm.new_cache(B, T + 7)
    valid = torch.cat([valid, torch.ones(B, 7, dtype=torch.bool)], 1)
    outs = []
    slots = torch.arange(5)
    outs.append(llm(h[:, :5], pos[:, :5], cache_mask(slots, valid[:, :5]), cache, slots, kv_len=5))
    for t in range(5, T):
        s = torch.tensor([t])
        span = valid if kv_len is None else valid[:, :kv_len]
        outs.append(llm(h[:, t:t + 1], pos[:, t:t + 1], cache_mask(s, span), cache, s, kv_len=kv_len))
    return torch.cat(outs, 1)


@pytest.mark.parametrize("kv_len", [None, 14])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_bit_identical_to_repeated_cache(monkeypatch, dtype, kv_len):
    model = build_tiny(seed=2).to(dtype)
    assert model.cfg.llm.n_kv_heads < model.cfg.llm.n_heads  # the tiny preset is GQA
    h = torch.randn(3, 12, model.cfg.llm.dim).to(dtype)
    pos = torch.arange(12).expand(3, 12)
    new_full, new_dec = model.llm(h, pos), _decode(model.llm, h, kv_len)
    monkeypatch.setattr(Attention, "forward", _attention_repeat_interleave)
    assert_close(new_full, model.llm(h, pos), **EXACT)
    assert_close(new_dec, _decode(model.llm, h, kv_len), **EXACT)


def test_kv_len_reads_only_used_slots_and_matches_full_span():
    model = build_tiny(seed=2)
    h = torch.randn(2, 12, model.cfg.llm.dim)
    # Slots past kv_len are never attended (causality hides them), so the result is the same.
    assert_close(_decode(model.llm, h, kv_len=12), _decode(model.llm, h, kv_len=None), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, 8, 100])
def test_linear_fp32_is_f_linear_and_bf16_close(rows):
    torch.manual_seed(0)
    ref = nn.Linear(96, 80)
    ours = Linear(96, 80)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(rows, 3, 96)
    assert_close(ours(x), ref(x), **EXACT)
    ref_b, ours_b, xb = ref.bfloat16(), ours.bfloat16(), x.bfloat16()
    # bf16: the few-row path multiplies in a different order; both round to bf16 from fp32 sums.
    assert_close(ours_b(xb).float(), ref_b(xb).float(), rtol=2e-2, atol=2e-2)


def _resblock_reference(self: vq_mod.ResnetBlock, x: Tensor) -> Tensor:
    h = self.conv1(vq_mod._swish(self.norm1(x)))
    h = self.conv2(vq_mod._swish(self.norm2(h)))
    if self.nin_shortcut is not None:
        x = self.nin_shortcut(x)
    return x + h


def _reference_vq(monkeypatch) -> None:
    monkeypatch.setattr(vq_mod.ResnetBlock, "forward", _resblock_reference)
    monkeypatch.setattr(vq_mod, "_swish_", vq_mod._swish)


def test_vq_in_place_activations_bit_identical(monkeypatch):
    monkeypatch.setattr(vq_mod, "_SWISH_CHUNK", 1024)  # several chunks where sizes allow
    torch.manual_seed(0)
    vq = vq_mod.VQModel(JanusConfig.from_name("tiny").vq).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = torch.randint(0, vq.cfg.codebook_size, (2, 16))
    x_before = images.clone()
    with torch.no_grad():
        new_dec, new_lat = vq.decode_codes(codes), vq.encode_latents(images)
    assert_close(images, x_before, **EXACT)  # the caller's tensor is untouched
    with torch.no_grad():
        _reference_vq(monkeypatch)
        ref_dec, ref_lat = vq.decode_codes(codes), vq.encode_latents(images)
    assert_close(new_dec, ref_dec, **EXACT)
    assert_close(new_lat, ref_lat, **EXACT)


def test_vq_training_keeps_gradients():
    torch.manual_seed(0)
    vq = vq_mod.VQModel(JanusConfig.from_name("tiny").vq).train()
    recon, losses, _ = vq(torch.rand(1, 3, 32, 32) * 2 - 1)
    (recon.pow(2).mean() + sum(losses.values())).backward()
    assert vq.encoder.conv_in.weight.grad is not None


@pytest.mark.parametrize("shape", [(2, 32, 32, 32), (1, 3, 17, 19)])
def test_chunked_swish_bit_identical(monkeypatch, shape):
    monkeypatch.setattr(vq_mod, "_SWISH_CHUNK", 1024)
    x = torch.randn(shape)
    with torch.no_grad():
        assert_close(vq_mod._swish_(x.clone()), vq_mod._swish(x), **EXACT)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_projections_equal_separate_ones(dtype):
    """Stacked q/k/v and gate/up weights: a decode step (few rows, `mm(W, x.T)` in bf16) is
    the same dot product per output element, so it must be bit-identical; the prefill's
    larger product may block the sum differently, hence one rounding step of the dtype."""
    model = build_tiny(seed=4).to(dtype)
    h = torch.randn(2, 9, model.cfg.llm.dim, generator=torch.Generator().manual_seed(5)).to(dtype)
    plain = _decode(model.llm, h, kv_len=14)
    fused = _decode(llm_mod.fuse_projections(model.llm), h, kv_len=14)
    assert model.llm.layers[0].attn.qkv_proj is not None and not hasattr(model.llm.layers[0].mlp, "up_proj")
    eps = torch.finfo(dtype).eps
    assert_close(fused[:, :5], plain[:, :5], rtol=2 * eps, atol=2 * eps)
    assert_close(fused[:, 5:], plain[:, 5:], **(EXACT if dtype == torch.bfloat16 else dict(rtol=2 * eps, atol=2 * eps)))


def test_pipeline_fuses_only_outside_fp32():
    """fp32 must keep the official code's products (unfused); bf16 and int8 get fused ones."""
    from openjanus.inference.pipeline import JanusPipeline

    fp32 = JanusPipeline.load("tiny", dtype="float32")
    assert fp32.model.llm.layers[0].attn.qkv_proj is None
    bf16 = JanusPipeline.load("tiny", dtype="bfloat16")
    assert bf16.model.llm.layers[0].attn.qkv_proj is not None
    int8 = JanusPipeline.load("tiny", dtype="float32", quantize="int8")
    assert type(int8.model.llm.layers[0].mlp.gate_up_proj).__name__ == "Int8Linear"
