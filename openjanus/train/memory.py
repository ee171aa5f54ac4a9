"""Training memory of LoRA on a Janus model, as `openjanus info` states it.

What is counted (bytes on the accelerator, one process):

* frozen weights in their dtype (bf16 for the released models), every part (the VQ and the
  understanding encoder included: generation decodes, understanding encodes);
* the adapter: A [r, in] and B [out, r] per adapted linear, kept in fp32 (peft's default), plus
  their fp32 gradients and AdamW's two fp32 moments (4 x 4 bytes per adapter parameter);
* activations with activation checkpointing (`activation_checkpointing: true`): each LLM
  block's input kept for the backward (B x L x dim, bf16), plus the one block being recomputed
  (q, k, v, attention output, two norms, the MLP's gate, up, activation and product:
  B x L x (6 dim + 4 ffn), bf16; attention itself through SDPA's fused kernels holds no
  L x L matrix), plus the image head's logits for the image positions in fp32 with their
  log-softmax and gradient (3 x B x image tokens x codebook x 4 bytes).

Not counted: the CUDA context and allocator slack (about 1 GiB in practice), the understanding
encoder's activations (frozen; one 576-token image per sample is small beside the LLM's).
"""

from __future__ import annotations

from dataclasses import dataclass

from openjanus.config import JanusConfig

# The usual LoRA targets of a Llama block: all seven linear layers.
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GIB = 2**30


@dataclass(frozen=True)
class LoraMemory:
    weights: int
    adapter_params: int
    adapter: int  # weights + gradients + AdamW moments, fp32
    activations: int
    logits: int
    batch: int
    seq_len: int
    rank: int

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits

    def lines(self) -> list[str]:
        return [
            f"LoRA training memory (rank {self.rank} on the LLM's 7 linear layers per block, bf16 weights, "
            f"batch {self.batch} x {self.seq_len} tokens, activation checkpointing):",
            f"  frozen weights     {self.weights / GIB:7.2f} GiB",
            f"  adapter            {self.adapter / GIB:7.2f} GiB ({self.adapter_params:,} parameters; fp32 "
            f"weights, gradients, AdamW moments)",
            f"  activations        {self.activations / GIB:7.2f} GiB (block inputs kept, one block recomputed)",
            f"  image logits       {self.logits / GIB:7.2f} GiB (fp32, with log-softmax and gradient)",
            f"  total              {self.total / GIB:7.2f} GiB"
            f"{' (fits 24 GB with ~1 GiB for the CUDA context)' if self.total + GIB <= 24e9 else ''}",
        ]


def lora_adapter_params(cfg: JanusConfig, rank: int, targets: tuple[str, ...] = LLM_TARGETS) -> int:
    c = cfg.llm
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {"q_proj": (c.dim, q), "k_proj": (c.dim, kv), "v_proj": (c.dim, kv), "o_proj": (q, c.dim),
              "gate_proj": (c.dim, c.ffn_dim), "up_proj": (c.dim, c.ffn_dim), "down_proj": (c.ffn_dim, c.dim)}
    return c.n_layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def lora_training_memory(cfg: JanusConfig, total_params: int, rank: int = 16, batch: int = 4,
                         seq_len: int | None = None, weight_bytes: int = 2) -> LoraMemory:
    """The estimate for `batch` sequences of `seq_len` tokens (default: a 64-token prompt and
    the image tokens: text-to-image training, or GRPO with batch/2 images and their CFG rows)."""
    c = cfg.llm
    L = seq_len or (64 + cfg.num_gen_tokens)
    n_adapter = lora_adapter_params(cfg, rank)
    act = batch * L * c.dim * 2 * c.n_layers + batch * L * (6 * c.dim + 4 * c.ffn_dim) * 2
    logits = 3 * batch * cfg.num_gen_tokens * cfg.vq.codebook_size * 4
    return LoraMemory(weights=total_params * weight_bytes, adapter_params=n_adapter, adapter=16 * n_adapter,
                      activations=act, logits=logits, batch=batch, seq_len=L, rank=rank)


__all__ = ["LoraMemory", "lora_training_memory", "lora_adapter_params", "LLM_TARGETS"]
