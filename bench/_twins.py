"""Benchmark helpers: build only the parts of a Janus a measurement needs, in several weight
formats, and a transformers twin that shares the same weight tensors (no second copy)."""

from __future__ import annotations

import time

import torch
from torch import nn

from openjanus.config import JanusConfig
from openjanus.model.janus import Janus
from openjanus.model.llm import RMSNorm

# Submodules of a Janus per measurement; the rest stays on the meta device (no memory).
DECODE_PARTS = ("llm.layers", "llm.norm", "gen_head", "gen_aligner", "gen_embed")
VISUAL_PARTS = ("und_encoder", "gen_tokenizer")


def bandwidth(device: torch.device | str = "cpu") -> float:
    """Bytes per second of a large read (a sum over 1 GiB) on `device` (host memory, or a GPU's
    HBM), best of 5."""
    device = torch.device(device)
    x = torch.ones(2**28, device=device)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        x.sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


@torch.no_grad()
def build_parts(cfg: JanusConfig, parts: tuple[str, ...], seed: int = 0) -> Janus:
    """A Janus whose `parts` hold fresh fp32 weights on the CPU (each module's own init; RMSNorm
    weights at 1, free parameters ~N(0, 0.02)) and whose other parts stay on meta."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Janus(cfg)
    for name in parts:
        mod = model.get_submodule(name)
        mod.to_empty(device="cpu")
        for m in mod.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                m.weight.fill_(1.0)
            for p in m.parameters(recurse=False):
                if not hasattr(m, "reset_parameters") and not isinstance(m, RMSNorm):
                    p.normal_(0, 0.02)
            for b in m.buffers(recurse=False):
                b.zero_()
    vq = model.gen_tokenizer.quantize
    if "gen_tokenizer" in parts:
        vq.embedding.weight.copy_(torch.nn.functional.normalize(vq.embedding.weight, dim=-1))
    return model.eval()


def real_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not v.is_meta}


def converted(model: Janus, dtype: torch.dtype) -> Janus:
    """A second Janus with the real parts of `model` in `dtype` (new tensors)."""
    with torch.device("meta"):
        out = Janus(model.cfg)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in real_state(model).items()}
    out.load_state_dict(state, strict=False, assign=True)
    return out.eval()


def hf_twin(model: Janus):
    """transformers' JanusForConditionalGeneration holding the very tensors of `model`'s real
    parts (assigned, not copied, except SigLIP's split qkv), or None without transformers."""
    try:
        from transformers import JanusConfig as HFJanusConfig
        from transformers import JanusForConditionalGeneration
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.set_verbosity_error()
    from openjanus.checkpoints.hf import config_to_hf, to_hf_state

    dtype = next(t for t in real_state(model).values() if t.is_floating_point()).dtype
    hf_cfg = HFJanusConfig(**config_to_hf(model.cfg, dtype=str(dtype).removeprefix("torch.")))
    with torch.device("meta"):
        hf = JanusForConditionalGeneration(hf_cfg)
    hf.load_state_dict(to_hf_state(real_state(model), model.cfg), strict=False, assign=True)
    lm = hf.model.language_model
    # Non-persistent buffers are not in any state dict: rebuild them on the CPU.
    with torch.device("cpu"):
        lm.rotary_emb = type(lm.rotary_emb)(config=hf_cfg.text_config)
    emb = hf.model.vision_model.embeddings
    emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))
    return hf.eval()
