"""The LlamaGen VQ-16 image tokenizer (`gen_tokenizer`): encoder, quantizer, decoder.

images [B, 3, H, W] in [-1, 1] -> encoder -> quant_conv -> L2-normalised nearest code
-> codes [B, (H/16)*(W/16)] in raster order, and back: codes -> unit codebook rows
-> post_quant_conv -> decoder -> images. Submodule names reproduce the official state
dict (``gen_vision_model.*``) so checkpoints load without renaming.

One deliberate deviation from the official code, in `Upsample`: it interpolates in fp32
and casts back to the *input* dtype, where the official code always casts to bf16 (which
crashes fp16 models). For fp32 and bf16 inputs the result is bit-identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import VQConfig

# LlamaGen registers a rolling window of this many recent code ids for its usage metric,
# whatever the codebook size; it is a persistent buffer, so official checkpoints carry it.
CODEBOOK_USAGE_WINDOW = 65536


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    # Written out rather than F.silu so the rounding matches the reference op for op.
    return x * torch.sigmoid(x)


# Elements per chunk of an in-place swish: small enough (1 MB in fp32) that the sigmoid
# temporary is served from the allocator's cache instead of fresh, page-faulting memory.
_SWISH_CHUNK = 1 << 18


def _swish_(x: Tensor) -> Tensor:
    """`_swish` overwriting `x` (a fresh intermediate the caller owns) when no gradient is
    needed. Full-size decoder activations are ~75 MB, and every fresh tensor of that size
    costs page faults.

    Bit-identical to `_swish`: CPU kernels round differently in their vector body and their
    scalar tail, so chunks are used only where chunks and the whole tensor split (across
    threads too) at multiples of the vector width, i.e. all elements take the vector path.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _swish(x)
    n = x.numel()
    if x.is_contiguous() and n % _SWISH_CHUNK == 0 and n % (64 * torch.get_num_threads()) == 0:
        flat = x.view(-1)
        for i in range(0, n, _SWISH_CHUNK):
            part = flat[i:i + _SWISH_CHUNK]
            part.mul_(torch.sigmoid(part))
    else:
        x.mul_(torch.sigmoid(x))
    return x


