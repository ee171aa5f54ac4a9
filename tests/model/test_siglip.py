"""SigLIP encoder: official key layout and size, and a forward pass checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import official_key_shapes

from openjanus.config import JanusConfig, VisionConfig
from openjanus.model.siglip import SigLIPViT

PREFIX = "vision_model.vision_tower."


def _official_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """The official Janus-Pro-1B key list under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in official_key_shapes("janus-pro-1b").items() if k.startswith(prefix)}


def _tiny_model(seed: int = 0) -> SigLIPViT:
    torch.manual_seed(seed)
    model = SigLIPViT(JanusConfig.from_name("tiny").vision).double().eval()
    with torch.no_grad():
        # Non-trivial values everywhere, LayerNorm affines included, so every term is exercised.
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_state_dict_matches_official_keys_and_shapes():
    with torch.device("meta"):
        model = SigLIPViT(VisionConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_shapes(PREFIX)
    assert len(official) == 306
    assert ours == official


def test_element_count_matches_spec():
    with torch.device("meta"):
        model = SigLIPViT(VisionConfig())
    assert sum(t.numel() for t in model.state_dict().values()) == 316_283_904


def test_depth_follows_select_layer():
    with torch.device("meta"):
        assert len(SigLIPViT(VisionConfig()).blocks) == 24
        assert len(SigLIPViT(VisionConfig(select_layer=-2)).blocks) == 23


def _reference_forward(m: SigLIPViT, x: torch.Tensor) -> torch.Tensor:
    """One forward pass written out with plain tensor ops, following SPEC 1.1."""
    cfg = m.cfg
    d, heads, eps = cfg.dim, cfg.n_heads, cfg.norm_eps
    hd = d // heads
    n = x.shape[0]
    h = F.conv2d(x, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=cfg.patch_size)
    h = h.flatten(2).transpose(1, 2) + m.pos_embed  # [N, T, D]
    t = h.shape[1]
    for blk in m.blocks:
        y = F.layer_norm(h, (d,), blk.norm1.weight, blk.norm1.bias, eps)
        q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(d, dim=-1)
        q, k, v = (a.view(n, t, heads, hd).transpose(1, 2) for a in (q, k, v))  # [N, H, T, hd]
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(n, t, d)
        h = h + o @ blk.attn.proj.weight.T + blk.attn.proj.bias
        y = F.layer_norm(h, (d,), blk.norm2.weight, blk.norm2.bias, eps)
        y = y @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact GELU
        h = h + y @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    return F.layer_norm(h, (d,), m.norm.weight, m.norm.bias, eps)


def test_forward_matches_reference():
    model = _tiny_model()
    cfg = model.cfg
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, dtype=torch.float64)
    out = model(x)
    assert out.shape == (2, cfg.num_patches, cfg.dim)
    # Both sides run in float64 and differ only in summation order (~1e-15 relative), so a
    # tight tolerance holds; a real slip (tanh GELU, wrong scale or eps, head split, missing
    # final norm) moves outputs by far more than 1e-9.
    torch.testing.assert_close(out, _reference_forward(model, x), rtol=1e-9, atol=1e-9)


def test_attn_pool_is_never_run():
    model = _tiny_model()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        for p in model.attn_pool.parameters():
            p.fill_(float("nan"))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_wrong_image_size_is_rejected():
    model = _tiny_model()
    with pytest.raises(ValueError, match=r"32, 32.*48, 48"):
        model(torch.zeros(1, 3, 48, 48, dtype=torch.float64))
