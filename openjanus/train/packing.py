"""Sequence packing: samples laid end to end in rows of `seq_len` tokens.

Each sample keeps its own positions (restarting at 0) and its own document id, so attention
never crosses samples (`openjanus.model.llm.document_mask`) and the packed loss equals the
loss of the samples run one by one. Padding fills the rest of a row with doc id -1, task -1
and IGNORE targets. A sample longer than `seq_len` is never truncated: it is skipped and
counted (the data sources already drop such records as "too_long").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from openjanus.train.batch import DATA_KINDS, IGNORE, PackedBatch
from openjanus.train.sequences import Sample

__all__ = ["Packer", "pack_rows", "packing_efficiency", "samples_per_task"]


def pack_rows(rows: Sequence[Sequence[Sample]], seq_len: int, pad_id: int, image_size: int) -> PackedBatch:
    """Lay out `rows` (each a list of samples, in order) as a `PackedBatch` of [len(rows), seq_len].

    `pixel_values` holds the understanding images row by row, sample by sample, which is the
    order in which `Janus.embed_chat` fills `und_mask` (row-major).
    """
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    positions = torch.zeros((b, seq_len), dtype=torch.long)
    doc_ids = torch.full((b, seq_len), -1, dtype=torch.long)
    und_mask = torch.zeros((b, seq_len), dtype=torch.bool)
    gen_mask = torch.zeros((b, seq_len), dtype=torch.bool)
    gen_codes = torch.zeros((b, seq_len), dtype=torch.long)
    text_targets = torch.full((b, seq_len), IGNORE, dtype=torch.long)
    image_targets = torch.full((b, seq_len), IGNORE, dtype=torch.long)
    task = torch.full((b, seq_len), -1, dtype=torch.long)
    pixels = []
    for r, row in enumerate(rows):
        at = 0
        for d, s in enumerate(row):
            n = len(s)
            if at + n > seq_len:
                raise ValueError(f"row {r} holds {at + n} tokens, more than seq_len {seq_len}")
            sl = slice(at, at + n)
            input_ids[r, sl] = s.input_ids
            positions[r, sl] = torch.arange(n)
            doc_ids[r, sl] = d
            und_mask[r, sl] = s.und_mask
            gen_mask[r, sl] = s.gen_mask
            gen_codes[r, sl] = s.gen_codes
            text_targets[r, sl] = s.text_targets
            image_targets[r, sl] = s.image_targets
            task[r, sl] = s.task
            if s.pixel_values.shape[0]:
                pixels.append(s.pixel_values)
            at += n
    pixel_values = torch.cat(pixels) if pixels else torch.zeros(0, 3, image_size, image_size)
    return PackedBatch(
        input_ids=input_ids, positions=positions, doc_ids=doc_ids, und_mask=und_mask,
        pixel_values=pixel_values, gen_mask=gen_mask, gen_codes=gen_codes,
        text_targets=text_targets, image_targets=image_targets, task=task,
    )


class Packer:
    """Greedy first-fit packing of a sample stream into batches of `batch_rows` rows.

    For each batch the samples left over from the previous one are placed first (oldest
    first, so none waits forever), then new samples are drawn and each goes into the first
    row with room; one that fits nowhere waits in `pending`. The batch closes when every row
    is full or `max_pending` samples wait. Waiting only reorders samples: none is dropped.
    """

    def __init__(self, seq_len: int, batch_rows: int, max_pending: int = 8) -> None:
        if seq_len < 1 or batch_rows < 1 or max_pending < 1:
            raise ValueError(f"seq_len {seq_len}, batch_rows {batch_rows} and max_pending {max_pending} must be >= 1")
        self.seq_len = seq_len
        self.batch_rows = batch_rows
        self.max_pending = max_pending
        self.pending: list[Sample] = []
        self.too_long = 0

    def next_rows(self, draw: Callable[[], Sample]) -> list[list[Sample]]:
        """The rows of the next batch, drawing new samples from `draw()` as needed."""
        rows: list[list[Sample]] = [[] for _ in range(self.batch_rows)]
        free = [self.seq_len] * self.batch_rows
        waiting, self.pending = self.pending, []

        def place(s: Sample) -> bool:
            for r in range(self.batch_rows):
                if len(s) <= free[r]:
                    rows[r].append(s)
                    free[r] -= len(s)
                    return True
            return False

        for s in waiting:
            if not place(s):
                self.pending.append(s)
        while len(self.pending) < self.max_pending and max(free) > 0:
            s = draw()
            if len(s) > self.seq_len:
                self.too_long += 1
                continue
            if not place(s):
                self.pending.append(s)
        return rows


def packing_efficiency(batch: PackedBatch) -> float:
    """Real tokens / all tokens of a batch."""
    return batch.n_tokens / max(batch.doc_ids.numel(), 1)


def samples_per_task(batch: PackedBatch) -> dict[str, int]:
    """How many samples of each task a batch holds (each sample counted once)."""
    starts = batch.positions == 0  # a sample's first token; padding has doc id -1
    starts &= batch.doc_ids >= 0
    tasks = batch.task[starts]
    return {name: int((tasks == i).sum()) for i, name in enumerate(DATA_KINDS)}
