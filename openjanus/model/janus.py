"""Janus: two decoupled visual paths around one LLM.

Understanding: image -> `und_encoder` (SigLIP) -> `und_aligner` -> LLM sequence.
Generation: image token ids -> `gen_embed` -> `gen_aligner` -> LLM sequence, and the LLM's
hidden state -> `gen_head` -> logits over the VQ codebook; `gen_tokenizer` (VQ) turns
images into ids and ids back into images.

There is no `forward` that guesses a mode: callers pick the entry point they need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import JanusConfig
from openjanus.model.linear import Linear
from openjanus.model.llm import LLM
from openjanus.model.siglip import SigLIPViT
from openjanus.model.vq import VQModel


class Aligner(nn.Module):
    """Two-layer MLP adaptor with exact GELU (`mlp_gelu`, depth 2)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, out_dim)
        self.fc2 = Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GenHead(nn.Module):
    """Image-token head: hidden -> Linear -> exact GELU -> Linear -> codebook logits."""

    def __init__(self, dim: int, hidden_dim: int, n_codes: int) -> None:
        super().__init__()
        self.proj = Linear(dim, hidden_dim)
        self.out = Linear(hidden_dim, n_codes)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(F.gelu(self.proj(h)))


class Janus(nn.Module):
    def __init__(self, cfg: JanusConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.und_encoder = SigLIPViT(cfg.vision)
        self.und_aligner = Aligner(cfg.vision.dim, cfg.llm.dim)
        self.gen_tokenizer = VQModel(cfg.vq)
        self.gen_aligner = Aligner(cfg.vq.codebook_dim, cfg.llm.dim)
        self.gen_head = GenHead(cfg.llm.dim, cfg.gen_head_dim, cfg.vq.codebook_size)
        # The generation path's own input table; it is NOT the VQ codebook (used raw, never normalised).
        self.gen_embed = nn.Embedding(cfg.vq.codebook_size, cfg.vq.codebook_dim)
        self.llm = LLM(cfg.llm)

    # --- inputs -----------------------------------------------------------------------------

    def encode_und_images(self, pixel_values: Tensor) -> Tensor:
        """[N, 3, S, S] preprocessed images -> [N, num_und_tokens, llm.dim] LLM-space features."""
        return self.und_aligner(self.und_encoder(pixel_values))

    def embed_text(self, ids: Tensor) -> Tensor:
        return self.llm.embed(ids)

    def embed_image_tokens(self, codes: Tensor) -> Tensor:
        """VQ code ids [...] -> LLM-space embeddings [..., llm.dim]."""
        return self.gen_aligner(self.gen_embed(codes))

    def embed_chat(self, input_ids: Tensor, image_mask: Tensor, pixel_values: Tensor | None) -> Tensor:
        """Text embeddings with understanding-image features spliced in.

        input_ids, image_mask: [B, T]; pixel_values: [N, 3, S, S] for the N images of the batch
        in order. The features fill the `image_mask` positions row by row (order-preserving),
        which is exactly the official scatter. The caller's tensors are not modified.
        """
        h = self.embed_text(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            n_slots = int(image_mask.sum())
            if n_slots:
                raise ValueError(f"{n_slots} image positions but no images were given")
            return h
        return self.splice_und_features(h, image_mask, self.encode_und_images(pixel_values.to(h.dtype)))

    def splice_und_features(self, h: Tensor, image_mask: Tensor, feats: Tensor) -> Tensor:
        """A copy of embeddings `h` [B, T, D] with understanding features `feats` [N, P, D]
        written, in order, at the `image_mask` positions (the official scatter)."""
        n_slots = int(image_mask.sum())
        if feats.shape[0] * feats.shape[1] != n_slots:
            raise ValueError(
                f"{feats.shape[0]} images x {feats.shape[1]} tokens do not fill {n_slots} image positions"
            )
        h = h.clone()
        h[image_mask] = feats.reshape(-1, feats.shape[-1])
        return h

    # --- outputs ----------------------------------------------------------------------------

    def text_logits(self, hidden: Tensor) -> Tensor:
        return self.llm.lm_head(hidden)

    def image_logits(self, hidden: Tensor) -> Tensor:
        return self.gen_head(hidden)

    @torch.no_grad()
    def decode_image_tokens(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """[P, rows * columns] code ids (raster order over `grid` = (rows, columns); the native
        square when None) -> images [P, 3, H, W] in about [-1, 1]."""
        return self.gen_tokenizer.decode_codes(codes, grid)

    def param_counts(self) -> dict[str, int]:
        """Elements per part (parameters plus persistent buffers, as in the checkpoint)."""
        counts = {}
        for name, module in self.named_children():
            counts[name] = sum(t.numel() for t in module.state_dict(keep_vars=True).values())
        return counts
