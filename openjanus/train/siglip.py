"""Pretraining the SigLIP understanding encoder from scratch, on image-caption pairs.

The loss is the pairwise sigmoid loss of the SigLIP paper,
-1/|B| sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)), z_ij = 1 on matching pairs and -1
elsewhere, with learnable temperature t = exp(log_t) (log_t starts at log 10) and bias b
(starts at -10). The image embedding is SigLIP's own attention-pooling head (`attn_pool`, which
Janus keeps only for checkpoint compatibility), so a pretrained tower carries meaningful pool
weights like the released ones. The text tower is a small bidirectional transformer kept
here in the training code (the LLM's blocks with RoPE and SwiGLU, mean-pooled over the
caption, then a linear map to the image width): only the vision tower is exported. With
gradient accumulation the negatives of a pair are those of its own micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import LLMConfig, VisionConfig
from openjanus.model.llm import Block as LLMBlock
from openjanus.model.llm import RMSNorm, rope_cos_sin
from openjanus.model.siglip import AttentionPoolLatent, SigLIPViT
from openjanus.train.objectives import Metrics, Objective, StepResult
from openjanus.train.parallel import checkpoint_blocks


def attention_pool(pool: AttentionPoolLatent, x: Tensor, n_heads: int) -> Tensor:
    """SigLIP's attention-pooling head: one learned query attends over the patch tokens, then a
    residual MLP. x [N, T, D] -> [N, D]."""
    n, t, d = x.shape
    hd = d // n_heads
    q = pool.q(pool.latent.expand(n, -1, -1)).view(n, 1, n_heads, hd).transpose(1, 2)  # [N, H, 1, hd]
    kv = pool.kv(x).view(n, t, 2, n_heads, hd).permute(2, 0, 3, 1, 4)  # [2, N, H, T, hd]
    out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [N, H, 1, hd]
    out = pool.proj(out.transpose(1, 2).reshape(n, 1, d))
    out = out + pool.mlp(pool.norm(out))
    return out[:, 0]


class TextTower(nn.Module):
    """Caption encoder for SigLIP pretraining: embeddings, bidirectional LLM blocks (RoPE,
    SwiGLU), final RMSNorm, mean over the caption's tokens, linear map to `out_dim`."""

    def __init__(self, cfg: LLMConfig, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LLMBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, out_dim)

    def forward(self, ids: Tensor, valid: Tensor) -> Tensor:
        """ids, valid: [N, T] (valid False on padding) -> [N, out_dim]."""
        h = self.embed(ids)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        # Every token sees the caption's real tokens; a padding query also sees itself, so no
        # attention row is empty (an all-masked row would give NaN).
        mask = ((valid[:, None, :] & valid[:, :, None]) | eye)[:, None]  # [N, 1, T, T]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, i, None, None)
        h = self.norm(h)
        w = valid.to(h.dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1).clamp_min(1.0)  # [N, dim]
        return self.proj(pooled)


class SigLIPPair(nn.Module):
    """Image tower (the Janus understanding encoder) + caption tower + temperature and bias."""

    def __init__(self, vision: VisionConfig, vocab_size: int, text_layers: int = 2, caption_len: int = 32) -> None:
        super().__init__()
        self.und_encoder = SigLIPViT(vision)
        text_cfg = LLMConfig(vocab_size=vocab_size, dim=vision.dim, n_layers=text_layers, n_heads=vision.n_heads,
                             n_kv_heads=vision.n_heads, ffn_dim=vision.mlp_dim, norm_eps=vision.norm_eps,
                             max_seq_len=caption_len)
        self.text = TextTower(text_cfg, vision.dim)
        self.log_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, pixel_values: Tensor) -> Tensor:
        """[N, 3, S, S] -> unit-length [N, dim]."""
        tokens = self.und_encoder(pixel_values)
        return F.normalize(attention_pool(self.und_encoder.attn_pool, tokens, self.und_encoder.cfg.n_heads), dim=-1)

    def embed_captions(self, ids: Tensor, valid: Tensor) -> Tensor:
        """[N, T] -> unit-length [N, dim]."""
        return F.normalize(self.text(ids, valid), dim=-1)


@dataclass
class CaptionBatch:
    pixel_values: Tensor  # [N, 3, S, S] understanding-preprocessed images
    caption_ids: Tensor  # [N, T] long, padded
    caption_mask: Tensor  # [N, T] bool, False on padding

    def to(self, device: torch.device | str) -> CaptionBatch:
        return CaptionBatch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


class SigLIPObjective(Objective):
    """SigLIP's pairwise sigmoid loss on image-caption pairs."""

    task = "siglip"

    def count(self, batch: CaptionBatch) -> int:
        return batch.pixel_values.shape[0]

    def tokens(self, batch: CaptionBatch) -> int:
        return batch.pixel_values.shape[0] * self.model.und_encoder.cfg.num_patches + int(batch.caption_mask.sum())

    def forward(self, batch: CaptionBatch, loss_denominator: float) -> StepResult:  # type: ignore[override]
        model: SigLIPPair = self.model  # type: ignore[assignment]
        img = model.embed_images(batch.pixel_values).float()
        txt = model.embed_captions(batch.caption_ids, batch.caption_mask).float()
        logits = img @ txt.t() * model.log_t.float().exp() + model.bias.float()  # [N images, N captions]
        n = logits.shape[0]
        signs = 2.0 * torch.eye(n, device=logits.device) - 1.0  # +1 on matching pairs, -1 elsewhere
        total = -F.logsigmoid(signs * logits).sum()
        with torch.no_grad():
            hits = (logits.argmax(dim=1) == torch.arange(n, device=logits.device)).sum()
        metrics: Metrics = {"loss": (total.detach(), float(n)), "siglip/i2t_acc": (hits, float(n))}
        return StepResult(total / loss_denominator, metrics)

    def shard_units(self) -> list[nn.Module]:
        m = self.model
        return [*m.und_encoder.blocks, m.text.embed, *m.text.layers]

    def compile_units(self) -> list[nn.Module]:
        return [*self.model.und_encoder.blocks, *self.model.text.layers]

    def enable_activation_checkpointing(self) -> None:
        checkpoint_blocks([*self.model.und_encoder.blocks, *self.model.text.layers])

    def log_metrics(self) -> dict[str, float]:
        return {"siglip/t": float(self.model.log_t.detach().float().exp()),
                "siglip/b": float(self.model.bias.detach().float())}


__all__ = ["SigLIPObjective", "SigLIPPair", "TextTower", "CaptionBatch", "attention_pool"]
