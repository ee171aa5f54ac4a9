"""Weight-only int8 quantisation of the LLM and the two heads, applied at load time.

Each output channel of a linear layer keeps its int8 weights and one scale (max |w| / 127);
activations stay in floating point. On the CPU the product runs in torch's int8-weight kernel
(`torch._weight_int8pack_mm`, bf16 activations: it reads 1 byte per weight instead of 2 or 4,
and decoding is bound by reading the weights); elsewhere the weights are dequantised per call.
The understanding encoder, the VQ tokenizer and the small adaptors stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.errors import UserError
from openjanus.model.janus import Janus

__all__ = ["Int8Linear", "quantize_model", "QUANTIZATIONS"]

QUANTIZATIONS = ("none", "int8")

# Rows per call of torch's int8-weight CPU kernel (it costs one weight read per 4 rows; the
# conversion to bf16 for a GEMM ~3 bf16 reads).
PACK_ROWS = 16


class Int8Linear(nn.Module):
    """y = (x @ q.T) * scale + bias, with q int8 [out, in] and scale [out] per output channel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # [out]
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # [M, in]
        if x.device.type == "cpu":
            # bf16 activations; the result returns to the caller's dtype.
            xb, scale = x2.to(torch.bfloat16).contiguous(), self.scale.to(torch.bfloat16)
            # The two kernels round differently, so the choice must not depend on how many rows
            # share the call (that would make a row's bits depend on its neighbours in the
            # batch, issue 23): it depends on the tokens per row. One token per row (a decode
            # step, the heads): the int8 kernel, PACK_ROWS rows per call, each row's result the
            # same in any call. Several (a prefill, a Jacobi window): its weights would be
            # re-read for every 4 rows, so one conversion to bf16 and a GEMM, row-independent.
            # in_features not a multiple of 16 always take the GEMM (torch's kernel reads out
            # of bounds there).
            one_token = x.dim() == 2 or x.shape[-2] == 1
            if one_token and self.in_features % 16 == 0:
                y = torch.cat([torch._weight_int8pack_mm(c.contiguous(), self.weight, scale)
                               for c in xb.split(PACK_ROWS)])
            else:
                y = torch.mm(xb, self.weight.to(torch.bfloat16).t()) * scale
            y = y.to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_model(model: Janus, method: str | None) -> Janus:
    """Replace the linear layers of the LLM (blocks and text head) and of the image head by
    int8 weight-only ones, in place; `None`/"none" leaves the model as it is."""
    if method in (None, "none"):
        return model
    if method != "int8":
        raise UserError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZATIONS)}")
    for root in (model.llm, model.gen_head):
        for module in list(root.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, Int8Linear(child))
    return model
