"""Distributed training applied from outside the model: FSDP2 and activation checkpointing.

The process group itself (torchrun's ranks, `init_distributed`, `barrier`, ...) is
`openjanus.distributed`, shared with batch generation. `shard_model` applies FSDP2
(`fully_shard`) to each unit the objective names (transformer blocks, the large embedding and
output tables), then to the objective itself as the root. The root must be a module whose
forward is *called*, because FSDP2 gathers parameters in forward hooks; Janus has no forward
(its entry points are explicit), so the root is the training objective that wraps it (see
`openjanus.train.objectives`).

FSDP2 on CPU: the all-gather and reduce-scatter FSDP2 issues are implemented by gloo in the
supported torch versions, so the same code path runs in the 2-process CPU test.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


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


__all__ = ["shard_model", "checkpoint_blocks"]
