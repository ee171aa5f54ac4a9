"""The training data stream: sources -> mixing -> packing -> `PackedBatch`, resumable.

Each rank runs `num_workers` dataloader workers (or the main process when 0), and each of
those is one "data unit" that owns its part of every source, its own mixer and its own
packer, and produces whole batches. The DataLoader hands the units' batches out round-robin,
so the stream's k-th batch always comes from unit k % num_workers. A unit attaches its state
to every batch it yields; the stream keeps the state that goes with the last batch handed
out from each unit, which is exactly what a resumed run needs: on resume every unit restarts
from its own state and the round-robin starts at the unit whose turn it was.

    stream = build_train_stream(data_cfg, processor, model_cfg, seq_len=4096, batch_rows=1,
                                ratio=stage.data_ratio, seed=0, rank=rank, world_size=world)
    batch = next(stream)                 # a PackedBatch
    state = stream.state_dict()          # JSON-able; save it with the checkpoint
    stream.load_state_dict(state)        # in a fresh run: continue with the same batches
    stream.stats().as_dict()             # skipped records, packing efficiency, realised mix
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from openjanus.config import ConfigError, JanusConfig
from openjanus.model.vq import VQModel
from openjanus.processing import JanusProcessor
from openjanus.train.batch import DATA_KINDS, PackedBatch
from openjanus.train.data import (
    DataConfig,
    DataError,
    SampleBuilder,
    SampleSource,
    changed_content_message,
    content_fingerprint,
    discover_shards,
)
from openjanus.train.mixing import Mixer, parse_ratio
from openjanus.train.packing import Packer, pack_rows
from openjanus.train.sequences import Sample

__all__ = ["DataStats", "PackedDataset", "TrainStream", "build_train_stream", "cpu_vq_copy"]

STATE_VERSION = 1

# What a terminal's Ctrl-C, a scheduler's preemption and torchrun send to a whole process group.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _ignore_stop_signals(worker_id: int) -> None:
    # A dataloader worker runs this first. SIGINT/SIGTERM sent to the process group reach the
    # workers too; if they died of it, the main process could not finish its step and write
    # the checkpoint. The main process decides when to stop and shuts its workers down itself.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@dataclass
class DataStats:
    """Cumulative counters of a stream (all units of this rank), for logging."""

    batches: int = 0
    real_tokens: int = 0
    total_tokens: int = 0
    samples: dict[str, int] = field(default_factory=dict)  # task -> samples packed into batches
    tokens: dict[str, int] = field(default_factory=dict)  # task -> tokens packed into batches
    records: dict[str, int] = field(default_factory=dict)  # source -> records read (good and bad)
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> reason -> count
    epochs: dict[str, int] = field(default_factory=dict)  # source -> current epoch (max over units)

    @property
    def packing_efficiency(self) -> float:
        """Real tokens / all tokens of the batches so far."""
        return self.real_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def mix(self) -> dict[str, float]:
        """Realised share of samples per task."""
        total = sum(self.samples.values())
        return {k: v / total for k, v in self.samples.items()} if total else {}

    def add(self, other: DataStats) -> None:
        """Accumulate `other` into this one."""
        self.batches += other.batches
        self.real_tokens += other.real_tokens
        self.total_tokens += other.total_tokens
        for mine, theirs in ((self.samples, other.samples), (self.tokens, other.tokens), (self.records, other.records)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        for src, reasons in other.skipped.items():
            into = self.skipped.setdefault(src, {})
            for reason, n in reasons.items():
                into[reason] = into.get(reason, 0) + n
        for src, e in other.epochs.items():
            self.epochs[src] = max(self.epochs.get(src, 0), e)

    def as_dict(self, prefix: str = "data/") -> dict[str, float]:
        """Flat {name: value} for a metrics logger."""
        out: dict[str, float] = {f"{prefix}packing_efficiency": self.packing_efficiency,
                                 f"{prefix}batches": float(self.batches)}
        for k, v in self.mix.items():
            out[f"{prefix}mix/{k}"] = v
        for k, v in self.records.items():
            out[f"{prefix}records/{k}"] = float(v)
        for k, v in self.epochs.items():
            out[f"{prefix}epoch/{k}"] = float(v)
        for src, reasons in self.skipped.items():
            for reason, n in reasons.items():
                out[f"{prefix}skipped/{src}/{reason}"] = float(n)
        return out


def _unit_stats(state: Mapping[str, Any]) -> DataStats:
    p = state["packing"]
    stats = DataStats(p["batches"], p["real_tokens"], p["total_tokens"], dict(p["samples"]), dict(p["tokens"]))
    for name, s in state["sources"].items():
        stats.records[name] = s["records"]
        if s["skipped"]:
            stats.skipped[name] = dict(s["skipped"])
        stats.epochs[name] = (s["start"] or {"epoch": 0})["epoch"]
    if p["too_long"]:
        stats.skipped.setdefault("packer", {})["too_long"] = p["too_long"]
    return stats


class _Unit:
    # One data unit: its sources, mixer and packer, and the counters that go into its state.

    def __init__(self, sources: dict[str, SampleSource], mixer: Mixer, packer: Packer, pad_id: int,
                 image_size: int) -> None:
        self.sources = sources
        self.mixer = mixer
        self.packer = packer
        self.pad_id = pad_id
        self.image_size = image_size
        self.counters: dict[str, Any] = {"batches": 0, "real_tokens": 0, "total_tokens": 0,
                                         "samples": {t: 0 for t in DATA_KINDS}, "tokens": {t: 0 for t in DATA_KINDS}}

    def _draw(self) -> Sample:
        return self.sources[self.mixer.next()].next()

    def next_batch(self) -> PackedBatch:
        rows = self.packer.next_rows(self._draw)
        batch = pack_rows(rows, self.packer.seq_len, self.pad_id, self.image_size)
        c = self.counters
        c["batches"] += 1
        c["total_tokens"] += self.packer.seq_len * self.packer.batch_rows
        for row in rows:
            for s in row:
                c["samples"][DATA_KINDS[s.task]] += 1
                c["tokens"][DATA_KINDS[s.task]] += len(s)
                c["real_tokens"] += len(s)
        return batch

    def state_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "sources": {name: src.state_dict() for name, src in self.sources.items()},
            "mixer": self.mixer.state_dict(),
            "pending": [list(s.origin) for s in self.packer.pending if s.origin is not None],
            "packing": {**c, "samples": dict(c["samples"]), "tokens": dict(c["tokens"]),
                        "too_long": self.packer.too_long},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, src in self.sources.items():
            if name in state["sources"]:
                src.load_state_dict(state["sources"][name])
        self.mixer.load_state_dict(state["mixer"])
        pending = []
        for origin in state["pending"]:
            name = origin[0]
            if name in self.sources:
                s = self.sources[name].rebuild(tuple(origin))  # type: ignore[arg-type]
                if s is not None:
                    pending.append(s)
        self.packer.pending = pending
        p = state["packing"]
        self.counters = {"batches": p["batches"], "real_tokens": p["real_tokens"], "total_tokens": p["total_tokens"],
                         "samples": {t: p["samples"].get(t, 0) for t in DATA_KINDS},
                         "tokens": {t: p["tokens"].get(t, 0) for t in DATA_KINDS}}
        self.packer.too_long = p["too_long"]


class PackedDataset(IterableDataset):
    """Yields (unit, PackedBatch, unit state) forever; one unit per dataloader worker."""

    def __init__(
        self,
        sources: Mapping[str, tuple[Sequence[Path], SampleBuilder]],
        ratio: Mapping[str, float],
        seq_len: int,
        batch_rows: int,
        pad_id: int,
        image_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_block: int = 1024,
        max_pending: int = 8,
        max_logged: int = 20,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside [0, world_size={world_size})")
        self.sources = {name: (list(shards), builder) for name, (shards, builder) in sources.items()}
        self.ratio = dict(ratio)
        self.seq_len = seq_len
        self.batch_rows = batch_rows
        self.pad_id = pad_id
        self.image_size = image_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_block = shuffle_block
        self.max_pending = max_pending
        self.max_logged = max_logged
        self.resume_units: dict[int, dict[str, Any]] = {}  # logical unit -> state to start from
        self.rotation = 0  # the dataloader's worker w plays logical unit (w + rotation) % n_workers

    @property
    def n_workers(self) -> int:
        return max(self.num_workers, 1)

    def build_unit(self, logical: int) -> _Unit:
        """Logical unit `logical` of this rank, at its resume state if one is set."""
        unit = self.rank * self.n_workers + logical
        n_units = self.world_size * self.n_workers
        sources = {
            name: SampleSource(name, shards, builder, seed=self.seed, shuffle_block=self.shuffle_block,
                               max_logged=self.max_logged).bind(unit, n_units)
            for name, (shards, builder) in self.sources.items()
        }
        mixer = Mixer(self.ratio, seed=self.seed, salt=("unit", unit, n_units))
        out = _Unit(sources, mixer, Packer(self.seq_len, self.batch_rows, self.max_pending), self.pad_id,
                    self.image_size)
        if logical in self.resume_units:
            out.load_state_dict(self.resume_units[logical])
        return out

    def __iter__(self) -> Iterator[tuple[int, PackedBatch, dict[str, Any]]]:
        info = get_worker_info()
        worker = 0
        if info is not None:
            if info.num_workers != self.n_workers:
                raise RuntimeError(f"PackedDataset was set up for {self.n_workers} workers, runs in {info.num_workers}")
            worker = info.id
        logical = (worker + self.rotation) % self.n_workers
        unit = self.build_unit(logical)
        while True:
            batch = unit.next_batch()
            yield logical, batch, unit.state_dict()


class TrainStream:
    """An endless iterator of `PackedBatch` for one rank, with `state_dict` / `load_state_dict`
    for exact resumption and `stats()` for logging. Build it with `build_train_stream`."""

    def __init__(self, dataset: PackedDataset, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.consumed = 0
        self._units: dict[int, dict[str, Any]] = {}
        self._it: Iterator[tuple[int, PackedBatch, dict[str, Any]]] | None = None

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> PackedBatch:
        if self._it is None:
            self._start()
        assert self._it is not None
        unit, batch, state = next(self._it)
        self._units[unit] = state
        self.consumed += 1
        if self.pin_memory:
            batch = PackedBatch(**{f.name: getattr(batch, f.name).pin_memory() for f in dataclasses.fields(batch)})
        return batch

    def _start(self) -> None:
        self.dataset.resume_units = dict(self._units)
        self.dataset.rotation = self.consumed % self.dataset.n_workers
        if self.num_workers == 0:
            self._it = iter(self.dataset)
        else:
            loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                prefetch_factor=self.prefetch_factor, persistent_workers=False,
                                worker_init_fn=_ignore_stop_signals)
            # The workers start blocking the stop signals, so none can kill one before it ignores
            # them; a signal that arrives meanwhile reaches this process when they are unblocked.
            before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                self._it = iter(loader)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def close(self) -> None:
        """Stop the worker processes (a later `next` starts them again from the current state)."""
        self._it = None  # the multiprocessing iterator shuts its workers down when released

    def state_dict(self) -> dict[str, Any]:
        """The data position after the last batch handed out (plain JSON-able data)."""
        d = self.dataset
        return {
            "version": STATE_VERSION,
            "seed": d.seed,
            "rank": d.rank,
            "world_size": d.world_size,
            "num_workers": d.n_workers,
            "consumed": self.consumed,
            "units": {str(k): v for k, v in sorted(self._units.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state`. Seed, rank, world size and worker count must match the run
        that saved it (they decide which data each unit reads); the mix ratio, seq_len and
        batch rows may change (e.g. a new stage), the position in every source is kept."""
        d = self.dataset
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data state version {state.get('version')} is not {STATE_VERSION}")
        for key, now in (("seed", d.seed), ("rank", d.rank), ("world_size", d.world_size),
                         ("num_workers", d.n_workers)):
            if state[key] != now:
                raise DataError(f"cannot resume the data position: {key} was {state[key]}, is now {now} "
                                "(it decides which records each rank and worker reads)")
        # Checked here, in this process, so a changed dataset is one clear error rather than a
        # failure inside a dataloader worker.
        for name, (shards, _) in d.sources.items():
            saved = {u["sources"][name].get("content") for u in state["units"].values() if name in u["sources"]}
            saved.discard(None)  # states written before content was recorded
            if saved and saved != {content_fingerprint(shards)}:
                raise DataError(changed_content_message(name, len(shards)))
        self.close()
        self.consumed = int(state["consumed"])
        self._units = {int(k): v for k, v in state["units"].items()}

    def stats(self) -> DataStats:
        """Counters of this rank so far (skipped records by reason, packing, realised mix)."""
        total = DataStats()
        for state in self._units.values():
            total.add(_unit_stats(state))
        return total


