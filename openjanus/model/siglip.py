"""The SigLIP ViT understanding encoder (`und_encoder`): SigLIP-L/16 at 384 for Janus.

pixel_values [N, 3, S, S] -> patch embedding + learned positions -> `depth` pre-LN blocks
-> final LayerNorm -> [N, (S/patch)^2, dim]. No class token, no pooling: the LLM sees every
patch token. Submodule names reproduce the official state dict
(``vision_model.vision_tower.*``) so checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import VisionConfig


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # [N, dim, grid, grid]
        return x.flatten(2).transpose(1, 2)  # [N, grid*grid, dim], raster order


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.n_heads, c // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, T, head_dim]
        x = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(head_dim), no mask
        x = x.transpose(1, 2).reshape(b, t, c)  # [N, T, dim]
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, not the tanh approximation


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttentionPoolLatent(nn.Module):
    """Weights of SigLIP's attention-pooling head, held only so official checkpoints load.

    Janus builds the tower without its head, so this module is never executed (it has no
    forward) and its weights never affect any output.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_dim)


class SigLIPViT(nn.Module):
    """SigLIP vision transformer returning final-LayerNorm'd patch tokens."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches, cfg.dim) * 0.02)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.dim)
        # A ModuleList (not Sequential) so activation checkpointing / FSDP can wrap each block.
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn_pool = AttentionPoolLatent(cfg)  # checkpoint compatibility only; never run

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values [N, 3, S, S] (already normalised) -> features [N, num_patches, dim]."""
        s = self.cfg.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"SigLIP expects images of shape [N, 3, {s}, {s}], got {tuple(pixel_values.shape)}"
            )
        # Learned positions are tied to one grid size, hence the strict size check above.
        x = self.patch_embed(pixel_values) + self.pos_embed  # [N, num_patches, dim]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
