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
from openjanus.train.parallel import checkpoint_blocks

# name -> (sum, weight); the logged value is sum / weight. Sums stay tensors on the device
# until a log step reads them; weights are counted on the host.
Metrics = dict[str, tuple[Tensor | float, float]]


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
class Supervision:
    """Where a packed batch's generation inputs and targets sit: flat indices into its B x L
    positions, and the supervised positions of each data kind per head.

    Found on the host from the batch's CPU copy before it moves to the device, so the forward
    needs no data-dependent shape from the device (a boolean mask index or `.any()` there
    would make the host wait for the device at every micro-batch).
    """

    und: Tensor  # [n_und] long: positions filled with understanding-image features
    gen: Tensor  # [n_gen] long: positions whose input is a VQ code
    text: Tensor  # [n_text] long: positions with a text target
    image: Tensor  # [n_image] long: positions with an image target
    text_kinds: dict[str, int]  # data kind -> supervised text positions (kinds present only)
    image_kinds: dict[str, int]

    @classmethod
    def of(cls, batch: PackedBatch) -> Supervision:
        """Read from a batch (on the CPU: no device sync)."""
        text, image = batch.text_targets != IGNORE, batch.image_targets != IGNORE
        return cls(batch.und_mask.flatten().nonzero().flatten(), batch.gen_mask.flatten().nonzero().flatten(),
                   text.flatten().nonzero().flatten(),
                   image.flatten().nonzero().flatten(), _kind_counts(batch.task[text]),
                   _kind_counts(batch.task[image]))

    def to(self, device: torch.device | str) -> Supervision:
        moved = (t.to(device, non_blocking=True) for t in (self.und, self.gen, self.text, self.image))
        return Supervision(*moved, self.text_kinds, self.image_kinds)


def _kind_counts(kinds: Tensor) -> dict[str, int]:
    counts = torch.bincount(kinds, minlength=len(DATA_KINDS)).tolist()
    return {name: n for name, n in zip(DATA_KINDS, counts) if n}


@dataclass
class PlacedBatch:
    """A packed batch on the training device with its supervision found on the host."""

    batch: PackedBatch
    supervision: Supervision


def place_batch(batch: PackedBatch, device: torch.device | str) -> PlacedBatch:
    """Read the supervision on the host, then move both to `device`."""
    return PlacedBatch(batch.to(device), Supervision.of(batch).to(device))


@dataclass
class LossOutput:
    loss: Tensor  # scalar to backpropagate: summed CE / number of supervised tokens
    per_task: dict[str, tuple[Tensor, int]]  # data kind -> (summed CE on the device, supervised tokens)
    n_supervised: int


