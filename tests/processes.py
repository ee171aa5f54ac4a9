"""What tests that start processes share: a free loopback port, and a spawned rank's gloo process
group (set up as torchrun would, ended as `openjanus.distributed.destroy` says)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gloo_rank(rank: int, port: int, world_size: int = 2) -> Iterator[None]:
    """Rank `rank` of a gloo group on loopback, one thread; after a normal end every rank meets
    before the group is destroyed, after an error none waits (the others may never arrive)."""
    from openjanus.distributed import destroy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    finished = False
    try:
        yield
        finished = True
    finally:
        destroy(wait_for_all=finished)
