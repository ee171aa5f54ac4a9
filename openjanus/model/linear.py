"""A Linear that picks, per shape, the CPU kernel that reads the weights fastest.

A decode step multiplies a few rows (2 per image with classifier-free guidance) by every
weight of the LLM, so its time is the time to read the weights. Measured on a 2-core AVX512
CPU (`bench/bench_linear.py`): for bf16 weights and up to a few dozen rows, `F.linear` reads
them at ~60% of the memory bandwidth and `torch.mm(W, x.T).T` (the weight as the left
operand) at 85-100%. fp32 stays on `F.linear`: it is already at the bandwidth for 1-2 rows,
and any other formulation would round differently from the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Row counts up to which `mm(W, x.T)` beats `F.linear` for bf16/fp16 weights on CPU.
FEW_ROWS = 64


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state dict) with a faster kernel for few rows of
    bf16/fp16 on CPU; every other case runs `F.linear` unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if w.dtype in (torch.bfloat16, torch.float16) and w.device.type == "cpu" and x.dtype == w.dtype:
            rows = x.numel() // x.shape[-1]
            if 0 < rows <= FEW_ROWS:
                # [out, rows] -> [rows, out]; the copy to row-major is tiny and keeps later ops
                # (and kernels that need contiguous rows) on the usual layout.
                out = torch.mm(w, x.reshape(rows, x.shape[-1]).t()).t().contiguous()
                if self.bias is not None:
                    out = out + self.bias
                return out.reshape(*x.shape[:-1], w.shape[0])
        return F.linear(x, w, self.bias)