def training_forward(model: Janus, batch: PackedBatch, loss_denominator: float | None = None,
                     supervision: Supervision | None = None) -> LossOutput:
    """Plain next-token cross-entropy over text and image targets, no task weights.

    The loss is the sum over all supervised tokens divided by `loss_denominator` (default:
    this batch's supervised-token count), so micro-batches of an accumulated step can share
    one denominator and give exactly the loss of the whole step. `supervision` (read on the
    host, see `Supervision`) keeps the forward free of host syncs; without it it is read here.
    """
    where = supervision if supervision is not None else Supervision.of(batch)
    h = model.embed_text(batch.input_ids)  # [B, L, D]
    n_images, n_und = batch.pixel_values.shape[0], where.und.numel()
    if n_images or n_und:
        # Janus.embed_chat's splice, at the positions found on the host (it counts them on the device).
        feats = model.encode_und_images(batch.pixel_values.to(h.dtype))  # [N, P, D]
        if feats.shape[0] * feats.shape[1] != n_und:
            raise ValueError(f"{feats.shape[0]} images x {feats.shape[1]} tokens do not fill {n_und} image positions")
        h = h.flatten(0, 1).index_put((where.und,), feats.reshape(-1, feats.shape[-1])).view_as(h)
    if where.gen.numel():
        gen = model.embed_image_tokens(batch.gen_codes.flatten()[where.gen])  # [n_gen, D]
        h = h.masked_scatter(batch.gen_mask[..., None], gen.to(h.dtype))
    hidden = model.llm(h, batch.positions, mask=document_mask(batch.doc_ids))  # [B, L, D]
    flat = hidden.flatten(0, 1)  # [B*L, D]

    total = hidden.new_zeros((), dtype=torch.float32)
    per_task: dict[str, tuple[Tensor, int]] = {}
    heads = ((batch.text_targets, where.text, where.text_kinds, model.text_logits),
             (batch.image_targets, where.image, where.image_kinds, model.image_logits))
    for targets, positions, kinds, head in heads:
        if not positions.numel():
            continue
        logits = head(flat[positions]).float()  # only supervised positions reach the (large) heads
        ce = F.cross_entropy(logits, targets.flatten()[positions], reduction="none")
        total = total + ce.sum()
        task = batch.task.flatten()[positions]
        for name, n in kinds.items():
            part = torch.where(task == DATA_KINDS.index(name), ce.detach(), 0.0).sum()
            s, n0 = per_task.get(name, (0.0, 0))
            per_task[name] = (s + part, n0 + n)
    n_sup = where.text.numel() + where.image.numel()
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

    def to_device(self, batch: PackedBatch, device: torch.device) -> PlacedBatch:
        return place_batch(batch, device)

    def forward(self, batch: PlacedBatch | PackedBatch, loss_denominator: float) -> StepResult:  # type: ignore[override]
        placed = batch if isinstance(batch, PlacedBatch) else PlacedBatch(batch, Supervision.of(batch))
        out = training_forward(self.model, placed.batch, loss_denominator=loss_denominator,  # type: ignore[arg-type]
                               supervision=placed.supervision)
        loss = out.loss
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Which paths run depends on the data (a micro-batch without images skips the
            # encoder, one without text targets skips the text head), and FSDP needs every
            # process to reduce the same gradients: touch the data-dependent parameters so they
            # get (zero) gradients everywhere. They live in the root unit, gathered for the step.
            touched = [p for m in self._data_dependent() for p in m.parameters() if p.requires_grad]
            if touched:
                loss = loss + 0.0 * sum(p.sum() for p in touched)
        metrics: Metrics = {f"loss/{name}": (s, float(n)) for name, (s, n) in out.per_task.items()}
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

    def to_device(self, batch: PackedBatch, device: torch.device) -> PlacedBatch:
        # Checked on the host copy, before the move.
        if batch.und_mask.any() or batch.gen_mask.any():
            raise ValueError("text pretraining got a batch with image positions; use a text-only data mix")
        return place_batch(batch, device)

    def forward(self, batch: PlacedBatch | PackedBatch, loss_denominator: float) -> StepResult:  # type: ignore[override]
        placed = batch if isinstance(batch, PlacedBatch) else self.to_device(batch, batch.input_ids.device)
        batch, positions = placed.batch, placed.supervision.text
        llm: LLM = self.model  # type: ignore[assignment]
        hidden = llm(llm.embed(batch.input_ids), batch.positions, mask=document_mask(batch.doc_ids))  # [B, L, D]
        logits = llm.lm_head(hidden.flatten(0, 1)[positions]).float()  # only supervised positions reach the head
        ce = F.cross_entropy(logits, batch.text_targets.flatten()[positions], reduction="sum")
        return StepResult(ce / loss_denominator, {"loss": (ce.detach(), float(positions.numel()))})

    def shard_units(self) -> list[nn.Module]:
        return [self.model.embed, *self.model.layers, self.model.lm_head]

    def compile_units(self) -> list[nn.Module]:
        return list(self.model.layers)

    def enable_activation_checkpointing(self) -> None:
        self.model.checkpoint_activations = True


__all__ = ["Objective", "JanusObjective", "TextObjective", "StepResult", "Metrics", "LossOutput", "Supervision",
           "PlacedBatch", "place_batch", "training_forward"]
