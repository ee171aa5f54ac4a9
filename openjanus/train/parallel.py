"""Distributed training applied from outside the model: process group, FSDP2, rank helpers.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed` reads them and starts NCCL
on GPUs or gloo on CPU. `shard_model` applies FSDP2 (`fully_shard`) to each unit the objective
names (transformer blocks, the large embedding and output tables), then to the objective
itself as the root. The root must be a module whose forward is *called*, because FSDP2
gathers parameters in forward hooks; Janus has no forward (its entry points are explicit),
so the root is the training objective that wraps it (see `openjanus.train.objectives`).

FSDP2 on CPU: the all-gather and reduce-scatter FSDP2 issues are implemented by gloo in the
supported torch versions, so the same code path runs in the 2-process CPU test.
"""

from __future__ import annotations

import datetime
import functools
import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (1 process without it)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device, timeout_minutes: int = 30) -> DistInfo:
    """Start the default process group when launched by torchrun with more than one process."""
    if dist.is_available() and dist.is_initialized():
        return current_dist_info()
    info = env_dist_info()
    if not info.distributed:
        return info
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # A long timeout: rank 0 alone writes checkpoints and runs evaluations while the others wait.
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return info


def current_dist_info() -> DistInfo:
    """The running process group's rank and size (1 process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def barrier() -> None:
    """Wait for all processes (no-op with one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all processes (unchanged with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard_model(root: nn.Module, units: Iterable[nn.Module], device: torch.device,
                param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: `fully_shard` each unit, then the root. On GPU with `param_dtype` (bf16), parameters
    are gathered in that dtype and gradients reduced in fp32; the master weights stay fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    # The root's parameters are used from the first to the last op of the step; keeping them
    # gathered after forward saves one all-gather in backward.
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return root


def checkpoint_blocks(blocks: Iterable[nn.Module]) -> None:
    """Activation checkpointing for modules that have no switch of their own (SigLIP blocks,
    the SigLIP text tower): their forward recomputes in backward instead of keeping activations.

    The module object and its parameter names stay as they are, so checkpoints and FSDP units
    are unaffected; FSDP's hooks stay on the module call, outside the recomputed function.
    """
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        if getattr(block, "_openjanus_checkpointed", False):
            continue
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
        block._openjanus_checkpointed = True


def destroy(wait_for_all: bool = True) -> None:
    """End the default process group if one is running.

    After a normal end (`wait_for_all`), every process first meets at a barrier, so that none
    tears the group down, or exits (rank 0 also hosts the group's store), while another is still
    using it; a gloo process that lost its peers that way aborted ("terminate called without an
    active exception"). After an error there is no barrier: the others may never arrive.
    Unreachable models are collected first, since FSDP2's device meshes hold the group.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


__all__ = ["DistInfo", "env_dist_info", "init_distributed", "current_dist_info", "barrier", "all_reduce_sum",
           "shard_model", "checkpoint_blocks", "destroy"]