def cpu_vq_copy(vq: VQModel) -> VQModel:
    """A frozen float32 CPU copy of a VQ tokenizer, for encoding images in dataloader workers."""
    with torch.device("meta"):
        out = VQModel(vq.cfg)
    state = {}
    for k, v in vq.state_dict().items():
        v = v.full_tensor() if hasattr(v, "full_tensor") else v  # a DTensor under FSDP
        state[k] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
    out.load_state_dict(state, assign=True)
    return out.eval().requires_grad_(False)


def build_train_stream(
    data: DataConfig | Mapping[str, Any],
    processor: JanusProcessor,
    model_cfg: JanusConfig,
    seq_len: int,
    batch_rows: int,
    ratio: Mapping[str, float] | Sequence[float],
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    vq: VQModel | None = None,
) -> TrainStream:
    """The packed training stream of one rank.

    `ratio` is the stage's und : text : gen mix, over samples; a source with weight 0 is not
    read and may be absent from `data`. `vq` (the frozen VQ tokenizer) is only needed when
    text-to-image records name raw images instead of pre-tokenized codes.
    """
    cfg = data if isinstance(data, DataConfig) else DataConfig.from_dict(data)
    weights = parse_ratio(ratio)
    if processor.num_und_tokens != model_cfg.num_und_tokens or processor.num_gen_tokens != model_cfg.num_gen_tokens:
        raise ConfigError(f"processor image tokens (und {processor.num_und_tokens}, gen {processor.num_gen_tokens}) "
                          f"do not match the model's ({model_cfg.num_und_tokens}, {model_cfg.num_gen_tokens})")
    if seq_len < 1 or batch_rows < 1:
        raise ConfigError(f"seq_len {seq_len} and batch_rows {batch_rows} must be >= 1")
    worker_vq = cpu_vq_copy(vq) if vq is not None and weights["gen"] > 0 else None
    sources: dict[str, tuple[list[Path], SampleBuilder]] = {}
    for name, w in weights.items():
        if w <= 0:
            continue
        src = cfg.source_of(name)
        if src is None:
            raise ConfigError(f"the data ratio gives {name!r} weight {w:g} but data.{name} is not configured")
        builder = SampleBuilder(
            name, processor, seq_len, image_root=src.image_root, system_prompt=cfg.system_prompt,
            p_uncond=cfg.p_uncond, p_first_sentence=cfg.p_first_sentence,
            codebook_size=model_cfg.vq.codebook_size, gen_image_size=model_cfg.vq.image_size,
            vq=worker_vq if name == "gen" else None,
        )
        sources[name] = (discover_shards(src.paths), builder)
    dataset = PackedDataset(
        sources, weights, seq_len, batch_rows, pad_id=processor.tokenizer.pad_id,
        image_size=processor.image_config.image_size, seed=seed, rank=rank, world_size=world_size,
        num_workers=cfg.num_workers, shuffle_block=cfg.shuffle_block, max_pending=cfg.max_pending,
        max_logged=cfg.max_logged_bad_records,
    )
    return TrainStream(dataset, cfg.num_workers, cfg.prefetch_factor, cfg.pin_memory)
