"""The Llama-architecture language model (DeepSeek-LLM) with a static, preallocated KV cache.

Numerics follow the reference Llama: RMSNorm in fp32 then cast back, rotate-half RoPE with
cos/sin computed in fp32 and applied in the activation dtype, SwiGLU, no biases, untied
output head. The LLM works on embeddings, so the caller decides what each position holds
(text, understanding-image features or generation-image embeddings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import LLMConfig
from openjanus.model.linear import Linear

# scaled_dot_product_attention takes grouped key/value heads directly from torch 2.5 on.
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables for rotate-half RoPE at `positions` [B, T] -> two [B, 1, T, head_dim]."""
    even = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (even / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [B, T, head_dim]
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Preallocated keys/values, one tensor per layer: k[layer], v[layer] [B, H, S, hd],
    indexed by cache slot.

    Each decode step writes one slot per row with fixed shapes, so it can be compiled or
    captured; the writes index whole per-layer tensors (a write into a view of a larger
    tensor makes a compiled step copy the whole base every step). Rows may be at different
    lengths (a request joining a running batch): slots are then given per row.
    """

    def __init__(self, k: list[Tensor], v: list[Tensor]) -> None:
        self.k, self.v = k, v

    @classmethod
    def allocate(cls, n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> KVCache:
        shape = (batch, n_kv_heads, max_len, head_dim)

        def zeros() -> list[Tensor]:
            return [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]

        return cls(zeros(), zeros())

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    def rows(self, start: int, stop: int) -> KVCache:
        """Rows [start, stop) as a cache sharing this one's memory (writes land here)."""
        return KVCache([t[start:stop] for t in self.k], [t[start:stop] for t in self.v])

    def copy_(self, src: KVCache, rows: slice, src_rows: slice = slice(None)) -> None:
        """Copy `src`'s rows `src_rows` (all its slots) into this cache's `rows`, first slots."""
        for dst_k, dst_v, k, v in zip(self.k, self.v, src.k, src.v):
            dst_k[rows, :, :src.max_len] = k[src_rows]
            dst_v[rows, :, :src.max_len] = v[src_rows]

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor,
               kv_len: int | None = None) -> tuple[Tensor, Tensor]:
        """Write k/v [B, H, T, hd] of the first B rows at `slots` ([T] shared by all rows, or
        [B, T] per row); return their first `kv_len` slots (all S by default) [B, H, kv_len, hd]."""
        B = k.shape[0]
        if slots.ndim == 1:
            self.k[layer][:B].index_copy_(2, slots, k)
            self.v[layer][:B].index_copy_(2, slots, v)
        else:
            # Advanced indexing on the whole tensor (an index_put a compiler keeps in place):
            # rows [B, 1] and slots [B, T] select [B, T, H, hd].
            rows = torch.arange(B, device=slots.device)[:, None]
            self.k[layer][rows, :, slots] = k.transpose(1, 2)
            self.v[layer][rows, :, slots] = v.transpose(1, 2)
        end = self.max_len if kv_len is None else kv_len
        return self.k[layer][:B, :, :end], self.v[layer][:B, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.qkv_proj: nn.Module | None = None  # set by `fuse_projections` (inference only)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, T, heads * hd]: three products, or one over the fused matrix."""
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv = self.n_kv_heads * self.head_dim
        return self.qkv_proj(x).split((self.n_heads * self.head_dim, kv, kv), dim=-1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, layer: int,
                cache: KVCache | None, slots: Tensor | None, kv_len: int | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x)
        # [B, T, H*hd] -> [B, H, T, hd]
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, slots, k, v, kv_len)
        gqa = {}
        if self.n_kv_heads != self.n_heads:
            if _SDPA_GQA:  # grouped heads read the cache as is (bit-identical, no copy of it)
                gqa = {"enable_gqa": True}
            else:
                rep = self.n_heads // self.n_kv_heads
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, **gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # [B, T, D]


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.gate_up_proj: nn.Module | None = None  # set by `fuse_projections` (inference only)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up_proj is None:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, layer: int,
                cache: KVCache | None, slots: Tensor | None, kv_len: int | None = None) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, layer, cache, slots, kv_len)
        return x + self.mlp(self.mlp_norm(x))


