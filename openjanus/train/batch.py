"""The training batch and the training objective.

A `PackedBatch` holds rows of several samples packed end to end. Each sample keeps its own
positions (restarting at 0) and attends only to itself (`doc_ids`). Understanding images are
spliced in at `und_mask`, generation images enter as VQ codes at `gen_mask`; text targets
feed the text head and image targets the image head, so each head only sees its own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from openjanus.model.janus import Janus
from openjanus.model.llm import document_mask

IGNORE = -100
TASKS = ("und", "text", "gen")  # task ids 0, 1, 2 in `PackedBatch.task`


@dataclass
class PackedBatch:
    input_ids: Tensor  # [B, L] long: text ids; placeholder ids at und_mask; anything at gen_mask
    positions: Tensor  # [B, L] long: RoPE positions, restarting at 0 for each sample
    doc_ids: Tensor  # [B, L] long: sample index within its row; -1 on padding
    und_mask: Tensor  # [B, L] bool: filled with understanding-image features, in order
    pixel_values: Tensor  # [N, 3, S, S] float: the understanding images of the batch, in order
    gen_mask: Tensor  # [B, L] bool: positions whose input is a generation image token
    gen_codes: Tensor  # [B, L] long: the VQ code at gen_mask positions (0 elsewhere)
    text_targets: Tensor  # [B, L] long: next text token to predict, IGNORE where no text loss
    image_targets: Tensor  # [B, L] long: next VQ code to predict, IGNORE where no image loss
    task: Tensor  # [B, L] long: TASKS index of the sample each position belongs to; -1 on padding

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PackedBatch:
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if f.name == "pixel_values" and dtype is not None:
                out[f.name] = t.to(device, dtype, non_blocking=True)
            else:
                out[f.name] = t.to(device, non_blocking=True)
        return PackedBatch(**out)

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) positions."""
        return int((self.doc_ids >= 0).sum())

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]


@dataclass
class LossOutput:
    loss: Tensor  # scalar to backpropagate: summed CE / number of supervised tokens
    per_task: dict[str, tuple[float, int]]  # task -> (summed CE, supervised tokens), for logging
    n_supervised: int


def training_forward(model: Janus, batch: PackedBatch, loss_denominator: float | None = None) -> LossOutput:
    """Plain next-token cross-entropy over text and image targets, no task weights.

    The loss is the sum over all supervised tokens divided by `loss_denominator` (default:
    this batch's supervised-token count), so micro-batches of an accumulated step can share
    one denominator and give exactly the loss of the whole step.
    """
    dtype = model.llm.embed.weight.dtype
    h = model.embed_chat(batch.input_ids, batch.und_mask, batch.pixel_values.to(dtype))
    if batch.gen_mask.any():
        gen = model.embed_image_tokens(batch.gen_codes[batch.gen_mask])  # [n_gen, D]
        h = h.masked_scatter(batch.gen_mask[..., None], gen.to(h.dtype))
    hidden = model.llm(h, batch.positions, mask=document_mask(batch.doc_ids))  # [B, L, D]

    total = hidden.new_zeros((), dtype=torch.float32)
    per_task: dict[str, tuple[float, int]] = {}
    n_sup = 0
    for targets, head in ((batch.text_targets, model.text_logits), (batch.image_targets, model.image_logits)):
        sel = targets != IGNORE
        if not sel.any():
            continue
        logits = head(hidden[sel]).float()  # only supervised positions reach the (large) heads
        ce = F.cross_entropy(logits, targets[sel], reduction="none")
        total = total + ce.sum()
        n_sup += int(sel.sum())
        tasks = batch.task[sel]
        for i, name in enumerate(TASKS):
            m = tasks == i
            if m.any():
                s, n = per_task.get(name, (0.0, 0))
                per_task[name] = (s + float(ce[m].sum().detach()), n + int(m.sum()))
    denom = loss_denominator if loss_denominator is not None else max(n_sup, 1)
    return LossOutput(loss=total / denom, per_task=per_task, n_supervised=n_sup)
