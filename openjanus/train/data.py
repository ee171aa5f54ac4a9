"""Training data: the three JSONL formats, sharded streaming readers, and records -> samples.

Formats (full description with examples in docs/training-data.md):

* understanding ("und") and text-only ("text"), one JSON object per line:
  ``{"messages": [{"role": "user", "content": "<image_placeholder>\\nWhat is this?"},
  {"role": "assistant", "content": "A cat."}], "images": ["imgs/cat.png"], "system": "..."}``
  (loss on the answers only) or ``{"text": "<image_placeholder>A cat on a mat.", "images":
  [...]}`` (captions and plain text: loss on every text token). Image paths are relative to
  the JSONL file's folder (or the source's `image_root`). Text-only records have no images.
* text-to-image ("gen"): ``{"caption": "...", "image": "imgs/cat.png"}``, or pre-tokenized
  ``{"caption": "...", "codes": [...]}`` / ``{"caption": "...", "codes_row": i}`` with row i of
  the sibling ``<shard>.codes.npy`` (what `openjanus train pretokenize` writes).

Each source is a list of shards (files or globs). Every (rank, dataloader worker) pair is one
"data unit" reading its own part: whole shards when there are at least as many shards as
units, else every n-th line of each shard. The shard order is reshuffled every epoch with the
run's seed, and records are shuffled within blocks of `shuffle_block`. A bad record is
skipped and counted by reason (`REASONS`), never raised; the position in the data (epoch,
shard, byte offset, block) is a small dict, so a run resumes exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from openjanus.config import ConfigError
from openjanus.errors import UserError
from openjanus.images import ImageLoadError, load_image, preprocess_gen_image, preprocess_und_images
from openjanus.model.vq import VQModel
from openjanus.processing import DEFAULT_SYSTEM_PROMPT, JanusProcessor, Turn
from openjanus.train.batch import DATA_KINDS
from openjanus.train.fields import check_json_type, field_types
from openjanus.train.mixing import derive_seed
from openjanus.train.sequences import Origin, Sample, chat_sample, first_sentence, t2i_sample, text_sample

__all__ = [
    "REASONS", "BadRecord", "DataError", "SourceConfig", "DataConfig", "discover_shards", "Cursor",
    "ShardReader", "SampleBuilder", "SampleSource", "codes_file", "load_record_images", "content_fingerprint",
    "FINGERPRINT_BLOCK",
]

log = logging.getLogger("openjanus.train.data")

# Why a record was skipped. "empty_text" covers empty captions, answers and texts.
REASONS = ("malformed_json", "bad_schema", "missing_image", "corrupt_image", "empty_text", "bad_codes", "too_long")


class BadRecord(Exception):
    """A record that cannot become a sample; streams skip it and count `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown bad-record reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DataError(UserError):
    """The data as a whole is unusable (no files, no usable record in an epoch, a changed
    dataset on resume): unlike a bad record, this stops the run."""


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SourceConfig:
    """One source: JSONL files, folders (their *.jsonl) or globs, and where relative image
    paths start (default: each JSONL file's own folder)."""

    paths: tuple[str, ...]
    image_root: str | None = None

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, (str, os.PathLike)) else self.paths
        object.__setattr__(self, "paths", tuple(os.fspath(p) for p in paths))
        if not self.paths:
            raise ConfigError("a data source needs at least one path")

    @classmethod
    def from_value(cls, value: Any, name: str) -> SourceConfig:
        """From a path string, a list of paths, or {"paths": ..., "image_root": ...}."""
        if isinstance(value, (str, list, tuple)):
            return cls(value)  # type: ignore[arg-type]
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"paths", "image_root"})
            if unknown or "paths" not in value:
                raise ConfigError(f"data.{name}: expected keys 'paths' (required) and 'image_root', "
                                  f"got {sorted(value)}")
            return cls(value["paths"], value.get("image_root"))
        raise ConfigError(f"data.{name}: expected a path, a list of paths or an object, got {type(value).__name__}")


@dataclass(frozen=True)
class DataConfig:
    """Everything about the data of a run except the mix (a stage's `data_ratio`)."""

    und: SourceConfig | None = None
    text: SourceConfig | None = None
    gen: SourceConfig | None = None
    p_uncond: float = 0.1  # caption replaced by pad tokens (CFG), Janus section 4.1
    p_first_sentence: float = 0.25  # only the caption's first sentence, Janus section 4.1
    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # for conversations without their own "system"
    shuffle_block: int = 1024  # records shuffled within blocks of this many (1: no shuffle)
    max_pending: int = 8  # samples that may wait for the next batch while packing
    num_workers: int = 2  # dataloader worker processes per rank (0: in the main process)
    prefetch_factor: int = 2
    pin_memory: bool = True
    max_logged_bad_records: int = 20  # per source and data unit; all are counted
    # The vq and siglip tasks read images (and captions) from here instead: JSONL manifests
    # (files, globs, folders), a folder of images, or "shapes" (docs/training.md).
    source: str | list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("p_uncond", "p_first_sentence"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"data.{name} {p} must lie in [0, 1]")
        for name in ("shuffle_block", "max_pending", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def source_of(self, name: str) -> SourceConfig | None:
        """The source called "und", "text" or "gen"."""
        if name not in DATA_KINDS:
            raise ConfigError(f"unknown data source {name!r}; use one of {', '.join(DATA_KINDS)}")
        return getattr(self, name)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataConfig:
        """From the `data` section of a training config; unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"data: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs = dict(raw)
        types = field_types(cls)
        for name, value in kwargs.items():
            if name not in DATA_KINDS:
                check_json_type(value, types[name], f"data.{name}")
        for name in DATA_KINDS:
            if kwargs.get(name) is not None:
                kwargs[name] = SourceConfig.from_value(kwargs[name], name)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def given(self) -> list[str]:
        """The fields set to something other than their default."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


# ----------------------------------------------------------------------------- shards and cursors


def discover_shards(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The shard files of a source, in a stable order: each entry is a file, a folder (its
    *.jsonl files, sorted) or a glob (sorted matches; ** recurses). Duplicates are dropped."""
    out: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        s = os.fspath(entry)
        p = Path(s)
        if any(c in s for c in "*?["):
            found = sorted(Path(m) for m in glob.glob(s, recursive=True) if Path(m).is_file())
            if not found:
                raise DataError(f"no data files match {s!r}")
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix == ".jsonl" and f.is_file())
            if not found:
                raise DataError(f"data folder {s!r} has no *.jsonl files")
        elif p.is_file():
            found = [p]
        else:
            raise DataError(f"data file {s!r} not found")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


# What a resume compares of each shard besides its name and size: these many bytes at its start,
# middle and end. An edit that keeps the size and touches none of them goes unnoticed.
FINGERPRINT_BLOCK = 4096


def content_fingerprint(shards: Sequence[Path]) -> str:
    """A digest of the shards' names, sizes and their first, middle and last FINGERPRINT_BLOCK
    bytes: cheap (three small reads per shard), and it catches the usual same-size edits."""
    h = hashlib.blake2b(digest_size=8)
    for p in shards:
        size = p.stat().st_size
        h.update(repr((p.name, size)).encode())
        with open(p, "rb") as f:
            for at in sorted({0, max(0, size // 2 - FINGERPRINT_BLOCK // 2), max(0, size - FINGERPRINT_BLOCK)}):
                f.seek(at)
                h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


def changed_content_message(name: str, n_shards: int) -> str:
    return (f"source {name!r}: the content of its {n_shards} shard(s) changed since the checkpoint (same names and "
            f"sizes, different bytes); cannot resume the data position")


@dataclass
class Cursor:
    """A position in a data unit's stream: the next line to read is at byte `offset` (line
    number `line`) of the `slot`-th shard this unit reads in `epoch`."""

    epoch: int = 0
    slot: int = 0
    offset: int = 0
    line: int = 0


RecordRef = tuple[int, int, int]  # (shard index, byte offset, line number)


class ShardReader:
    """Reads one data unit's part of a list of shards, epoch after epoch.

    With at least as many shards as units, unit u reads whole shards: those at positions
    u, u + n, u + 2n, ... of the epoch's shuffled shard order. With fewer shards, every unit
    reads every shard but keeps only the lines with (line + slot) % n == u. Either way the
    units of one epoch read disjoint records that together are the whole dataset.
    """

    def __init__(self, shards: Sequence[Path], unit: int, n_units: int, seed: int, name: str) -> None:
        if not 0 <= unit < n_units:
            raise ValueError(f"data unit {unit} is outside [0, {n_units})")
        self.shards = list(shards)
        self.unit = unit
        self.n_units = n_units
        self.seed = seed
        self.name = name
        self.by_lines = len(self.shards) < n_units
        self._order: tuple[int, list[int]] | None = None

    def epoch_shards(self, epoch: int) -> list[int]:
        """Shard indices this unit reads in `epoch`, in reading order."""
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.shards)))
            random.Random(derive_seed("shards", self.seed, self.name, epoch)).shuffle(order)
            self._order = (epoch, order if self.by_lines else order[self.unit :: self.n_units])
        return self._order[1]

    def _owns(self, slot: int, line: int) -> bool:
        return not self.by_lines or (line + slot) % self.n_units == self.unit

    def read_block(self, cursor: Cursor, k: int) -> tuple[list[tuple[RecordRef, bytes]], Cursor]:
        """Up to `k` of this unit's records from `cursor` on, and the cursor after them. A block
        never crosses an epoch: at the end of one the cursor moves to the next epoch's start."""
        c = dataclasses.replace(cursor)
        order = self.epoch_shards(c.epoch)
        items: list[tuple[RecordRef, bytes]] = []
        while len(items) < k and c.slot < len(order):
            shard = order[c.slot]
            with open(self.shards[shard], "rb") as f:
                f.seek(c.offset)
                while len(items) < k:
                    line = f.readline()
                    if not line:
                        c.slot, c.offset, c.line = c.slot + 1, 0, 0
                        break
                    at, number = c.offset, c.line
                    c.offset += len(line)
                    c.line += 1
                    if line.strip() and self._owns(c.slot, number):
                        items.append(((shard, at, number), line))
        if c.slot >= len(order):
            c = Cursor(epoch=c.epoch + 1)
        return items, c

    def read_line(self, shard: int, offset: int) -> bytes:
        """The record at byte `offset` of shard `shard`."""
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            return f.readline()


def codes_file(shard: Path) -> Path:
    """Where the VQ codes of a pre-tokenized shard live: "gen-00000.jsonl" -> "gen-00000.codes.npy"."""
    return shard.with_suffix(".codes.npy")


# ----------------------------------------------------------------------------- records -> samples


_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def normalise_chat_record(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept the common aliases of the chat schema: `conversations` for `messages` (with
    LLaVA's `from`/`value` turns as well as `role`/`content`) and a single `image` for `images`."""
    if "conversations" not in record and not ("image" in record and "images" not in record):
        return record
    out = dict(record)
    if "conversations" in out and "messages" not in out:
        turns = out.pop("conversations")
        if isinstance(turns, list):
            turns = [{"role": _LLAVA_ROLES.get(t.get("from"), t.get("from")), "content": t.get("value")}
                     if isinstance(t, dict) and "from" in t else t for t in turns]
        out["messages"] = turns
    if "image" in out and "images" not in out:
        image = out.pop("image")
        out["images"] = [image] if isinstance(image, str) else image
    return out


def load_record_images(paths: Any, root: Path) -> list[Image.Image]:
    """Load a record's image paths (relative to `root`) as RGB images; raises `BadRecord`."""
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise BadRecord("bad_schema", "'images' must be a list of paths")
    images = []
    for rel in paths:
        path = root / rel  # an absolute `rel` replaces root
        if not path.is_file():
            raise BadRecord("missing_image", str(path))
        try:
            images.append(load_image(path))
        except ImageLoadError as e:
            raise BadRecord("corrupt_image", str(e)) from None
    return images


class SampleBuilder:
    """Turns the records of one source ("und", "text" or "gen") into samples.

    Per-record randomness (first-sentence captions, CFG dropout) comes from the `rng` the
    caller seeds per record, so a record always gives the same sample in the same epoch.
    Raw generation images are encoded by `vq` (a CPU copy of the frozen VQ tokenizer); big
    runs pre-tokenize instead (`openjanus.train.pretokenize`).
    """

    def __init__(
        self,
        kind: str,
        processor: JanusProcessor,
        seq_len: int,
        image_root: str | os.PathLike[str] | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        p_uncond: float = 0.1,
        p_first_sentence: float = 0.25,
        codebook_size: int | None = None,
        gen_image_size: int | None = None,
        vq: VQModel | None = None,
    ) -> None:
        if kind not in DATA_KINDS:
            raise ConfigError(f"unknown source kind {kind!r}; use one of {', '.join(DATA_KINDS)}")
        self.kind = kind
        self.processor = processor
        self.seq_len = seq_len
        self.image_root = Path(image_root) if image_root is not None else None
        self.system_prompt = system_prompt
        self.p_uncond = p_uncond
        self.p_first_sentence = p_first_sentence
        self.codebook_size = codebook_size
        self.gen_image_size = gen_image_size
        self.vq = vq
        self._codes_cache: dict[Path, np.ndarray] = {}

    def build_line(self, line: bytes, shard: Path, rng: random.Random) -> Sample:
        """Parse one JSONL line of `shard` and build its sample; raises `BadRecord`."""
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadRecord("malformed_json", str(e)) from None
        if not isinstance(record, dict):
            raise BadRecord("bad_schema", f"expected a JSON object, got {type(record).__name__}")
        return self.build(record, shard, rng)

    def build(self, record: Mapping[str, Any], shard: Path, rng: random.Random) -> Sample:
        """Build the sample of one parsed record of `shard`; raises `BadRecord`."""
        if self.kind != "gen":
            record = normalise_chat_record(record)
        if self.kind == "gen":
            sample = self._gen(record, shard, rng)
        else:
            sample = self._chat_or_text(record, shard)
        if len(sample) > self.seq_len:
            raise BadRecord("too_long", f"{len(sample)} tokens > seq_len {self.seq_len}")
        return sample

    # -- understanding and text

    def _chat_or_text(self, record: Mapping[str, Any], shard: Path) -> Sample:
        has_messages, has_text = "messages" in record, "text" in record
        if has_messages == has_text:
            raise BadRecord("bad_schema", "a record needs exactly one of 'messages' or 'text'")
        tag = self.processor.tokenizer.specials.image
        image_paths = record.get("images") or []
        if not isinstance(image_paths, list):
            raise BadRecord("bad_schema", "'images' must be a list of paths")
        if self.kind == "text" and image_paths:
            raise BadRecord("bad_schema", "text-only records have no images")
        n_images = len(image_paths)

        if has_text:
            text = record["text"]
            if not isinstance(text, str):
                raise BadRecord("bad_schema", "'text' must be a string")
            if not text.strip():
                raise BadRecord("empty_text", "empty text")
            if n_images > 0 and tag not in text:
                text = tag * n_images + text  # "<image><caption>", the Janus caption format
            n_tags = text.count(tag)
        else:
            messages, system = self._messages(record)
            if n_images > 0 and not any(tag in m["content"] for m in messages):
                # As JanusProcessor.encode_chat does for images attached to a message.
                messages[0] = {"role": "user", "content": f"{tag}\n" * n_images + messages[0]["content"]}
            n_tags = sum(m["content"].count(tag) for m in messages)
        if n_tags != n_images:
            raise BadRecord("bad_schema", f"{n_tags} image placeholders but {n_images} images")

        pixels = None
        if n_images > 0:
            images = load_record_images(image_paths, self.image_root or shard.parent)
            pixels = preprocess_und_images(images, self.processor.image_config)
        try:
            if has_text:
                return text_sample(self.processor, text, pixels, task=self.kind)
            return chat_sample(self.processor, messages, pixels, system, task=self.kind)
        except ValueError as e:
            raise BadRecord("bad_schema", str(e)) from None

    def _messages(self, record: Mapping[str, Any]) -> tuple[list[Turn], str]:
        raw = record["messages"]
        if not isinstance(raw, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in raw
        ):
            raise BadRecord("bad_schema", "'messages' must be a list of {'role': str, 'content': str}")
        system = record.get("system", self.system_prompt)
        if not isinstance(system, str):
            raise BadRecord("bad_schema", "'system' must be a string")
        if raw and raw[0]["role"] == "system":
            if "system" in record:
                raise BadRecord("bad_schema", "a system prompt both in 'system' and in 'messages'")
            system, raw = raw[0]["content"], raw[1:]
        messages: list[Turn] = [{"role": m["role"], "content": m["content"]} for m in raw]
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()  # a trailing question has no answer to learn from
        for i, m in enumerate(messages):
            want = ("user", "assistant")[i % 2]
            if m["role"] != want:
                raise BadRecord("bad_schema", f"message {i} has role {m['role']!r}, expected {want!r} "
                                              "(turns alternate user, assistant)")
            if not m["content"].strip():
                raise BadRecord("empty_text", f"message {i} ({want}) is empty")
        if not messages:
            raise BadRecord("bad_schema", "no assistant answer")
        return messages, system

    # -- text-to-image

    def _gen(self, record: Mapping[str, Any], shard: Path, rng: random.Random) -> Sample:
        # Draw both numbers up front so a record's randomness does not depend on its content.
        u_first, u_uncond = rng.random(), rng.random()
        caption = record.get("caption")
        if not isinstance(caption, str):
            raise BadRecord("bad_schema", "'caption' must be a string")
        if not caption.strip():
            raise BadRecord("empty_text", "empty caption")
        given = [k for k in ("image", "codes", "codes_row") if k in record]
        if len(given) != 1:
            raise BadRecord("bad_schema", "a text-to-image record needs exactly one of 'image', 'codes', 'codes_row'")
        if given[0] == "image":
            codes = self._encode_image(record["image"], shard)
        elif given[0] == "codes":
            codes = record["codes"]
            if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
                raise BadRecord("bad_schema", "'codes' must be a list of integers")
        else:
            codes = self._codes_row(record["codes_row"], shard)
        codes = self._check_codes(codes)
        if u_first < self.p_first_sentence:
            caption = first_sentence(caption)
        return t2i_sample(self.processor, caption, codes, unconditional=u_uncond < self.p_uncond)

    def _encode_image(self, rel: Any, shard: Path) -> list[int]:
        if not isinstance(rel, str) or not rel:
            raise BadRecord("bad_schema", "'image' must be a path")
        if self.vq is None or self.gen_image_size is None:
            raise DataError("a text-to-image record names an image but no VQ encoder was given to the data "
                            "stream; pre-tokenize the dataset (openjanus train pretokenize) or pass `vq`")
        image = load_record_images([rel], self.image_root or shard.parent)[0]
        x = preprocess_gen_image(image, self.gen_image_size)[None]  # [1, 3, S, S]
        with torch.inference_mode():
            return self.vq.encode(x)[0].tolist()

    def _codes_row(self, row: Any, shard: Path) -> np.ndarray:
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise BadRecord("bad_schema", "'codes_row' must be a non-negative integer")
        path = codes_file(shard)
        table = self._codes_cache.get(path)
        if table is None:
            if not path.is_file():
                raise BadRecord("bad_codes", f"{path} not found")
            try:
                table = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise BadRecord("bad_codes", f"cannot read {path}: {e}") from None
            if len(self._codes_cache) >= 16:  # bound the open memory maps
                self._codes_cache.pop(next(iter(self._codes_cache)))
            self._codes_cache[path] = table
        if table.ndim != 2 or row >= table.shape[0]:
            raise BadRecord("bad_codes", f"row {row} is not in {path} (shape {table.shape})")
        return np.asarray(table[row], dtype=np.int64)

    def _check_codes(self, codes: Any) -> np.ndarray:
        arr = np.asarray(codes, dtype=np.int64)
        if arr.ndim != 1 or arr.shape[0] != self.processor.num_gen_tokens:
            raise BadRecord("bad_codes", f"codes of shape {arr.shape}; the model generates "
                                         f"{self.processor.num_gen_tokens} per image")
        if self.codebook_size is not None:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.codebook_size:
                raise BadRecord("bad_codes", f"codes span [{lo}, {hi}], outside the codebook [0, {self.codebook_size})")
        return arr

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_codes_cache"] = {}  # memory maps are reopened in each worker
        return state


# ----------------------------------------------------------------------------- one source, streamed


class _EpochsDone(Exception):
    pass


@dataclass
class _SourceCounters:
    records: int = 0  # records read (good and bad)
    samples: int = 0  # samples built
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count


class SampleSource(IterableDataset):
    """One data source streamed as samples for one data unit, skipping and counting bad records.

    Used on its own (iterate it, e.g. through a DataLoader: each worker reads its part) or as
    a building block: `bind` a unit, then call `next()`; `state_dict()` / `load_state_dict()`
    save and restore the exact position. `max_epochs=None` streams forever.
    """

    def __init__(
        self,
        name: str,
        shards: Sequence[Path],
        builder: SampleBuilder,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_block: int = 1024,
        max_epochs: int | None = None,
        max_logged: int = 20,
    ) -> None:
        if not shards:
            raise DataError(f"source {name!r} has no shards")
        self.name = name
        self.shards = list(shards)
        self.builder = builder
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_block = shuffle_block
        self.max_epochs = max_epochs
        self.max_logged = max_logged
        self.reader: ShardReader | None = None
        self.counters = _SourceCounters()
        self._reset_position()

    def _reset_position(self) -> None:
        self._start: Cursor | None = None  # where the current block was read from
        self._next = Cursor()  # where the next block starts
        self._block: list[tuple[RecordRef, bytes]] = []
        self._block_no = -1
        self._taken = 0
        self._epoch_records = 0
        self._epoch_samples = 0
        self._logged = 0

    # -- binding a unit

    def bind(self, unit: int, n_units: int) -> SampleSource:
        """Read data unit `unit` of `n_units` (from the start, unless a state is loaded next)."""
        self.reader = ShardReader(self.shards, unit, n_units, self.seed, self.name)
        self._reset_position()
        return self

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.bind(self.rank * n_workers + worker, self.world_size * n_workers)
        while True:
            try:
                yield self._next_sample()
            except _EpochsDone:
                return

    @property
    def epoch(self) -> int:
        return self._start.epoch if self._start is not None else 0

    @functools.cached_property
    def fingerprint(self) -> str:
        """A digest of the shard names and sizes: positions are only valid in the same files."""
        listing = [(p.name, p.stat().st_size) for p in self.shards]
        return hashlib.blake2b(repr(listing).encode(), digest_size=8).hexdigest()

    @functools.cached_property
    def content_fingerprint(self) -> str:
        """`content_fingerprint` of this source's shards."""
        return content_fingerprint(self.shards)

    # -- reading

    def next(self) -> Sample:
        """The next good sample of this unit (raises StopIteration after `max_epochs`)."""
        try:
            return self._next_sample()
        except _EpochsDone:
            raise StopIteration from None

    def _next_sample(self) -> Sample:
        if self.reader is None:
            raise RuntimeError("SampleSource.next() before bind()")
        while True:
            if self._taken >= len(self._block):
                self._load_block()
                continue
            ref, line = self._block[self._taken]
            self._taken += 1
            self.counters.records += 1
            origin: Origin = (self.name, self.epoch, *ref)
            try:
                sample = self._build(origin, line)
            except BadRecord as e:
                self._skip(e, ref)
                continue
            self.counters.samples += 1
            self._epoch_samples += 1
            return sample

    def _build(self, origin: Origin, line: bytes) -> Sample:
        _, epoch, shard, _, number = origin
        rng = random.Random(derive_seed("sample", self.seed, self.name, epoch, shard, number))
        sample = self.builder.build_line(line, self.shards[shard], rng)
        sample.origin = origin
        return sample

    def _skip(self, e: BadRecord, ref: RecordRef) -> None:
        self.counters.skipped[e.reason] = self.counters.skipped.get(e.reason, 0) + 1
        if self._logged < self.max_logged:
            self._logged += 1
            log.warning("%s: skipped %s line %d (%s)", self.name, self.shards[ref[0]], ref[2] + 1, e)

    def _load_block(self) -> None:
        assert self.reader is not None
        start = self._next
        if self._start is not None and start.epoch != self._start.epoch:
            self._end_epoch(self._start.epoch)
        if self.max_epochs is not None and start.epoch >= self.max_epochs:
            raise _EpochsDone
        block_no = self._block_no + 1 if self._start is not None and self._start.epoch == start.epoch else 0
        block, nxt = self.reader.read_block(start, self.shuffle_block)
        self._shuffle(block, start.epoch, block_no)
        self._start, self._next, self._block, self._block_no, self._taken = start, nxt, block, block_no, 0
        self._epoch_records += len(block)

    def _shuffle(self, block: list[tuple[RecordRef, bytes]], epoch: int, block_no: int) -> None:
        assert self.reader is not None
        key = ("block", self.seed, self.name, self.reader.unit, self.reader.n_units, epoch, block_no)
        random.Random(derive_seed(*key)).shuffle(block)

    def _end_epoch(self, epoch: int) -> None:
        # A unit that reads nothing, or nothing usable, in a whole epoch would spin forever.
        assert self.reader is not None
        where = f"source {self.name!r}, data unit {self.reader.unit} of {self.reader.n_units}"
        if self._epoch_records == 0:
            raise DataError(f"{where}: no records in epoch {epoch} ({len(self.shards)} shard(s)); "
                            "use more data or fewer ranks / dataloader workers")
        if self._epoch_samples == 0:
            raise DataError(f"{where}: none of the {self._epoch_records} records of epoch {epoch} is usable "
                            f"(skipped: {self.counters.skipped})")
        self._epoch_records = self._epoch_samples = 0

    def rebuild(self, origin: Origin) -> Sample | None:
        """The sample of a record read before (a resumed stream re-reads the samples that were
        waiting to be packed); None, counted as skipped, if it no longer builds."""
        assert self.reader is not None
        _, _, shard, offset, number = origin
        try:
            return self._build(origin, self.reader.read_line(shard, offset))
        except BadRecord as e:
            self._skip(e, (shard, offset, number))
            return None

    # -- resuming

    def state_dict(self) -> dict[str, Any]:
        """The exact position (plus counters), as plain JSON-able data."""
        return {
            "shards": self.fingerprint,
            "content": self.content_fingerprint,
            "start": dataclasses.asdict(self._start) if self._start is not None else None,
            "next": dataclasses.asdict(self._next),
            "block_no": self._block_no,
            "taken": self._taken,
            "epoch_records": self._epoch_records,
            "epoch_samples": self._epoch_samples,
            "records": self.counters.records,
            "samples": self.counters.samples,
            "skipped": dict(self.counters.skipped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by `state_dict` (after `bind` with the same unit layout)."""
        if self.reader is None:
            raise RuntimeError("SampleSource.load_state_dict() before bind()")
        if state["shards"] != self.fingerprint:
            raise DataError(f"source {self.name!r}: the data files changed since the checkpoint (names or sizes "
                            f"of the {len(self.shards)} shard(s)); cannot resume the data position")
        if state.get("content", self.content_fingerprint) != self.content_fingerprint:  # (older states: none)
            raise DataError(changed_content_message(self.name, len(self.shards)))
        self._reset_position()
        self.counters = _SourceCounters(int(state["records"]), int(state["samples"]), dict(state["skipped"]))
        self._epoch_records, self._epoch_samples = int(state["epoch_records"]), int(state["epoch_samples"])
        self._next = Cursor(**state["next"])
        if state["start"] is not None:
            start = Cursor(**state["start"])
            block, nxt = self.reader.read_block(start, self.shuffle_block)
            if nxt != self._next:
                raise DataError(f"source {self.name!r}: the data files changed since the checkpoint; "
                                "cannot resume the data position")
            self._block_no = int(state["block_no"])
            self._shuffle(block, start.epoch, self._block_no)
            self._start, self._block, self._taken = start, block, int(state["taken"])
