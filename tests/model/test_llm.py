"""The LLM on its own: cached decoding, masks, grouped KV heads."""

import torch
from torch.testing import assert_close

from openjanus.config import JanusConfig, LLMConfig
from openjanus.model.llm import LLM, cache_mask, document_mask

# fp32 on CPU: the cached and uncached paths do the same arithmetic on the same values,
# only the attention span differs by exactly-zero masked terms, so differences are ~1e-6.
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_llm(**overrides) -> LLM:
    torch.manual_seed(0)
    cfg = JanusConfig.from_name("tiny").llm
    if overrides:
        cfg = LLMConfig(**{**cfg.__dict__, **overrides})
    return LLM(cfg).eval()


def test_cached_decode_equals_full_forward():
    llm = tiny_llm()
    B, T, D = 2, 12, llm.cfg.dim
    h = torch.randn(B, T, D)
    pos = torch.arange(T).expand(B, T)
    full = llm(h, pos)  # plain causal

    cache = llm.new_cache(B, T)
    valid = torch.ones(B, T, dtype=torch.bool)
    prefix = 5
    slots = torch.arange(prefix)
    out = [llm(h[:, :prefix], pos[:, :prefix], cache_mask(slots, valid), cache, slots)]
    for t in range(prefix, T):
        s = torch.tensor([t])
        out.append(llm(h[:, t:t + 1], pos[:, t:t + 1], cache_mask(s, valid), cache, s))
    assert_close(torch.cat(out, 1), full, **TOL)


def test_left_padding_matches_unpadded_row():
    llm = tiny_llm()
    short = torch.randint(0, 100, (4,)).tolist()
    long = torch.randint(0, 100, (9,)).tolist()
    # Left-padded by hand: pads get position 1 (masked, so any value works), real tokens 0, 1, ...
    ids = torch.tensor([[0] * 5 + short, long])
    mask = torch.tensor([[False] * 5 + [True] * 4, [True] * 9])
    pos = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
    slots = torch.arange(ids.shape[1])
    cache = llm.new_cache(2, ids.shape[1])
    batched = llm(llm.embed(ids), pos, cache_mask(slots, mask), cache, slots)
    alone = llm(llm.embed(torch.tensor([short])), torch.arange(4)[None])
    assert_close(batched[0, -4:], alone[0], **TOL)
    assert torch.isfinite(batched).all(), "padding rows must not produce NaN"


def test_grouped_kv_heads_equal_repeated_full_heads():
    # A GQA model must equal an MHA model whose k/v weights repeat each group's head.
    gqa = tiny_llm(n_heads=4, n_kv_heads=2)
    mha = tiny_llm(n_heads=4, n_kv_heads=4)
    sd = gqa.state_dict()
    hd = gqa.cfg.head_dim
    for k in list(sd):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            w = sd[k].view(2, hd, -1)
            sd[k] = w.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    h = torch.randn(1, 7, gqa.cfg.dim)
    pos = torch.arange(7)[None]
    assert_close(gqa(h, pos), mha(h, pos), **TOL)


def test_document_mask_isolates_packed_samples():
    llm = tiny_llm()
    a, b = torch.randn(1, 5, llm.cfg.dim), torch.randn(1, 3, llm.cfg.dim)
    packed = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 5 + [1] * 3])
    pos = torch.tensor([list(range(5)) + list(range(3))])
    out = llm(packed, pos, document_mask(doc))
    assert_close(out[:, :5], llm(a, torch.arange(5)[None]), **TOL)
    assert_close(out[:, 5:], llm(b, torch.arange(3)[None]), **TOL)


def test_rmsnorm_runs_in_fp32_for_bf16_inputs():
    llm = tiny_llm().to(torch.bfloat16)
    x = torch.randn(1, 3, llm.cfg.dim).to(torch.bfloat16) * 100
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + llm.cfg.norm_eps)).to(torch.bfloat16)
    assert torch.equal(llm.norm(x), llm.norm.weight * ref)


def test_prefill_over_its_own_slots_equals_full_cache_span():
    llm = tiny_llm()
    B, T, S = 2, 6, 20
    h = torch.randn(B, T, llm.cfg.dim)
    pos = torch.arange(T).expand(B, T)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[0, :2] = False  # left padding in row 0
    slots = torch.arange(T)
    full = llm(h, pos, cache_mask(slots, valid), llm.new_cache(B, S), slots)
    short = llm(h, pos, cache_mask(slots, valid[:, :T]), llm.new_cache(B, S), slots, kv_len=T)
    assert_close(short, full, **TOL)


def test_grouped_attention_is_bit_identical_to_repeated_heads(monkeypatch):
    # The fast path (SDPA reading grouped heads) and the fallback (repeat the cache) must give the
    # same bits: fp32 reference outputs are compared exactly against the official code.
    import openjanus.model.llm as llm_mod

    llm = tiny_llm(n_heads=4, n_kv_heads=2)
    h = torch.randn(2, 9, llm.cfg.dim)
    pos = torch.arange(9).expand(2, 9)
    slots = torch.arange(9)
    mask = cache_mask(slots, torch.ones(2, 9, dtype=torch.bool))
    fast = llm(h, pos, mask, llm.new_cache(2, 16), slots, kv_len=9)
    monkeypatch.setattr(llm_mod, "_SDPA_GQA", False)
    slow = llm(h, pos, mask, llm.new_cache(2, 16), slots, kv_len=9)
    assert_close(fast, slow, rtol=0, atol=0)
