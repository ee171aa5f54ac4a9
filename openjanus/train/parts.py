"""Pretraining the parts from scratch: the VQ tokenizer and the SigLIP understanding encoder
(text pretraining of the LLM is `objectives.TextObjective`), their data, and part files.

VQ tokenizer (`VQObjective`): reconstruction (L2 as LlamaGen, or L1) + codebook + commitment
losses on the L2-normalised codebook that `openjanus.model.vq` implements; logs codebook usage
(`quantize.codebook_used`, the rolling window of recent ids) and reconstruction PSNR. No
adversarial or perceptual term: LPIPS needs a downloaded VGG and a GAN needs a second
optimiser and discriminator schedule, which a from-scratch small model does not need to learn
usable codes.

SigLIP encoder (`SigLIPObjective` on a `SigLIPPair`): the pairwise sigmoid loss of the SigLIP
paper, -1/|B| sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)), z_ij = 1 on matching pairs and -1
elsewhere, with learnable temperature t = exp(log_t) (log_t starts at log 10) and bias b
(starts at -10). The image embedding is SigLIP's own attention-pooling head (`attn_pool`, which
Janus keeps only for checkpoint compatibility), so a pretrained tower carries meaningful pool
weights like the released ones. The text tower is a small bidirectional transformer kept
here in the training code (the LLM's blocks with RoPE and SwiGLU, mean-pooled over the
caption, then a linear map to the image width): only the vision tower is exported. With
gradient accumulation the negatives of a pair are those of its own micro-batch.

Part files: `export_part` writes `part.json` (which part, its config) and `model.safetensors`
in our names; `load_part_into` loads such a folder, or a training checkpoint of a part task,
into the matching module of a Janus model (`gen_tokenizer`, `und_encoder` or `llm`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.config import ConfigError, JanusConfig, LLMConfig, VisionConfig
from openjanus.errors import UserError
from openjanus.jsonl import read_jsonl
from openjanus.model.llm import Block as LLMBlock
from openjanus.model.llm import RMSNorm, rope_cos_sin
from openjanus.model.siglip import AttentionPoolLatent, SigLIPViT
from openjanus.model.vq import VQModel
from openjanus.train.objectives import Metrics, Objective, StepResult

PART_FORMAT = "openjanus-part"
# task -> the Janus part it trains, and that part's attribute on `Janus`.
PART_OF_TASK = {"vq": "vq", "siglip": "siglip", "text": "llm"}
JANUS_ATTR = {"vq": "gen_tokenizer", "siglip": "und_encoder", "llm": "llm"}
CONFIG_ATTR = {"vq": "vq", "siglip": "vision", "llm": "llm"}


# --- VQ tokenizer -----------------------------------------------------------------------------


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
        metrics: Metrics = {
            "loss": (float(total.detach()), float(n)),
            "vq/recon": (float(rec.sum().detach()), float(n)),
            "vq/codebook": (float(losses["codebook"].detach()) * n, float(n)),
            "vq/commitment": (float(losses["commitment"].detach()) * n, float(n)),
            "vq/psnr": (float(psnr.sum()), float(n)),
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


# --- SigLIP -----------------------------------------------------------------------------------


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
        metrics: Metrics = {"loss": (float(total.detach()), float(n)), "siglip/i2t_acc": (float(hits), float(n))}
        return StepResult(total / loss_denominator, metrics)

    def shard_units(self) -> list[nn.Module]:
        m = self.model
        return [*m.und_encoder.blocks, m.text.embed, *m.text.layers]

    def compile_units(self) -> list[nn.Module]:
        return [*self.model.und_encoder.blocks, *self.model.text.layers]

    def enable_activation_checkpointing(self) -> None:
        from openjanus.train.parallel import checkpoint_blocks

        checkpoint_blocks([*self.model.und_encoder.blocks, *self.model.text.layers])

    def log_metrics(self) -> dict[str, float]:
        return {"siglip/t": float(self.model.log_t.detach().float().exp()),
                "siglip/b": float(self.model.bias.detach().float())}


# --- data for the part tasks ------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# Records from JSONL manifests ({"image": path, "caption": text} per line; image paths are
# relative to the manifest) or folders of images (no captions). Each source is a file, a glob,
# a folder of *.jsonl manifests, or a folder of images (searched recursively).
def _read_records(sources: list[str]) -> list[dict[str, Any]]:
    """Records of JSONL files, folders and globs (as the Janus data sources resolve them); a
    folder without *.jsonl files stands for the images in it."""
    from openjanus.train.data import discover_shards

    records: list[dict[str, Any]] = []
    for entry in sources:
        path = Path(entry)
        if path.is_dir() and not any(path.glob("*.jsonl")):
            images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            records += [{"image": str(p)} for p in images]
            continue
        for file in discover_shards([entry]):
            records += _read_manifest(file)
    return records


def _read_manifest(source: Path) -> list[dict[str, Any]]:
    # An empty manifest adds nothing; a source with no records at all is reported by the stream.
    records = []
    for n, rec in enumerate(read_jsonl(source, "manifest", allow_empty=True), 1):
        if not isinstance(rec.get("image"), str):
            raise UserError(f"{source} record {n}: each record needs an 'image' field (a path)")
        image = Path(rec["image"])
        records.append({**rec, "image": str(image if image.is_absolute() else source.parent / image)})
    return records


def _caption(rec: dict[str, Any]) -> str | None:
    for key in ("caption", "prompt", "text"):
        if isinstance(rec.get(key), str) and rec[key].strip():
            return rec[key]
    return None


class PartDataStream:
    """Resumable, rank-sharded stream of micro-batches for the VQ and SigLIP tasks.

    Sources: JSONL manifests of {"image", "caption"} records (files, globs or folders of them),
    folders of images (VQ only), or "shapes" (images and captions rendered from the evaluation
    package's shapes world, for trying the pipeline without data). Records are shuffled per
    epoch from `seed`; each rank reads every world_size-th record. Unreadable images are
    skipped and counted. With `shape_groups` k (siglip on "shapes" only), consecutive runs of k
    samples are training-split scenes that differ only in their shapes
    (`openjanus.shapes.tasks.shape_group`), k dividing `rows` so no group straddles two batches.
    """

    def __init__(self, task: str, source: str | list[str], rows: int, image_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, tokenizer: Any = None, caption_len: int = 32,
                 image_config: Any = None, shape_groups: int = 0) -> None:
        if task not in ("vq", "siglip"):
            raise ValueError(f"PartDataStream serves the vq and siglip tasks, not {task!r}")
        if task == "siglip" and (tokenizer is None or image_config is None):
            raise ValueError("the siglip task needs a tokenizer and an image processor config")
        self.task, self.rows, self.image_size, self.seed = task, rows, image_size, seed
        self.rank, self.world_size = rank, world_size
        self.tokenizer, self.caption_len, self.image_config = tokenizer, caption_len, image_config
        sources = [source] if isinstance(source, str) else list(source)
        self.synthetic = sources == ["shapes"]
        if shape_groups:
            if task != "siglip" or not self.synthetic:
                raise UserError("parts.siglip_shape_groups works with the siglip task on data.source 'shapes' "
                                f"(scenes are re-drawn with other shapes); got the {task} task on {sources}")
            if rows % shape_groups:
                raise UserError(f"micro_batch_rows {rows} must be a multiple of parts.siglip_shape_groups "
                                f"{shape_groups}, so that no group of hard negatives is split between batches")
        self.shape_groups = shape_groups
        self._group: tuple[int, list[Any]] | None = None  # (group index, its scenes)
        self.records: list[dict[str, Any]] = [] if self.synthetic else _read_records(sources)
        if not self.synthetic:
            if task == "siglip":
                self.records = [r for r in self.records if _caption(r) is not None]
            if len(self.records) < world_size:
                raise UserError(f"data source {sources} has {len(self.records)} usable records for "
                                f"{world_size} processes")
        self.epoch, self.index, self.bad_records, self.samples = 0, 0, 0, 0
        self._order: np.ndarray | None = None

    # -- resumable position
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "bad_records": self.bad_records, "samples": self.samples,
                "records": self._records_digest()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("records", self._records_digest()) != self._records_digest():  # (older states: none)
            raise UserError(f"the data source's records changed since the checkpoint (now {len(self.records)}: "
                            "image paths or captions differ); cannot resume the data position")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self.bad_records, self.samples = int(state["bad_records"]), int(state["samples"])
        self._order = None

    def _records_digest(self) -> str:
        # The record list (image paths and captions) decides what each position means; the
        # image files themselves are not read for this.
        if getattr(self, "_digest", None) is None:
            import hashlib

            self._digest = hashlib.blake2b(repr(self.records).encode(), digest_size=8).hexdigest()
        return self._digest

    def stats(self) -> dict[str, float]:
        return {"data/bad_records": float(self.bad_records), "data/epoch": float(self.epoch)}

    # -- iteration
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        images, captions = [], []
        failed = 0
        while len(images) < self.rows:
            item = self._next_sample()
            if item is None:
                failed += 1
                if failed > len(self.records):
                    raise UserError(f"none of the {len(self.records)} images of the data source can be read")
                continue
            images.append(item[0])
            captions.append(item[1])
        return self._collate(images, captions)

    def _my_order(self) -> np.ndarray:
        if self._order is None:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))
            self._order = perm[self.rank::self.world_size]
        return self._order

    def _next_sample(self) -> tuple[Any, str | None] | None:
        from openjanus.images import ImageLoadError, load_image

        if self.synthetic:
            from openjanus.shapes.text import describe
            from openjanus.shapes.world import render, rng_for, sample_scene

            if self.shape_groups:
                scene = self._group_member(self.index)
            else:
                scene = sample_scene(rng_for(self.seed, self.rank, self.index), image_size=self.image_size)
            self.index += 1
            self.samples += 1
            return render(scene, self.image_size), describe(scene)
        order = self._my_order()
        if self.index >= len(order):
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
            order = self._my_order()
        rec = self.records[int(order[self.index])]
        self.index += 1
        try:
            image = load_image(rec["image"])
        except ImageLoadError:
            self.bad_records += 1
            return None
        self.samples += 1
        return image, _caption(rec)

    def _group_member(self, index: int) -> Any:
        from openjanus.shapes.tasks import shape_group
        from openjanus.shapes.world import rng_for

        group, member = divmod(index, self.shape_groups)
        if self._group is None or self._group[0] != group:  # stream 1: apart from ungrouped scenes
            rng = rng_for(self.seed, self.rank, 1, group)
            self._group = (group, shape_group(rng, self.shape_groups, "train", self.image_size))
        return self._group[1][member]

    def _collate(self, images: list[Any], captions: list[str | None]) -> Any:
        if self.task == "vq":
            from openjanus.images import preprocess_gen_image

            return torch.stack([preprocess_gen_image(im, self.image_size) for im in images])  # [N, 3, S, S]
        from openjanus.images import preprocess_und_images

        pixels = preprocess_und_images(images, self.image_config)
        ids = torch.full((len(captions), self.caption_len), self.tokenizer.pad_id, dtype=torch.long)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        for i, text in enumerate(captions):
            row = self.tokenizer.encode(text or "", bos=True)[: self.caption_len]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, : len(row)] = True
        return CaptionBatch(pixels, ids, valid)


# --- part files -------------------------------------------------------------------------------


def part_config(cfg: JanusConfig, part: str) -> Any:
    """The component config of a part ("vq", "siglip", "llm") in a Janus config."""
    return getattr(cfg, CONFIG_ATTR[part])


def part_state(model: nn.Module, task: str) -> dict[str, Tensor]:
    """The exported part's state dict from a part task's model (the SigLIP pair keeps only its
    vision tower)."""
    if task == "siglip":
        return {k.removeprefix("und_encoder."): v for k, v in model.state_dict().items()
                if k.startswith("und_encoder.")}
    return dict(model.state_dict())


def export_part(state: dict[str, Tensor], part: str, config: Any, folder: str | Path) -> Path:
    """Write a part folder: part.json ({"format", "part", "config"}) and model.safetensors."""
    from openjanus.checkpoints.io import save_tensors, write_json

    folder = Path(folder)
    save_tensors(state, folder)
    write_json(folder / "part.json", {"format": PART_FORMAT, "part": part, "config": asdict(config)})
    return folder


# (part, config dict, key prefix inside model.safetensors) of a part folder or of a part
# task's training checkpoint.
def _part_source(folder: Path) -> tuple[str, dict[str, Any], str]:
    meta = folder / "part.json"
    if meta.is_file():
        d = json.loads(meta.read_text())
        if d.get("format") != PART_FORMAT:
            raise UserError(f"{meta}: not an openjanus part file")
        return d["part"], d["config"], ""
    state = folder / "train_state.json"
    if state.is_file():
        d = json.loads(state.read_text())
        task = d.get("task")
        if task not in PART_OF_TASK:
            raise UserError(f"{folder}: a {task!r} training checkpoint holds no single part")
        part = PART_OF_TASK[task]
        cfg = JanusConfig.from_dict(d["model_config"])
        return part, asdict(part_config(cfg, part)), "und_encoder." if task == "siglip" else ""
    raise UserError(f"{folder}: neither a part folder (part.json) nor a training checkpoint (train_state.json)")


def load_part(module: nn.Module, part: str, config: Any, folder: str | Path) -> None:
    """Load a pretrained part (a part folder or a part task's training checkpoint) into `module`,
    which must be built from `config` (checked field by field, then key by key)."""
    from openjanus.checkpoints.io import iter_tensors, load_into, weight_files

    folder = Path(folder)
    found, cfg_dict, prefix = _part_source(folder)
    if found != part:
        raise UserError(f"{folder} holds the {found!r} part, not {part!r}")
    expected = asdict(config)
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg_dict.items()}
    diff = [f"{k}: part {given[k]!r} vs model {v!r}" for k, v in expected.items()
            if k in given and given[k] != (tuple(v) if isinstance(v, list) else v)]
    if diff:
        raise UserError(f"{folder}: the {part} part does not fit the model config ({'; '.join(diff)})")
    tensors = {k[len(prefix):]: (loader, shape) for k, loader, shape in iter_tensors(weight_files(folder))
               if k.startswith(prefix)}
    ref = next(iter(module.parameters()))
    optional = (r"^quantize\.codebook_used$",) if part == "vq" else ()
    load_into(module, tensors, optional=optional, device=ref.device, dtype=ref.dtype, source=str(folder))


def load_part_into(model: nn.Module, part: str, folder: str | Path) -> None:
    """Load a pretrained part into the matching module of a Janus model."""
    load_part(getattr(model, JANUS_ATTR[part]), part, part_config(model.cfg, part), folder)


__all__ = ["VQObjective", "SigLIPObjective", "SigLIPPair", "TextTower", "CaptionBatch", "PartDataStream",
           "attention_pool", "export_part", "load_part", "load_part_into", "part_state", "PART_OF_TASK"]
