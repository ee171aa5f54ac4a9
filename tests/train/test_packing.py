"""Packing: the layout of a packed batch, the greedy packer, and packed == one-by-one numerics."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import build_tiny
from data_helpers import CFG

from openjanus.train.batch import IGNORE
from openjanus.train.objectives import training_forward
from openjanus.train.packing import Packer, pack_rows, packing_efficiency, samples_per_task
from openjanus.train.sequences import chat_sample, t2i_sample, text_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(proc):
    g = torch.Generator().manual_seed(0)
    size = CFG.vision.image_size

    def pixels(n):
        return torch.randn(n, 3, size, size, generator=g)

    def codes():
        return torch.randint(0, CFG.vq.codebook_size, (CFG.num_gen_tokens,), generator=g)

    chat = [{"role": "user", "content": "<image_placeholder>\nwhat is in this picture?"},
            {"role": "assistant", "content": "a red circle above a blue square."}]
    two_images = [{"role": "user", "content": "<image_placeholder><image_placeholder>\nhow many stars?"},
                  {"role": "assistant", "content": "two."},
                  {"role": "user", "content": "is there a yellow star?"},
                  {"role": "assistant", "content": "yes."}]
    return [
        chat_sample(proc, chat, pixels(1), system_prompt="describe the image in detail."),
        t2i_sample(proc, "a photo of two green stars.", codes()),
        text_sample(proc, "the cat sat on the mat. how many triangles are there?"),
        chat_sample(proc, two_images, pixels(2), system_prompt=""),
        t2i_sample(proc, "a red circle.", codes(), unconditional=True),
        text_sample(proc, "<image_placeholder>a photo of a yellow star.", pixels(1), task="und"),
        chat_sample(proc, [{"role": "user", "content": "there are three. yes. no."},
                           {"role": "assistant", "content": "the cat sat on the mat."}], task="text"),
    ]


def test_pack_rows_layout(proc):
    samples = _samples(proc)
    rows = [[samples[0], samples[1]], [samples[3], samples[2]]]
    seq_len = max(sum(len(s) for s in r) for r in rows) + 5
    b = pack_rows(rows, seq_len, proc.tokenizer.pad_id, CFG.vision.image_size)
    assert b.shape == (2, seq_len)
    for r, row in enumerate(rows):
        at = 0
        for d, s in enumerate(row):
            sl = slice(at, at + len(s))
            assert torch.equal(b.positions[r, sl], torch.arange(len(s)))  # positions restart per sample
            assert (b.doc_ids[r, sl] == d).all() and (b.task[r, sl] == s.task).all()
            assert torch.equal(b.input_ids[r, sl], s.input_ids)
            assert torch.equal(b.text_targets[r, sl], s.text_targets)
            assert torch.equal(b.image_targets[r, sl], s.image_targets)
            at += len(s)
        pad = slice(at, None)
        assert (b.doc_ids[r, pad] == -1).all() and (b.task[r, pad] == -1).all()
        assert (b.text_targets[r, pad] == IGNORE).all() and (b.image_targets[r, pad] == IGNORE).all()
        assert not b.und_mask[r, pad].any() and not b.gen_mask[r, pad].any()
    # Images in row-major order of their positions, which is how embed_chat fills und_mask.
    assert torch.equal(b.pixel_values, torch.cat([samples[0].pixel_values, samples[3].pixel_values]))
    assert b.n_tokens == sum(len(s) for r in rows for s in r)
    assert packing_efficiency(b) == pytest.approx(b.n_tokens / (2 * seq_len))
    assert samples_per_task(b) == {"und": 2, "text": 1, "gen": 1}
    with pytest.raises(ValueError, match="more than seq_len"):
        pack_rows([samples], 10, proc.tokenizer.pad_id, CFG.vision.image_size)


def test_packed_loss_and_gradients_equal_one_by_one(proc):
    """The packed forward is the sum of the per-sample forwards.

    Attention is confined to each sample (masked scores become exactly 0 after softmax) and
    positions restart, so every sample sees the same numbers it would see alone. What remains
    is fp32 rounding from different matmul shapes and summation orders: measured 3e-7 on the
    loss and 5e-7 relative on the gradients, hence tolerances of 1e-5 relative. Letting
    attention leak across the samples of a row moves this loss by about 1e-3 relative, 100x
    the tolerance (checked at the end as a control).
    """
    model = build_tiny(0).train()
    samples = _samples(proc)
    rows = [[samples[0], samples[1], samples[2], samples[6]], [samples[3], samples[4], samples[5]]]
    seq_len = max(sum(len(s) for s in r) for r in rows) + 7  # some padding too
    packed = pack_rows(rows, seq_len, proc.tokenizer.pad_id, CFG.vision.image_size)
    assert {t for t in packed.task.unique().tolist() if t >= 0} == {0, 1, 2}
    total = sum(s.n_supervised for s in samples)

    model.zero_grad()
    out = training_forward(model, packed, loss_denominator=total)
    out.loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert out.n_supervised == total

    model.zero_grad()
    loss_sum = torch.zeros(())
    per_task: dict[str, float] = {}
    for s in samples:
        one = pack_rows([[s]], len(s), proc.tokenizer.pad_id, CFG.vision.image_size)
        o = training_forward(model, one, loss_denominator=total)
        o.loss.backward()  # gradients accumulate: the sum over samples
        loss_sum = loss_sum + o.loss.detach()
        for k, (v, _) in o.per_task.items():
            per_task[k] = per_task.get(k, 0.0) + v

    torch.testing.assert_close(out.loss.detach(), loss_sum, rtol=1e-5, atol=1e-6)
    for k, (v, _) in out.per_task.items():
        torch.testing.assert_close(torch.as_tensor(v), torch.as_tensor(per_task[k]), rtol=1e-5, atol=0)
    assert set(packed_grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("und_encoder") for n in packed_grads)  # every path got gradients
    assert any(n.startswith("gen_head") for n in packed_grads)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(packed_grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")

    leaky = dataclasses.replace(packed, doc_ids=torch.where(packed.doc_ids >= 0, 0, -1))
    with torch.no_grad():
        leak = training_forward(model, leaky, loss_denominator=total).loss
    assert not torch.allclose(leak, loss_sum, rtol=1e-4, atol=0)


def test_packer_first_fit_keeps_every_sample(proc):
    lengths = [30, 90, 50, 120, 10, 70, 200, 40, 60, 20, 80, 100] * 5
    made = []

    def draw():
        n = lengths[len(made) % len(lengths)]
        s = text_sample(proc, "x" * 1)  # shape donor
        s = type(s)(**{**s.__dict__, "input_ids": torch.zeros(n, dtype=torch.long),
                       "text_targets": torch.full((n,), IGNORE), "image_targets": torch.full((n,), IGNORE),
                       "und_mask": torch.zeros(n, dtype=torch.bool), "gen_mask": torch.zeros(n, dtype=torch.bool),
                       "gen_codes": torch.zeros(n, dtype=torch.long)})
        s.origin = ("text", 0, 0, len(made), len(made))
        made.append(s)
        return s

    packer = Packer(seq_len=128, batch_rows=2, max_pending=3)
    placed = []
    for _ in range(20):
        rows = packer.next_rows(draw)
        assert all(sum(len(s) for s in r) <= 128 for r in rows)
        placed += [s.origin for r in rows for s in r]
        assert len(packer.pending) <= 3
    # 200 > seq_len: skipped and counted, never truncated; everything else is placed or waiting.
    too_long = sum(1 for s in made if len(s) > 128)
    assert packer.too_long == too_long > 0
    waiting = [s.origin for s in packer.pending]
    assert sorted(placed + waiting) == sorted(s.origin for s in made if len(s) <= 128)
    assert len(set(placed)) == len(placed)
