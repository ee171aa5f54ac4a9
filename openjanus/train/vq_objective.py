"""Pretraining the VQ tokenizer from scratch: reconstruction (L2 as LlamaGen, or L1) + codebook
+ commitment losses on the L2-normalised codebook that `openjanus.model.vq` implements.

Logs codebook usage (`quantize.codebook_used`, the rolling window of recent ids) and
reconstruction PSNR. No adversarial or perceptual term: LPIPS needs a downloaded VGG and a GAN
needs a second optimiser and discriminator schedule, which a from-scratch small model does not
need to learn usable codes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import ConfigError
from openjanus.model.vq import VQModel
from openjanus.train.objectives import Metrics, Objective, StepResult


class VQObjective(Objective):
    """Reconstruction + codebook + commitment loss of the VQ tokenizer on images in [-1, 1]."""

    task = "vq"

    def __init__(self, model: VQModel, recon_loss: str = "l2", restart_every: int = 0) -> None:
        super().__init__(model)
        if recon_loss not in ("l1", "l2"):
            raise ConfigError(f"VQ reconstruction loss {recon_loss!r} must be 'l1' or 'l2'")
        if restart_every < 0:
            raise ConfigError(f"VQ restart_every {restart_every} must be >= 0 (0: never)")
        if restart_every and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Each rank would re-seed different codes from its own batch and the replicas would drift.
            raise ConfigError("VQ dead-code restarts work in a single process only; set parts.vq_restart_every = 0")
        self.recon_loss = recon_loss
        # Dead-code restart: every `restart_every` micro-batches, codes no latent picked in that
        # window are moved onto latents of the current batch (applied before the next forward,
        # since the codebook is still in the autograd graph of this one).
        self.restart_every = restart_every
        self.restarts = 0  # codes re-seeded so far
        self._hits = torch.zeros(model.cfg.codebook_size, dtype=torch.long)
        self._seen = 0
        self._pending: tuple[Tensor, Tensor] | None = None

    def count(self, images: Tensor) -> int:
        return images.shape[0]

    def tokens(self, images: Tensor) -> int:
        return images.shape[0] * self.model.cfg.num_tokens

    def forward(self, images: Tensor, loss_denominator: float) -> StepResult:  # type: ignore[override]
        model: VQModel = self.model  # type: ignore[assignment]
        self._apply_restart()
        z = model.encode_latents(images)
        z_q, codes, losses = model.quantize_latents(z)
        recon = model.decode(z_q)
        if self.restart_every and model.training:
            self._track(codes, z)
        diff = recon.float() - images.float()
        mse = diff.pow(2).mean(dim=(1, 2, 3))  # [N]
        rec = mse if self.recon_loss == "l2" else diff.abs().mean(dim=(1, 2, 3))
        n = images.shape[0]
        # Per image: reconstruction + codebook + commitment (the latter two already batch means).
        total = rec.sum() + n * (losses["codebook"] + losses["commitment"])
        with torch.no_grad():
            clipped = (recon.detach().float().clamp(-1, 1) - images.float()).pow(2).mean(dim=(1, 2, 3))
            # Images span [-1, 1], a peak-to-peak range of 2, so PSNR = 10 log10(2^2 / mse).
            psnr = 10.0 * torch.log10(4.0 / clipped.clamp_min(1e-10))
        metrics: Metrics = {  # tensors on the device: read on log steps only
            "loss": (total.detach(), float(n)),
            "vq/recon": (rec.sum().detach(), float(n)),
            "vq/codebook": (losses["codebook"].detach() * n, float(n)),
            "vq/commitment": (losses["commitment"].detach() * n, float(n)),
            "vq/psnr": (psnr.sum(), float(n)),
        }
        return StepResult(total / loss_denominator, metrics)

    def compile_units(self) -> list[nn.Module]:
        return [self.model.encoder, self.model.decoder]

    def log_metrics(self) -> dict[str, float]:
        out = {"vq/codebook_usage": self.model.quantize.codebook_usage()}
        if self.restart_every:
            out["vq/restarted_codes"] = float(self.restarts)
        return out

    @torch.no_grad()
    def _track(self, codes: Tensor, z: Tensor) -> None:
        self._hits += torch.bincount(codes.flatten().cpu(), minlength=self._hits.numel())
        self._seen += 1
        if self._seen < self.restart_every:
            return
        dead = (self._hits == 0).nonzero().flatten()
        self._hits.zero_()
        self._seen = 0
        if dead.numel() == 0:
            return
        lat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        pick = torch.randint(lat.shape[0], (dead.numel(),), device=lat.device)
        # A little noise so that several codes seeded from one latent do not stay identical.
        new = F.normalize(F.normalize(lat[pick], dim=-1) + 0.01 * torch.randn_like(lat[pick]), dim=-1)
        self._pending = (dead, new)

    @torch.no_grad()
    def _apply_restart(self) -> None:
        if self._pending is None:
            return
        dead, new = self._pending
        weight = self.model.quantize.embedding.weight
        weight[dead.to(weight.device)] = new.to(weight.device, weight.dtype)
        self.restarts += dead.numel()
        self._pending = None


__all__ = ["VQObjective"]
