"""Post-training on several processes (torchrun): what GRPO and DPO add to the training
package's FSDP2 (`openjanus.train.parallel.shard_model`) and process group
(`openjanus.distributed`).

* Each step's prompts (and their sample seeds) are drawn for the whole step, as with one
  process, and split into equal contiguous slices, one per rank: a prompt's whole group stays
  on one rank, so GRPO's group normalisation is local, and step s samples the same images in a
  run of any size (`local_slice`). A `prompts_per_step` that the world size does not divide is
  refused before a model is built (`check_world_size`).
* The policy's LLM blocks are FSDP2 units; everything else (embeddings, heads, encoders, VQ) is
  the root unit. Training computations go through the root's forward (`Policy.forward`), so
  that FSDP2 gathers and reduce-scatters as in training; FSDP2 averages the gradients over the
  ranks, and each rank scales its loss by (its samples x world size / all samples), so the
  gradient is the mean over all samples of the step, as with one process.
* Sampling, rewarding, the reference's and the old policy's log-probabilities run inside
  `gathered`: every unit's parameters all-gathered once and kept, so each rank runs its own
  number of engine steps without collectives; resharded afterwards.
* Every unit's all-gather is a collective, so every rank runs the same number of training
  forwards and backwards: a rank with fewer micro-batches runs the missing ones on a stand-in
  sample with weight 0 (`micro_batch_count`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from openjanus.distributed import DistInfo, all_reduce_max
from openjanus.errors import UserError


def check_world_size(prompts_per_step: int, world_size: int) -> None:
    """Refuse a step that cannot be split into equal whole prompts (with their groups)."""
    if world_size > 1 and prompts_per_step % world_size:
        raise UserError(f"prompts_per_step {prompts_per_step} is not a multiple of the {world_size} processes: "
                        f"each process takes the same number of whole prompts (with their groups) per step")


def local_slice(n: int, dist_info: DistInfo) -> slice:
    """This rank's contiguous share of a step's `n` prompts (n divisible by the world size)."""
    k = n // dist_info.world_size
    return slice(dist_info.rank * k, (dist_info.rank + 1) * k)


def fsdp_modules(root: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(root: nn.Module, dist_info: DistInfo) -> Iterator[None]:
    """Inside the block every FSDP2 unit of `root` holds its full parameters and keeps them
    through any number of forwards (no collective until the block ends); a no-op with one
    process. Every rank must enter and leave it together."""
    if not dist_info.distributed:
        yield
        return
    units = fsdp_modules(root)
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
        # The blocks go back to resharding after forward; the root keeps its parameters
        # between its forward and backward, as `shard_model` set it.
        for m in units:
            m.set_reshard_after_forward(m is not root, recurse=False)


def micro_batch_count(n_local: int, micro_batch: int, device: torch.device) -> int:
    """The number of micro-batches every rank runs: the most any rank needs."""
    return int(all_reduce_max([float(-(-n_local // micro_batch))], device)[0])


__all__ = ["check_world_size", "local_slice", "fsdp_modules", "gathered", "micro_batch_count"]
