"""The torchrun process group, for every command that runs on several processes: training
(FSDP2, `openjanus.train.parallel`) and batch generation of a prompt file (`openjanus.batch_job`).

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed` reads them and starts NCCL
on GPUs or gloo on CPU. With one process (no torchrun, or a world of 1) no group is started and
every helper here is a no-op, so the same code runs alone and sharded.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "env_dist_info", "init_distributed", "current_dist_info", "barrier", "all_reduce_sum",
           "all_reduce_max", "destroy"]


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


def _running() -> bool:
    return dist.is_available() and dist.is_initialized()


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from the torchrun environment (1 process without it)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device, timeout_minutes: int = 30) -> DistInfo:
    """Start the default process group when launched by torchrun with more than one process."""
    if _running():
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
    if _running():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def barrier() -> None:
    """Wait for all processes (no-op with one)."""
    if _running():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all processes (unchanged with one process)."""
    return _all_reduce(values, device, "SUM")


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each number over all processes (unchanged with one process)."""
    return _all_reduce(values, device, "MAX")


def _all_reduce(values: list[float], device: torch.device, op: str) -> list[float]:
    if not _running() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.tolist()


def destroy(wait_for_all: bool = True) -> None:
    """End the default process group if one is running.

    After a normal end (`wait_for_all`), every process first meets at a barrier, so that none
    tears the group down, or exits (rank 0 also hosts the group's store), while another is still
    using it; a gloo process that lost its peers that way aborted ("terminate called without an
    active exception"). After an error there is no barrier: the others may never arrive.
    Unreachable models are collected first, since FSDP2's device meshes hold the group.
    """
    if _running():
        if wait_for_all:
            barrier()
        gc.collect()
        dist.destroy_process_group()
