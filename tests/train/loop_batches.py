"""Hand-built packed batches and streams for the training-loop tests (no data pipeline needed)."""

from __future__ import annotations

from typing import Any

import torch

from openjanus.config import JanusConfig
from openjanus.train.batch import IGNORE, PackedBatch

PAD = 0


def _row(cfg: JanusConfig, g: torch.Generator, seq_len: int) -> dict[str, Any]:
    """One row: an understanding sample, a text sample and a text-to-image sample, then padding."""
    V, C = cfg.llm.vocab_size, cfg.vq.codebook_size
    n_und, n_gen = cfg.num_und_tokens, cfg.num_gen_tokens
    pads = {"input_ids": PAD, "positions": 0, "doc_ids": -1, "und_mask": False, "gen_mask": False, "gen_codes": 0,
            "text_targets": IGNORE, "image_targets": IGNORE, "task": -1}
    row: dict[str, list[Any]] = {k: [] for k in pads}

    def text(n: int) -> list[int]:
        return torch.randint(1, V, (n,), generator=g).tolist()

    def add(kind: int, seq: list[int], text_targets: list[int], und: list[bool] | None = None,
            gen: list[bool] | None = None, codes: list[int] | None = None,
            image_targets: list[int] | None = None) -> None:
        n = len(seq)
        columns = {"input_ids": seq, "positions": range(n), "doc_ids": [kind] * n, "und_mask": und or [False] * n,
                   "gen_mask": gen or [False] * n, "gen_codes": codes or [0] * n, "text_targets": text_targets,
                   "image_targets": image_targets or [IGNORE] * n, "task": [kind] * n}
        for name, values in columns.items():
            row[name] += values

    # und: 3 prompt tokens, the image slots, 5 answer tokens (supervised)
    seq = text(3) + [PAD] * n_und + text(5)
    sup = [False] * (3 + n_und) + [True] * 4 + [False]
    add(0, seq, [n if s else IGNORE for n, s in zip(seq[1:] + [IGNORE], sup)],
        und=[False] * 3 + [True] * n_und + [False] * 5)
    # text: 10 tokens, every next token supervised
    seq = text(10)
    add(1, seq, seq[1:] + [IGNORE])
    # gen: 4 prompt tokens (the last is BOI), n_gen codes, EOI; the image head predicts the codes
    prompt = text(4)
    cc = torch.randint(0, C, (n_gen,), generator=g).tolist()
    seq = prompt + [PAD] * n_gen + text(1)
    add(2, seq, [IGNORE] * len(seq), gen=[False] * 4 + [True] * n_gen + [False], codes=[0] * 4 + cc + [0],
        image_targets=[IGNORE] * 3 + cc + [IGNORE, IGNORE])
    n = len(row["input_ids"])
    assert n <= seq_len, (n, seq_len)
    return {k: list(v) + [pads[k]] * (seq_len - n) for k, v in row.items()}


def make_batch(cfg: JanusConfig, rows: int = 2, seq_len: int = 112, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    parts = [_row(cfg, g, seq_len) for _ in range(rows)]
    t = {k: torch.tensor([p[k] for p in parts]) for k in parts[0]}
    s = cfg.vision.image_size
    return PackedBatch(input_ids=t["input_ids"].long(), positions=t["positions"].long(), doc_ids=t["doc_ids"].long(),
                       und_mask=t["und_mask"].bool(), pixel_values=torch.randn(rows, 3, s, s, generator=g),
                       gen_mask=t["gen_mask"].bool(), gen_codes=t["gen_codes"].long(),
                       text_targets=t["text_targets"].long(), image_targets=t["image_targets"].long(),
                       task=t["task"].long())


def split_rows(batch: PackedBatch, start: int, stop: int) -> PackedBatch:
    """Rows [start, stop) of a batch (one image per row in these batches)."""
    out = {}
    for name in batch.__dataclass_fields__:
        t = getattr(batch, name)
        out[name] = t[start:stop]
    return PackedBatch(**out)


class HandStream:
    """An endless, resumable stream of hand-built batches. Like the real stream's CFG dropout it
    draws from a random generator: here the *global* torch generator (so that only a restored
    RNG state makes a resumed run continue identically)."""

    def __init__(self, cfg: JanusConfig, rows: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1,
                 global_rows: int | None = None, drop: float = 0.5) -> None:
        self.cfg, self.rows, self.seed, self.drop = cfg, rows, seed, drop
        self.rank, self.world_size = rank, world_size
        self.index = 0

    def __iter__(self) -> HandStream:
        return self

    def __next__(self) -> PackedBatch:
        # The full global batch is built and this rank takes its rows, so any world size sees
        # the same global data.
        full = make_batch(self.cfg, rows=self.rows * self.world_size, seed=self.seed * 1000 + self.index)
        self.index += 1
        batch = split_rows(full, self.rank * self.rows, (self.rank + 1) * self.rows)
        drop = torch.rand(batch.shape[0]) < self.drop  # "CFG dropout" from the global RNG
        ids = batch.input_ids.clone()
        ids[drop, 0] = PAD
        batch.input_ids = ids
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])


def assert_params_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float) -> None:
    """Compare two state dicts. SigLIP's key bias (the middle third of each `qkv.bias`) has an
    exactly zero gradient (softmax ignores a shift shared by all keys), so what Adam does with
    its rounding noise is arbitrary: it is compared only for being finite."""
    assert set(a) == set(b)
    for k in a:
        x, y = a[k], b[k]
        if k.startswith("und_encoder.blocks.") and k.endswith("attn.qkv.bias"):
            third = x.shape[0] // 3
            assert torch.isfinite(x).all() and torch.isfinite(y).all()
            x = torch.cat([x[:third], x[2 * third:]])
            y = torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=k)
