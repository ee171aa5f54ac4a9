"""Pre-tokenize a text-to-image dataset: run the frozen VQ encoder once, write codes to disk.

The VQ tokenizer never trains, so encoding every generation image at every epoch would only
burn compute. `pretokenize` reads {"image", "caption"} JSONL records (any number of files,
folders or globs), preprocesses each image like training does (`preprocess_gen_image`:
short side resized, centre-cropped, [-1, 1]), encodes batches with the VQ encoder in float32
and writes shards:

    OUT/gen-00000.jsonl       {"caption": "...", "codes_row": 0, "source": "cats.jsonl:1"} per line
    OUT/gen-00000.codes.npy   uint16 [n, num_gen_tokens] (int32 for codebooks over 65536 codes)
    OUT/pretokenize.json      model, sizes and counts

Point a run's `data.gen` at `OUT/*.jsonl`. Records that already carry "codes" are copied
through; bad records are skipped and counted by reason, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from openjanus.checkpoints.io import load_into
from openjanus.checkpoints.weights import open_weights
from openjanus.devices import resolve_device
from openjanus.files import atomic_path, write_json
from openjanus.images import preprocess_gen_image
from openjanus.model.vq import VQModel
from openjanus.train.data import BadRecord, DataError, codes_file, discover_shards, load_record_images

__all__ = ["PretokenizeStats", "load_vq", "pretokenize", "register_pretokenize", "cmd_pretokenize"]


@dataclass
class PretokenizeStats:
    records: int = 0  # records read
    written: int = 0  # records written
    shards: int = 0  # shards written
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0


def load_vq(folder: str | os.PathLike[str], device: torch.device | str = "cpu",
            dtype: torch.dtype | None = torch.float32) -> VQModel:
    """Only the VQ tokenizer of a folder that holds one (official or HF layout, a pretrained VQ
    part, a training checkpoint); nothing else is read."""
    weights = open_weights(folder)
    with torch.device("meta"):
        vq = VQModel(weights.part_config("vq"))
    load_into(vq, weights.part_tensors("vq"), optional=weights.part_optional("vq"), device=device, dtype=dtype,
              source=str(folder))
    return vq.eval().requires_grad_(False)


def _resolve_vq(model: Any, device: torch.device | str) -> VQModel:
    if isinstance(model, VQModel):
        vq = model
    elif hasattr(model, "gen_tokenizer"):  # a Janus model
        vq = model.gen_tokenizer
    elif hasattr(model, "model") and hasattr(model.model, "gen_tokenizer"):  # a JanusPipeline
        vq = model.model.gen_tokenizer
    else:
        return load_vq(model, device=device)
    return vq.to(device, torch.float32).eval()


class _ShardWriter:
    def __init__(self, out_dir: Path, n_tokens: int, codebook_size: int, shard_size: int) -> None:
        self.out_dir = out_dir
        self.n_tokens = n_tokens
        self.dtype = np.uint16 if codebook_size <= 2**16 else np.int32
        self.shard_size = shard_size
        self.captions: list[tuple[str, str]] = []
        self.codes: list[np.ndarray] = []
        self.shards = 0

    def add(self, caption: str, source: str, codes: np.ndarray) -> None:
        self.captions.append((caption, source))
        self.codes.append(codes.astype(self.dtype))
        if len(self.captions) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.captions:
            return
        path = self.out_dir / f"gen-{self.shards:05d}.jsonl"
        table = np.stack(self.codes)  # [n, n_tokens]
        # Codes first: a shard's .jsonl (what training globs for) only appears once both are complete.
        with atomic_path(codes_file(path)) as tmp, open(tmp, "wb") as f:
            np.save(f, table)
        lines = "".join(json.dumps({"caption": c, "codes_row": i, "source": s}, ensure_ascii=False) + "\n"
                        for i, (c, s) in enumerate(self.captions))
        with atomic_path(path) as tmp:
            tmp.write_text(lines, encoding="utf-8")
        self.shards += 1
        self.captions, self.codes = [], []


def pretokenize(
    model: str | os.PathLike[str] | VQModel | Any,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    batch_size: int = 32,
    shard_size: int = 10_000,
    device: torch.device | str = "cpu",
    image_root: str | os.PathLike[str] | None = None,
    num_threads: int = 8,
    progress: bool = True,
) -> PretokenizeStats:
    """Encode the images of text-to-image JSONL `inputs` with `model`'s VQ tokenizer into shards
    in `out_dir` (which must hold no shards yet).

    `model` is a checkpoint folder (only its VQ weights are read), a `VQModel`, a `Janus` or a
    `JanusPipeline`. Relative image paths start at each JSONL file's folder, or `image_root`.
    Images are decoded on `num_threads` threads and encoded `batch_size` at a time.
    """
    if batch_size < 1 or shard_size < 1 or num_threads < 1:
        raise ValueError(f"batch_size {batch_size}, shard_size {shard_size}, num_threads {num_threads} must be >= 1")
    t0 = time.perf_counter()
    shards = discover_shards(inputs)
    out = Path(out_dir)
    if any(out.glob("*.jsonl")):
        raise DataError(f"{out} already holds *.jsonl shards; choose an empty folder")
    vq = _resolve_vq(model, device)
    out.mkdir(parents=True, exist_ok=True)
    size, n_tokens, codebook = vq.cfg.image_size, vq.cfg.num_tokens, vq.cfg.codebook_size
    writer = _ShardWriter(out, n_tokens, codebook, shard_size)
    stats = PretokenizeStats()

    def skip(reason: str) -> None:
        stats.skipped[reason] = stats.skipped.get(reason, 0) + 1

    def load(item: tuple[str, str, Path]) -> Tensor | BadRecord:
        _, rel, root = item
        try:
            return preprocess_gen_image(load_record_images([rel], root)[0], size)
        except BadRecord as e:
            return e

    batch: list[tuple[str, str, Path]] = []  # (caption, image path, root) awaiting encoding
    sources: list[str] = []

    def encode(pool: ThreadPoolExecutor) -> None:
        loaded = list(pool.map(load, batch))
        keep = [i for i, x in enumerate(loaded) if isinstance(x, Tensor)]
        for x in loaded:
            if isinstance(x, BadRecord):
                skip(x.reason)
        if keep:
            x = torch.stack([loaded[i] for i in keep]).to(device, torch.float32)  # [n, 3, S, S]
            with torch.inference_mode():
                codes = vq.encode(x).cpu().numpy()  # [n, n_tokens]
            for row, i in zip(codes, keep):
                writer.add(batch[i][0], sources[i], row)
                stats.written += 1
        batch.clear()
        sources.clear()

    total = sum(_count_lines(p) for p in shards)
    with ThreadPoolExecutor(num_threads) as pool, tqdm(total=total, unit="rec", disable=not progress,
                                                       desc="pretokenize") as bar:
        for shard in shards:
            root = Path(image_root) if image_root is not None else shard.parent
            with open(shard, "rb") as f:
                for number, line in enumerate(f):
                    bar.update(1)
                    if not line.strip():
                        continue
                    stats.records += 1
                    source = f"{shard.name}:{number + 1}"
                    try:
                        caption, image, codes = _parse(line, n_tokens, codebook)
                    except BadRecord as e:
                        skip(e.reason)
                        continue
                    if codes is not None:
                        writer.add(caption, source, codes)
                        stats.written += 1
                        continue
                    batch.append((caption, image, root))
                    sources.append(source)
                    if len(batch) >= batch_size:
                        encode(pool)
        if batch:
            encode(pool)
    writer.flush()
    stats.shards = writer.shards
    stats.seconds = time.perf_counter() - t0
    meta = {"model": str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__,
            "image_size": size, "num_gen_tokens": n_tokens, "codebook_size": codebook,
            "inputs": [str(p) for p in shards], **asdict(stats)}
    write_json(out / "pretokenize.json", meta)
    return stats


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _parse(line: bytes, n_tokens: int, codebook: int) -> tuple[str, str, np.ndarray | None]:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord("malformed_json", str(e)) from None
    if not isinstance(record, dict) or not isinstance(record.get("caption"), str):
        raise BadRecord("bad_schema", "expected an object with a string 'caption'")
    caption = record["caption"]
    if not caption.strip():
        raise BadRecord("empty_text", "empty caption")
    if "codes" in record:
        codes = record["codes"]
        if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            raise BadRecord("bad_schema", "'codes' must be a list of integers")
        if len(codes) != n_tokens or (codes and (min(codes) < 0 or max(codes) >= codebook)):
            raise BadRecord("bad_codes", f"expected {n_tokens} codes in [0, {codebook})")
        return caption, "", np.asarray(codes, dtype=np.int64)
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise BadRecord("bad_schema", "expected an 'image' path (or 'codes')")
    return caption, image, None


def register_pretokenize(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `pretokenize` command to an argparse sub-parser group (e.g. `openjanus train`'s)."""
    p = subparsers.add_parser(
        "pretokenize", help="encode a text-to-image dataset into VQ codes once",
        description="Run the frozen VQ encoder over {'image', 'caption'} JSONL records and write code shards "
                    "(OUT/gen-*.jsonl + .codes.npy) for the 'gen' data source.")
    p.add_argument("--model", required=True, help="checkpoint folder whose VQ tokenizer encodes the images")
    p.add_argument("--data", required=True, action="extend", nargs="+",
                   help="JSONL file(s), folder(s) or glob(s) of text-to-image records")
    p.add_argument("--out", required=True, help="output folder (must hold no shards yet)")
    p.add_argument("--batch-size", type=int, default=32, help="images per VQ forward pass")
    p.add_argument("--shard-size", type=int, default=10_000, help="records per output shard")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--image-root", default=None, help="where relative image paths start (default: each JSONL's folder)")
    p.add_argument("--threads", type=int, default=8, help="image decoding threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretokenize)
    return p


def cmd_pretokenize(args: argparse.Namespace) -> None:
    """Run `pretokenize` from parsed command-line arguments and print a one-line summary."""
    stats = pretokenize(args.model, args.data, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                        device=resolve_device(args.device), image_root=args.image_root, num_threads=args.threads,
                        progress=not args.no_progress)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
    print(f"wrote {stats.written} of {stats.records} records in {stats.shards} shard(s) to {args.out} "
          f"({stats.seconds:.1f} s); skipped: {skipped}")
