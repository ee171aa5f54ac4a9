"""Training objectives: a model plus its loss, the only thing that differs between tasks.

The loop (`openjanus.train.trainer`) is the same for the three Janus stages and for the parts'
pretraining; it asks the objective how many loss units a micro-batch holds (so that
accumulated micro-batches and all processes share one loss denominator), runs it, and reads
back summed metrics. An objective is an `nn.Module` whose forward is the training forward:
FSDP2 gathers parameters in module-call hooks, and the objective is the module that is called
(Janus itself has no forward by design). Checkpoints hold `objective.model` only, in our names.

This file holds the Janus objective (the Janus-Pro next-token loss on packed batches) and text
pretraining of the LLM; the VQ and SigLIP objectives live in
`openjanus.train.vq_objective` and `openjanus.train.siglip`; the registry of tasks that pairs
each objective with its model and data is `openjanus.train.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.model.janus import Janus
from openjanus.model.llm import LLM, document_mask
from openjanus.train.batch import DATA_KINDS, IGNORE, PackedBatch

Metrics = dict[str, tuple[float, float]]  # name -> (sum, weight); the logged value is sum / weight


@dataclass
class StepResult:
    loss: Tensor  # scalar to backpropagate: summed loss / the step's shared denominator
    metrics: Metrics = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: `model` is what checkpoints hold; subclasses define the loss."""

    task: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def count(self, batch: Any) -> int:
        """Loss units in a micro-batch (supervised tokens, images, pairs); read on the host."""
        raise NotImplementedError

    def tokens(self, batch: Any) -> int:
        """Throughput units of a micro-batch (real tokens, or image patches for image tasks)."""
        raise NotImplementedError

    def flops(self, batch: Any) -> float:
        """Approximate model FLOPs of forward + backward on `batch` (0 when not modelled)."""
        return 0.0

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """The micro-batch on the training device."""
        return batch.to(device)

    def forward(self, batch: Any, loss_denominator: float) -> StepResult:  # type: ignore[override]
        """Loss summed over the micro-batch and divided by `loss_denominator` (the step's count
        of loss units over all micro-batches and processes), plus summed metrics."""
        raise NotImplementedError

    def shard_units(self) -> list[nn.Module]:
        """Modules FSDP2 shards one by one before the root (blocks, big tables)."""
        return []

    def compile_units(self) -> list[nn.Module]:
        """Modules compiled one by one with `torch.compile` (the repeated blocks)."""
        return []

    def enable_activation_checkpointing(self) -> None:
        """Recompute the blocks' activations in backward instead of storing them."""

    def log_metrics(self) -> dict[str, float]:
        """Extra values for log steps only (they may synchronise with the device)."""
        return {}

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode while the rest trains (they never train)."""
        return []


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
        for i, name in enumerate(DATA_KINDS):
            m = tasks == i
            if m.any():
                s, n = per_task.get(name, (0.0, 0))
                per_task[name] = (s + float(ce[m].sum().detach()), n + int(m.sum()))
    denom = loss_denominator if loss_denominator is not None else max(n_sup, 1)
    return LossOutput(loss=total / denom, per_task=per_task, n_supervised=n_sup)


# Sum over packed documents of length^2 (for the attention FLOPs); doc_ids [B, L].
def _doc_length_squares(doc_ids: Tensor) -> int:
    B, L = doc_ids.shape
    valid = doc_ids >= 0
    keys = (torch.arange(B, device=doc_ids.device)[:, None] * (L + 1) + doc_ids)[valid]  # unique per (row, doc)
    counts = torch.unique(keys, return_counts=True)[1]
    return int((counts.long() ** 2).sum())


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class JanusObjective(Objective):
    """The Janus-Pro loss: plain next-token cross-entropy over text and image targets of
    packed batches (`training_forward`), the same for all three stages."""

    task = "janus"

    def __init__(self, model: Janus) -> None:
        super().__init__(model)
        cfg = model.cfg
        # Sizes for the FLOPs estimate, taken before any sharding changes parameter shapes.
        self._llm_block_params = _numel(model.llm.layers)
        self._vit_block_params = _numel(model.und_encoder.blocks)
        self._text_head = cfg.llm.dim * cfg.llm.vocab_size
        self._image_head = cfg.llm.dim * cfg.gen_head_dim + cfg.gen_head_dim * cfg.vq.codebook_size
        self._layers, self._dim = cfg.llm.n_layers, cfg.llm.dim
        self._patches = cfg.num_und_tokens

    def count(self, batch: PackedBatch) -> int:
        return int((batch.text_targets != IGNORE).sum() + (batch.image_targets != IGNORE).sum())

    def tokens(self, batch: PackedBatch) -> int:
        return batch.n_tokens

    def flops(self, batch: PackedBatch) -> float:
        # Forward is 2 FLOPs per weight per token, backward 4 when the weights train and 2 when
        # only activation gradients flow through (a frozen LLM still passes gradients down to
        # the aligners). Attention: 2*d*n^2 per layer forward for a causal document of n tokens.
        llm_trains = self.model.llm.layers[0].attn.q_proj.weight.requires_grad
        vit_trains = self.model.und_encoder.blocks[0].attn.qkv.weight.requires_grad
        f_llm = 6.0 if llm_trains else 4.0
        n = batch.n_tokens
        n_text = int((batch.text_targets != IGNORE).sum())
        n_img = int((batch.image_targets != IGNORE).sum())
        attn = 2.0 * self._dim * self._layers * _doc_length_squares(batch.doc_ids)
        total = f_llm * self._llm_block_params * n + (f_llm / 2) * attn
        total += 6.0 * (self._text_head * n_text + self._image_head * n_img)
        total += (6.0 if vit_trains else 2.0) * self._vit_block_params * self._patches * batch.pixel_values.shape[0]
        return total

    def forward(self, batch: PackedBatch, loss_denominator: float) -> StepResult:  # type: ignore[override]
        out = training_forward(self.model, batch, loss_denominator=loss_denominator)  # type: ignore[arg-type]
        loss = out.loss
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Which paths run depends on the data (a micro-batch without images skips the
            # encoder, one without text targets skips the text head), and FSDP needs every
            # process to reduce the same gradients: touch the data-dependent parameters so they
            # get (zero) gradients everywhere. They live in the root unit, gathered for the step.
            touched = [p for m in self._data_dependent() for p in m.parameters() if p.requires_grad]
            if touched:
                loss = loss + 0.0 * sum(p.sum() for p in touched)
        metrics: Metrics = {f"loss/{name}": out.per_task[name] for name in DATA_KINDS if name in out.per_task}
        metrics["loss"] = (sum(s for s, _ in out.per_task.values()), float(out.n_supervised))
        return StepResult(loss, metrics)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.model.gen_tokenizer]  # no Janus stage trains the VQ tokenizer

    def _data_dependent(self) -> list[nn.Module]:
        m = self.model
        return [m.und_encoder, m.und_aligner, m.gen_embed, m.gen_aligner, m.gen_head, m.llm.lm_head]

    def shard_units(self) -> list[nn.Module]:
        # Only modules that every process runs in every micro-batch may be units of their own
        # (each unit's all-gather is a collective): the LLM blocks always run. The data-dependent
        # parts stay in the root unit. gen_tokenizer never runs in these stages, so as its own
        # unit it is never gathered at all.
        return [*self.model.llm.layers, self.model.gen_tokenizer]

    def compile_units(self) -> list[nn.Module]:
        return [*self.model.llm.layers, *self.model.und_encoder.blocks]

    def enable_activation_checkpointing(self) -> None:
        from openjanus.train.parallel import checkpoint_blocks

        self.model.llm.checkpoint_activations = True
        checkpoint_blocks(self.model.und_encoder.blocks)


class TextObjective(Objective):
    """Text pretraining of the LLM alone: next-token cross-entropy on packed text rows.

    Uses the text fields of a `PackedBatch` (input_ids, positions, doc_ids, text_targets), so
    the same packing and the same document masks as the Janus stages apply.
    """

    task = "text"

    def __init__(self, model: LLM) -> None:
        super().__init__(model)
        self._block_params = _numel(model.layers)
        self._head = model.cfg.dim * model.cfg.vocab_size
        self._layers, self._dim = model.cfg.n_layers, model.cfg.dim

    def count(self, batch: PackedBatch) -> int:
        return int((batch.text_targets != IGNORE).sum())

    def tokens(self, batch: PackedBatch) -> int:
        return batch.n_tokens

    def flops(self, batch: PackedBatch) -> float:
        attn = 6.0 * self._dim * self._layers * _doc_length_squares(batch.doc_ids)
        return 6.0 * self._block_params * batch.n_tokens + attn + 6.0 * self._head * self.count(batch)

    def forward(self, batch: PackedBatch, loss_denominator: float) -> StepResult:  # type: ignore[override]
        if batch.und_mask.any() or batch.gen_mask.any():
            raise ValueError("text pretraining got a batch with image positions; use a text-only data mix")
        llm: LLM = self.model  # type: ignore[assignment]
        hidden = llm(llm.embed(batch.input_ids), batch.positions, mask=document_mask(batch.doc_ids))  # [B, L, D]
        sel = batch.text_targets != IGNORE
        logits = llm.lm_head(hidden[sel]).float()  # only supervised positions reach the head
        ce = F.cross_entropy(logits, batch.text_targets[sel], reduction="sum")
        n = float(sel.sum())
        return StepResult(ce / loss_denominator, {"loss": (float(ce.detach()), n)})

    def shard_units(self) -> list[nn.Module]:
        return [self.model.embed, *self.model.layers, self.model.lm_head]

    def compile_units(self) -> list[nn.Module]:
        return list(self.model.layers)

    def enable_activation_checkpointing(self) -> None:
        self.model.checkpoint_activations = True


__all__ = ["Objective", "JanusObjective", "TextObjective", "StepResult", "Metrics", "LossOutput", "training_forward"]