class LLM(nn.Module):
    """Decoder stack on input embeddings; returns final-norm hidden states.

    `embed` and `lm_head` live here (they are the text vocabulary's), but `forward` takes
    embeddings so that image features can be spliced in by the caller.
    """

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.checkpoint_activations = False

    def new_cache(self, batch: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"requested {max_len} cache positions but the model supports {self.cfg.max_seq_len}")
        ref = self.embed.weight
        return KVCache.allocate(self.cfg.n_layers, batch, max_len, self.cfg.n_kv_heads, self.cfg.head_dim,
                                device=device or ref.device, dtype=dtype or ref.dtype)

    def forward(self, h: Tensor, positions: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None, slots: Tensor | None = None, kv_len: int | None = None) -> Tensor:
        """Run the stack.

        h: [B, T, D] input embeddings; positions: [B, T] RoPE positions;
        mask: bool [B, 1, T, S] (True = may attend) or None for plain causal attention
        over the T inputs; cache/slots: write k/v at cache slots ([T], or [B, T] when rows
        are at different lengths) and attend over the
        whole cache (the mask must then cover all S cache slots), or only its first `kv_len`
        slots (a prefill that starts at slot 0 needs no more; decode steps keep the full,
        fixed-shape span).
        """
        if (cache is None) != (slots is None):
            raise ValueError("cache and slots must be given together")
        if cache is not None and mask is None:
            raise ValueError("a cached forward needs an explicit mask over the cache slots")
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)
        for i, layer in enumerate(self.layers):
            if self.checkpoint_activations and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, mask, i, cache, slots, kv_len,
                                                      use_reentrant=False)
            else:
                h = layer(h, cos, sin, mask, i, cache, slots, kv_len)
        return self.norm(h)


def _stacked(*linears: nn.Linear) -> Linear:
    """One bias-free Linear whose output is the outputs of `linears` side by side."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    fused = Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    return fused


@torch.no_grad()
def fuse_projections(llm: LLM) -> LLM:
    """Stack q/k/v into one matrix and gate/up into another, per layer, in place.

    A decode step reads every weight once; two larger products instead of five read them at
    ~7-12% more of the memory bandwidth on a 2-core CPU in bf16 (`bench/bench_inference.py
    --steps`) and launch fewer kernels on a GPU. Each output element is the same dot product,
    but a different matrix shape may block the sum differently, so fp32 inference (which must
    match the official code bit for bit) stays unfused. Inference only: the state dict changes.
    """
    for block in llm.layers:
        attn, mlp = block.attn, block.mlp
        # A projection wrapped by a LoRA adapter (applied unmerged, `--adapter`) is not a plain
        # Linear: stacking its base weight would drop the adapter, so such groups stay apart.
        if attn.qkv_proj is None and _plain(attn.q_proj, attn.k_proj, attn.v_proj):
            attn.qkv_proj = _stacked(attn.q_proj, attn.k_proj, attn.v_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj
        if mlp.gate_up_proj is None and _plain(mlp.gate_proj, mlp.up_proj):
            mlp.gate_up_proj = _stacked(mlp.gate_proj, mlp.up_proj)
            del mlp.gate_proj, mlp.up_proj
    return llm


def _plain(*modules: nn.Module) -> bool:
    return all(isinstance(m, nn.Linear) for m in modules)


def cache_mask(slots: Tensor, key_valid: Tensor) -> Tensor:
    """Attention mask for queries at cache `slots` [T] over all S slots.

    key_valid: bool [B, S], False for padding slots. A query sees valid keys at or before
    its own slot; it always sees itself, so a padding query never has an empty row (an
    all-masked row would give NaN that would then leak through 0 * NaN into real rows).
    Returns bool [B, 1, T, S].
    """
    S = key_valid.shape[1]
    key_idx = torch.arange(S, device=slots.device)
    causal = key_idx[None, :] <= slots[:, None]  # [T, S]
    own = key_idx[None, :] == slots[:, None]
    return ((causal[None] & key_valid[:, None, :]) | own[None])[:, None]


def document_mask(doc_ids: Tensor) -> Tensor:
    """Causal mask confined to each packed document: doc_ids [B, T] -> bool [B, 1, T, T]."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return (same & causal)[:, None]
