"""Image (and caption) micro-batches for pretraining the VQ and SigLIP parts.

Sources: JSONL manifests of {"image", "caption"} records (files, globs or folders of them),
folders of images (VQ only), or "shapes": images and captions rendered from the shapes world
(`openjanus.shapes`), for trying the pipeline without data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openjanus.errors import UserError
from openjanus.images import IMAGE_SUFFIXES, ImageLoadError, load_image, preprocess_gen_image, preprocess_und_images
from openjanus.jsonl import read_jsonl
from openjanus.shapes.tasks import shape_group
from openjanus.shapes.text import describe
from openjanus.shapes.world import render, rng_for, sample_scene
from openjanus.train.data import discover_shards
from openjanus.train.siglip import CaptionBatch


# Records from JSONL manifests ({"image": path, "caption": text} per line; image paths are
# relative to the manifest) or folders of images (no captions). Each source is a file, a glob,
# a folder of *.jsonl manifests, or a folder of images (searched recursively).
def _read_records(sources: list[str]) -> list[dict[str, Any]]:
    """Records of JSONL files, folders and globs (as the Janus data sources resolve them); a
    folder without *.jsonl files stands for the images in it."""
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
        if self.synthetic:
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
        group, member = divmod(index, self.shape_groups)
        if self._group is None or self._group[0] != group:  # stream 1: apart from ungrouped scenes
            rng = rng_for(self.seed, self.rank, 1, group)
            self._group = (group, shape_group(rng, self.shape_groups, "train", self.image_size))
        return self._group[1][member]

    def _collate(self, images: list[Any], captions: list[str | None]) -> Any:
        if self.task == "vq":
            return torch.stack([preprocess_gen_image(im, self.image_size) for im in images])  # [N, 3, S, S]
        pixels = preprocess_und_images(images, self.image_config)
        ids = torch.full((len(captions), self.caption_len), self.tokenizer.pad_id, dtype=torch.long)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        for i, text in enumerate(captions):
            row = self.tokenizer.encode(text or "", bos=True)[: self.caption_len]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, : len(row)] = True
        return CaptionBatch(pixels, ids, valid)


__all__ = ["PartDataStream"]
