"""The training batch: packed rows of understanding, text and generation samples.

A `PackedBatch` holds rows of several samples packed end to end. Each sample keeps its own
positions (restarting at 0) and attends only to itself (`doc_ids`). Understanding images are
spliced in at `und_mask`, generation images enter as VQ codes at `gen_mask`; text targets
feed the text head and image targets the image head, so each head only sees its own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

IGNORE = -100
# The three kinds of training sample (ids 0, 1, 2 in `PackedBatch.task`); not to be confused
# with the training tasks of `openjanus.train.stages` (janus, vq, siglip, text).
DATA_KINDS = ("und", "text", "gen")


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
    task: Tensor  # [B, L] long: DATA_KINDS index of the sample each position belongs to; -1 on padding

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