class ResnetBlock(nn.Module):
    # Dropout is 0 in VQ-16, so it is left out (it holds no weights).
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish_(self.norm1(x)))
        h = self.conv2(_swish_(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        if torch.is_grad_enabled() and (h.requires_grad or x.requires_grad):
            return x + h
        return h.add_(x)  # h is ours; x + h == h + x exactly


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, with c channels per token."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(ch, groups)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # [B, HW, C]
        k = k.reshape(b, c, hh * ww)  # [B, C, HW]
        v = v.reshape(b, c, hh * ww)  # [B, C, HW]
        # Same op order as the reference (bmm, then scale, then softmax over keys) so that
        # low-precision runs round identically.
        w = torch.bmm(q, k) * c**-0.5  # [B, HW queries, HW keys]
        w = F.softmax(w, dim=2)
        h = torch.bmm(v, w.permute(0, 2, 1))  # [B, C, HW queries]
        h = h.reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric padding (right and bottom only) halves even sizes exactly; the
        # weights were trained with it, so symmetric padding would shift every feature.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # The reference interpolates in fp32 and then casts to bf16 unconditionally, which
        # makes fp16 models fail in the next conv. Nearest-neighbour copying is exact, so
        # casting back to the input dtype matches the reference for fp32 and bf16 inputs.
        x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype)
        return self.conv(x)


class Level(nn.Module):
    """One resolution level: ResnetBlocks, each followed by an AttnBlock when the level has
    attention, then an optional down- or upsampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        n_res: int,
        groups: int,
        *,
        attention: bool = False,
        downsample: bool = False,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups) for i in range(n_res)
        )
        self.attn = nn.ModuleList(AttnBlock(out_ch, groups) for _ in range(n_res if attention else 0))
        self.downsample = Downsample(out_ch) if downsample else None
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _level_channels(cfg: VQConfig) -> list[int]:
    return [cfg.base_channels * m for m in cfg.channel_mult]


def _mid(ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(ch, ch, groups), AttnBlock(ch, groups), ResnetBlock(ch, ch, groups))


class Encoder(nn.Module):
    """images [B, 3, H, W] -> latents [B, z_channels, H/f, W/f], f = 2^(levels-1).

    Levels run from full to lowest resolution; only the lowest has attention, and every
    level but the lowest ends with a Downsample.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        chans = _level_channels(cfg)
        ins = [cfg.base_channels, *chans[:-1]]
        last = len(chans) - 1
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(3, cfg.base_channels, 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            Level(ins[i], chans[i], cfg.num_res_blocks, g, attention=i == last, downsample=i != last)
            for i in range(len(chans))
        )
        self.mid = _mid(chans[-1], g)
        self.norm_out = _norm(chans[-1], g)
        self.conv_out = nn.Conv2d(chans[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_swish_(self.norm_out(h)))


class Decoder(nn.Module):
    """latents [B, z_channels, h, w] -> images [B, 3, h*f, w*f].

    Mirrors the encoder from the lowest resolution up, with one more ResnetBlock per level;
    only the first (lowest-resolution) level has attention, every level but the last ends
    with an Upsample.
    """

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        chans = _level_channels(cfg)[::-1]  # decoder level i runs at the i-th lowest resolution
        ins = [chans[0], *chans[:-1]]
        last = len(chans) - 1
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[0], 3, padding=1)
        self.mid = _mid(chans[0], g)
        self.conv_blocks = nn.ModuleList(
            Level(ins[i], chans[i], cfg.num_res_blocks + 1, g, attention=i == 0, upsample=i != last)
            for i in range(len(chans))
        )
        self.norm_out = _norm(chans[-1], g)
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(_swish_(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup with L2-normalised latents and codebook (i.e. max cosine)."""

    def __init__(self, codebook_size: int, codebook_dim: int, commit_beta: float) -> None:
        super().__init__()
        self.commit_beta = commit_beta
        # Registered before `embedding` so the state-dict order matches the official one.
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USAGE_WINDOW))
        self.embedding = nn.Embedding(codebook_size, codebook_dim)
        with torch.no_grad():
            # LlamaGen's init: small uniform rows, then unit length.
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            self.embedding.weight.copy_(F.normalize(self.embedding.weight, p=2, dim=-1))

    def codebook(self) -> Tensor:
        """The unit-length code vectors [codebook_size, codebook_dim] actually used."""
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def nearest(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latents [B, C, h, w] -> (unit latents [B, h, w, C], codes [B, h*w], raster order)."""
        b, c, hh, ww = z.shape
        z = F.normalize(z.permute(0, 2, 3, 1), p=2, dim=-1)  # [B, h, w, C]
        flat = z.reshape(-1, c)  # [B*h*w, C]
        e = self.codebook()
        # Squared distance written as the reference does (not 2 - 2cos): the argmin is the
        # max-cosine code either way, but this form breaks near-ties the same way it does.
        d = flat.pow(2).sum(dim=1, keepdim=True) + e.pow(2).sum(dim=1) - 2 * flat @ e.t()
        codes = d.argmin(dim=1)  # [B*h*w]
        return z, codes.view(b, hh * ww)

    def lookup(self, codes: Tensor, grid_h: int, grid_w: int) -> Tensor:
        """codes [B, h*w] (raster order) -> unit code vectors [B, C, h, w]."""
        b = codes.shape[0]
        z_q = F.embedding(codes.long(), self.codebook())  # [B, h*w, C]
        return z_q.view(b, grid_h, grid_w, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Latents [B, C, h, w] -> (z_q [B, C, h, w] with straight-through gradient, codes
        [B, h*w], {"codebook": ..., "commitment": beta * ...})."""
        z, codes = self.nearest(z)  # z: [B, h, w, C], unit length
        z_q = self.codebook()[codes.flatten()].view(z.shape)  # [B, h, w, C]
        losses = {
            # Pulls codes towards the (fixed) encoder outputs.
            "codebook": torch.mean((z_q - z.detach()) ** 2),
            # Keeps the encoder close to its chosen codes.
            "commitment": self.commit_beta * torch.mean((z_q.detach() - z) ** 2),
        }
        if self.training:
            self._record_usage(codes)
        # Straight-through: the forward value is the code, the gradient goes to z unchanged.
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2), codes, losses

    @torch.no_grad()
    def _record_usage(self, codes: Tensor) -> None:
        # Shift the rolling window left and append the newest ids (the reference fails when a
        # batch has more ids than the window; we keep the newest ones instead).
        new = codes.flatten()[-CODEBOOK_USAGE_WINDOW:].to(self.codebook_used.dtype)
        self.codebook_used.copy_(torch.cat([self.codebook_used[new.numel() :], new]))

    def codebook_usage(self) -> float:
        """Fraction of the codebook seen in the usage window (a host sync; for logging)."""
        return torch.unique(self.codebook_used).numel() / self.embedding.num_embeddings


class VQModel(nn.Module):
    """LlamaGen VQ tokenizer: images <-> grids of codebook ids."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.codebook_dim, cfg.commit_beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)

    def encode_latents(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> pre-quantisation latents [B, codebook_dim, H/f, W/f]."""
        return self.quant_conv(self.encoder(images))

    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [-1, 1] -> codes [B, (H/f)*(W/f)] int64, raster order
        (token t is row t // grid, column t % grid)."""
        _, codes = self.quantize.nearest(self.encode_latents(images))
        return codes

    def quantize_latents(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Latents [B, codebook_dim, h, w] -> (z_q [B, codebook_dim, h, w], codes [B, h*w],
        losses). z_q carries the straight-through gradient to z; losses holds "codebook" and
        "commitment" (already scaled by commit_beta), both on L2-normalised vectors. In
        training mode the ids are also recorded in `quantize.codebook_used`."""
        return self.quantize(z)

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latents [B, codebook_dim, h, w] -> images [B, 3, h*f, w*f], nominally [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def decode_codes(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """codes [B, N] (raster order over a grid of (rows, columns) = `grid`, square when None)
        -> images [B, 3, rows*f, columns*f]. The decoder is convolutional (its one attention block
        spans the whole grid), so a grid larger than the training size decodes in one pass."""
        if codes.ndim != 2:
            raise ValueError(f"codes must be [batch, tokens], got shape {tuple(codes.shape)}")
        n = codes.shape[1]
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} codes per image do not form a square grid")
            grid = (side, side)
        if grid[0] * grid[1] != n:
            raise ValueError(f"{n} codes per image do not fill a {grid[0]} x {grid[1]} grid")
        return self.decode(self.quantize.lookup(codes, *grid))

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """VQ training step: images [B, 3, H, W] -> (reconstruction [B, 3, H, W],
        {"codebook", "commitment"} losses, codes [B, (H/f)*(W/f)])."""
        z_q, codes, losses = self.quantize_latents(self.encode_latents(images))
        return self.decode(z_q), losses, codes
