"""The decoding path (`BatchRunner` and the engine's core behind `generate_image_tokens` / `generate_text`) against
literal, cache-free re-statements of the reference algorithms."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from torch.testing import assert_close

from openjanus.errors import UserError
from openjanus.inference.engine import generate_image_tokens, generate_text
from openjanus.inference.sampling import cfg_combine, filter_logits, sample
from openjanus.requests import SamplingParams


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=1)


def reference_t2i(model, prompt: list[int], pad_id: int, parallel: int, cfg: float, temperature: float,
                  generator: torch.Generator) -> torch.Tensor:
    """SPEC 6.2 step by step, recomputing the whole sequence every step (no KV cache, no mask)."""
    rows = torch.tensor([prompt] * (2 * parallel))
    rows[1::2, 1:-1] = pad_id
    h = model.embed_text(rows)
    out = []
    for _ in range(model.cfg.num_gen_tokens):
        T = h.shape[1]
        hidden = model.llm(h, torch.arange(T).expand(h.shape[0], T))
        logits = model.image_logits(hidden[:, -1])
        logits = logits[1::2] + cfg * (logits[0::2] - logits[1::2])
        probs = torch.softmax(logits / temperature, dim=-1)
        nxt = torch.multinomial(probs, num_samples=1, generator=generator)  # [P, 1]
        out.append(nxt[:, 0])
        pair = torch.cat([nxt, nxt], dim=1).view(-1)  # [t0, t0, t1, t1, ...]
        h = torch.cat([h, model.embed_image_tokens(pair)[:, None]], dim=1)
    return torch.stack(out, 1)


def test_image_tokens_equal_reference_sampler(model):
    prompt = [1, 17, 23, 99, 5, 42, 7]
    ours = generate_image_tokens(model, prompt, pad_id=3, n=3, guidance=5.0,
                                 sampling=SamplingParams(temperature=1.0),
                                 generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = reference_t2i(model, prompt, 3, 3, 5.0, 1.0, torch.Generator().manual_seed(11))
    assert torch.equal(ours, ref)


def test_guidance_one_is_the_conditional_branch(model):
    prompt = [1, 9, 8, 7, 6, 5]
    guided = generate_image_tokens(model, prompt, pad_id=3, guidance=1.0, sampling=SamplingParams(0.0))
    # Conditional rows alone, greedy, no unconditional rows anywhere.
    with torch.no_grad():
        h = model.embed_text(torch.tensor([prompt]))
        cond = []
        for _ in range(model.cfg.num_gen_tokens):
            hid = model.llm(h, torch.arange(h.shape[1])[None])
            t = model.image_logits(hid[:, -1]).argmax(-1)
            cond.append(t)
            h = torch.cat([h, model.embed_image_tokens(t)[:, None]], 1)
    assert torch.equal(guided, torch.stack(cond, 1))
    c, u = torch.randn(3, 50), torch.randn(3, 50)
    inter = torch.stack([c, u], 1).view(6, 50)
    assert_close(cfg_combine(inter, 1.0), c, rtol=0, atol=1e-6)  # u + (c - u): one rounding step


def test_seed_reproduces_and_differs(model):
    def run(s):
        return generate_image_tokens(model, [1, 4, 5, 6], pad_id=3, n=2, generator=torch.Generator().manual_seed(s))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def reference_greedy_text(model, ids: list[int], n: int) -> list[int]:
    h = model.embed_text(torch.tensor([ids]))
    out = []
    for _ in range(n):
        hid = model.llm(h, torch.arange(h.shape[1])[None])
        t = model.text_logits(hid[:, -1]).argmax(-1)
        out.append(int(t))
        h = torch.cat([h, model.embed_text(t)[:, None]], 1)
    return out


def test_text_decode_equals_full_recompute_and_batching(model):
    prompts = [[1, 5, 6, 7, 8, 9, 10, 11], [1, 40], [1, 3, 3, 50, 60]]
    steps = list(generate_text(model, prompts, eos_id=None, max_new_tokens=6))
    batched = [[s[i] for s in steps] for i in range(3)]
    with torch.no_grad():
        for row, p in zip(batched, prompts):
            assert row == reference_greedy_text(model, p, 6)


def test_generation_stops_at_eos(model, monkeypatch):
    eos = 7
    calls = {"n": 0}
    vocab = model.cfg.llm.vocab_size

    def scripted_logits(hidden):
        # Called once per step on the rows still running: the first emits EOS at step 2, the
        # last one left at step 4.
        calls["n"] += 1
        logits = torch.zeros(hidden.shape[0], vocab)
        logits[:, 20] = 1
        if calls["n"] == 2:
            logits[0, eos] = 5
        if calls["n"] == 4:
            logits[-1, eos] = 5
        return logits

    monkeypatch.setattr(model, "text_logits", scripted_logits)
    steps = list(generate_text(model, [[1, 2, 3], [1, 4, 5]], eos_id=eos, max_new_tokens=10))
    assert steps == [[20, 20], [eos, 20], [None, 20], [None, eos]]


def test_sampling_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingParams(temperature=0), g).tolist() == [1]
    for _ in range(20):
        assert sample(logits, SamplingParams(temperature=1.0, top_k=1), g).tolist() == [1]
        assert sample(logits, SamplingParams(temperature=1.0, top_p=0.01), g).tolist() == [1]
    kept = filter_logits(logits, top_k=2, top_p=None)
    assert torch.isinf(kept).tolist() == [[True, False, False, True]]
    # top_p 0.8: probs sorted are .63, .23, .09, .05 -> keep the first two (cumulative .86 >= .8)
    kept = filter_logits(logits, top_k=None, top_p=0.8)
    assert torch.isinf(kept).tolist() == [[True, False, False, True]]
    with pytest.raises(UserError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=1.5)


@pytest.mark.slow
def test_compiled_decode_step_gives_identical_tokens(model):
    # Compiling takes ~45 s on a 2-core CPU, hence the slow marker (run with -m slow).
    p = [1, 5, 6, 7, 8]
    eager = generate_image_tokens(model, p, pad_id=3, n=2, generator=torch.Generator().manual_seed(0))
    compiled = generate_image_tokens(model, p, pad_id=3, n=2, generator=torch.Generator().manual_seed(0),
                                     compile=True)
    assert torch.equal(eager, compiled)
