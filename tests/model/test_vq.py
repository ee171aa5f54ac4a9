"""VQ tokenizer: official key layout and size, quantizer maths, round trips, dtypes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import official_key_shapes

from openjanus.config import JanusConfig, VQConfig
from openjanus.model.vq import AttnBlock, Downsample, Upsample, VQModel

PREFIX = "gen_vision_model."


def _official_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    """The official Janus-Pro-1B key list under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in official_key_shapes("janus-pro-1b").items() if k.startswith(prefix)}


def _tiny() -> VQConfig:
    return JanusConfig.from_name("tiny").vq


def _model(seed: int = 0) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(_tiny()).eval()


def test_state_dict_matches_official_keys_and_shapes():
    with torch.device("meta"):
        model = VQModel(VQConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_shapes(PREFIX)
    assert len(official) == 344
    assert ours == official


def test_element_count_matches_spec():
    with torch.device("meta"):
        model = VQModel(VQConfig())
    # SPEC 1.5 table: parameters plus the 65,536-entry `codebook_used` buffer.
    assert sum(t.numel() for t in model.state_dict().values()) == 71_948_939
    assert model.quantize.codebook_used.shape == (65536,)
    assert "quantize.codebook_used" in model.state_dict()


def test_small_config_keeps_official_structure():
    cfg = JanusConfig.from_name("small").vq  # 4 levels, channel_mult (1, 2, 2, 4)
    with torch.device("meta"):
        model = VQModel(cfg)
    keys = model.state_dict().keys()
    last = len(cfg.channel_mult) - 1
    attn_levels = {(k.split(".")[0], int(k.split(".")[2])) for k in keys if ".attn." in k}
    assert attn_levels == {("encoder", last), ("decoder", 0)}
    assert f"encoder.conv_blocks.{last}.downsample.conv.weight" not in keys
    assert f"decoder.conv_blocks.{last}.upsample.conv.weight" not in keys
    assert model.quantize.codebook_used.shape == (65536,)  # LlamaGen's fixed window


def test_encode_decode_shapes():
    model = _model()
    cfg = model.cfg
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        codes = model.encode(images)
        assert codes.shape == (2, cfg.num_tokens) and codes.dtype == torch.int64
        assert 0 <= int(codes.min()) and int(codes.max()) < cfg.codebook_size
        recon = model.decode_codes(codes)
        assert recon.shape == images.shape
        recon2, losses, codes2 = model(images)
    torch.testing.assert_close(recon2, recon)
    assert torch.equal(codes2, codes)
    assert set(losses) == {"codebook", "commitment"}


def test_encode_picks_max_cosine_code_in_raster_order():
    model = _model()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = model.encode(images)
        z = model.encode_latents(images).double()  # [B, C, g, g]
    grid = z.shape[-1]
    e = model.quantize.embedding.weight.double()
    cos = torch.einsum("bchw,nc->bhwn", F.normalize(z, dim=1), F.normalize(e, dim=1))
    expected = cos.argmax(-1)  # [B, g, g]
    # token t sits at row t // grid, column t % grid
    assert torch.equal(codes.view(2, grid, grid), expected)


def test_quantizer_values_losses_and_codes():
    torch.manual_seed(1)
    model = _model()
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # rows of unequal length: normalisation matters
    z = torch.randn(3, 8, 5, 4)  # non-square grid: checks raster order with width 4
    z_q, codes, losses = model.quantize_latents(z)

    zn = F.normalize(z.double().permute(0, 2, 3, 1), dim=-1)  # [B, h, w, C]
    en = F.normalize(model.quantize.embedding.weight.double(), dim=-1)
    expected = (zn @ en.T).argmax(-1)  # [B, h, w]
    assert torch.equal(codes, expected.reshape(3, 20))
    torch.testing.assert_close(z_q.double(), en[expected].permute(0, 3, 1, 2))
    mse = ((en[expected] - zn) ** 2).mean()
    torch.testing.assert_close(losses["codebook"].double(), mse)
    torch.testing.assert_close(losses["commitment"].double(), model.cfg.commit_beta * mse)


def test_straight_through_gradient():
    model = _model()
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    g = torch.randn(2, 8, 4, 4)
    z_q, _, _ = model.quantize_latents(z)
    (z_q * g).sum().backward()
    # The quantizer passes the gradient through unchanged to the normalised latents.
    z2 = z.detach().clone().requires_grad_(True)
    (F.normalize(z2, dim=1) * g).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    # and the codebook receives nothing from the reconstruction path
    assert model.quantize.embedding.weight.grad is None


def test_reconstruction_gradient_reaches_encoder_and_losses_reach_codebook():
    model = _model().train()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, losses, _ = model(images)
    recon.square().mean().backward(retain_graph=True)
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None
    losses["codebook"].backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0


def test_training_records_codebook_usage():
    model = _model().train()
    with torch.no_grad():
        _, _, codes = model(torch.rand(2, 3, 32, 32) * 2 - 1)
    used = model.quantize.codebook_used
    assert torch.equal(used[-codes.numel() :], codes.flatten().float())
    assert used[: -codes.numel()].abs().sum() == 0
    model.eval()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    assert torch.equal(model.quantize.codebook_used, used)  # eval does not record


@pytest.mark.parametrize(("dtype", "atol"), [(torch.bfloat16, 0.15), (torch.float16, 0.03)])
def test_decode_low_precision(dtype, atol):
    model = _model()
    codes = torch.randint(0, model.cfg.codebook_size, (2, model.cfg.num_tokens))
    with torch.no_grad():
        ref = model.decode_codes(codes)
        out = copy.deepcopy(model).to(dtype).decode_codes(codes)
    assert out.dtype == dtype
    # Loose: this only checks the low-precision path runs and computes the same function.
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0.05)


def test_upsample_is_nearest_and_keeps_dtype():
    torch.manual_seed(0)
    up = Upsample(4)
    x = torch.randn(1, 4, 3, 5)
    expected = up.conv(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(up(x), expected, rtol=0, atol=0)
    for dtype in (torch.bfloat16, torch.float16):
        assert up.to(dtype)(x.to(dtype)).dtype == dtype


def test_downsample_pads_right_and_bottom():
    torch.manual_seed(0)
    down = Downsample(4)
    x = torch.randn(1, 4, 8, 8)
    w, b = down.conv.weight, down.conv.bias
    out = down(x)
    assert out.shape == (1, 4, 4, 4)
    torch.testing.assert_close(out, F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, stride=2), rtol=0, atol=0)
    assert not torch.allclose(out, F.conv2d(F.pad(x, (1, 0, 1, 0)), w, b, stride=2))


def test_attn_block_matches_reference():
    torch.manual_seed(0)
    block = AttnBlock(32, 8).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()
    x = torch.randn(2, 32, 3, 4, dtype=torch.float64)

    def conv1x1(m, t):
        return torch.einsum("oc,bchw->bohw", m.weight[:, :, 0, 0], t) + m.bias[:, None, None]

    h = F.group_norm(x, 8, block.norm.weight, block.norm.bias, eps=1e-6)
    q, k, v = (conv1x1(m, h).flatten(2) for m in (block.q, block.k, block.v))  # [B, C, HW]
    attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 32**0.5, dim=-1)  # over keys j
    out = torch.einsum("bij,bcj->bci", attn, v).view_as(x)
    expected = x + conv1x1(block.proj_out, out)
    # float64 on both sides: only summation order differs, so any slip would show.
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_decode_codes_rejects_non_square():
    model = _model()
    with pytest.raises(ValueError, match="63"):
        model.decode_codes(torch.zeros(1, 63, dtype=torch.long))
