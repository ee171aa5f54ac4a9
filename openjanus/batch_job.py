"""Batch generation of a prompt file: `openjanus generate --prompts FILE.jsonl --out DIR`.

Each line of the prompt file is a JSON object: `prompt` (required), and optionally `id`, `n`
(images), `seed`, `guidance`, `size` and `meta` (any JSON, copied into the manifest). Every
image is its own unit of work with its own seed, derived from its line and its index alone:
the line's `seed` + index when the line gives one, else a hash of (--seed, id, index). So the
outputs do not depend on how many processes share the work, nor on which one ran an image, and
`openjanus generate PROMPT --seed S` re-creates any image from its manifest record.

Under torchrun every rank reads the file and the folder, the pending images are dealt out
round-robin (a disjoint shard per rank), and each rank writes its images as they finish:
image and tokens files atomically (a temporary name, then a rename), then one line in its own
part file `parts/<run>-rank<r>.jsonl`. A kill loses at most the images in flight. When every
rank is done, rank 0 merges the parts into `manifest.jsonl`, in prompt-file order, so a
finished job's files are the same bytes for any number of processes. A re-run reads the
manifest and any parts a crash left, and generates only what is missing.

Output folder:
    job.json                   the prompt file's name and the settings that shape the images
    manifest.jsonl             one record per image: id, index, prompt, seed, guidance, file, tokens
    images/<id>-<index>.png
    tokens/<id>-<index>.npy    the image's token ids, int64 [num_gen_tokens]
    parts/                     records of runs not merged yet (a crash, or a run in progress)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from openjanus.canvas import Geometry, check_size, parse_size
from openjanus.errors import UserError
from openjanus.files import atomic_path, write_json
from openjanus.requests import MAX_SEED

__all__ = ["PromptLine", "ImageUnit", "BatchSettings", "read_prompt_file", "image_seed", "run_batch_job"]

FIELDS = ("prompt", "id", "n", "seed", "guidance", "size", "meta")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_IMAGES_PER_LINE = 100_000


@dataclass(frozen=True)
class PromptLine:
    """One valid line of the prompt file."""

    line: int  # 1-based line number
    id: str
    prompt: str
    n: int = 1
    seed: int | None = None
    guidance: float | None = None
    meta: Any = None
    size: tuple[int, int] | None = None  # (width, height) in pixels; None: the model's native size


@dataclass(frozen=True)
class ImageUnit:
    """One image of one line: the unit a rank generates and a re-run skips."""

    line: PromptLine
    index: int
    seed: int
    guidance: float

    @property
    def key(self) -> tuple[str, int]:
        return self.line.id, self.index

    @property
    def stem(self) -> str:
        return f"{self.line.id}-{self.index}"

    def record(self) -> dict[str, Any]:
        rec = {"id": self.line.id, "index": self.index, "prompt": self.line.prompt, "seed": self.seed,
               "guidance": self.guidance, "file": f"images/{self.stem}.png", "tokens": f"tokens/{self.stem}.npy"}
        if self.line.meta is not None:
            rec["meta"] = self.line.meta
        return rec


@dataclass(frozen=True)
class BatchSettings:
    """What shapes the images besides the prompt file; a re-run must use the same."""

    weights: str  # model and weight format (JanusPipeline.weights)
    temperature: float
    top_k: int | None
    top_p: float | None
    guidance: float  # for lines without their own
    seed: int  # base of the derived seeds, for lines without their own
    jacobi: int | str  # a window, or "auto"
    jacobi_sampler: str | None = None  # with a window (None without: it shapes nothing then)
    # Rows verifying each window, where they shape the sampled images (mcsjd/sjd); None elsewhere.
    jacobi_branches: int | None = None


def image_seed(base_seed: int, line: PromptLine, index: int) -> int:
    """The seed of image `index` of `line`: from the line and the index alone, never the rank."""
    if line.seed is not None:
        return (line.seed + index) % (MAX_SEED + 1)
    digest = hashlib.blake2b(f"{base_seed}\0{line.id}\0{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_SEED


# --- the prompt file ------------------------------------------------------------------------------


def _parse_size(value: Any, geometry: Geometry) -> tuple[int, int] | None:
    """A line's size: 'WIDTHxHEIGHT' (or one integer for a square) that the model can make, by the
    same rules as `generate --size`; None for the native size."""
    native = geometry.native_px
    if isinstance(value, int) and not isinstance(value, bool):
        w = h = value
    elif isinstance(value, str):
        try:
            w, h = parse_size(value)
        except UserError as e:
            raise ValueError(str(e)) from None
    else:
        raise ValueError(f"size must be 'WIDTHxHEIGHT' (e.g. '{native}x{native}'), got {value!r}")
    try:
        check_size(w, h, geometry)
    except UserError as e:
        raise ValueError(f"size {w}x{h}: {e}") from None
    return None if (w, h) == (native, native) else (w, h)


def _parse_line(obj: Any, number: int, geometry: Geometry) -> PromptLine:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(map(repr, unknown))}; a line may hold {', '.join(FIELDS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    raw_id = obj.get("id", f"line{number}")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not ID_PATTERN.fullmatch(raw_id):
        raise ValueError(f"'id' must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
                         f"got {raw_id!r}")
    n = obj.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES_PER_LINE:
        raise ValueError(f"'n' must be an integer in [1, {MAX_IMAGES_PER_LINE}], got {n!r}")
    seed = obj.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"'seed' must be an integer in [0, 2**63 - 1], got {seed!r}")
    guidance = obj.get("guidance")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance)):
        raise ValueError(f"'guidance' must be a finite number, got {guidance!r}")
    size = _parse_size(obj["size"], geometry) if obj.get("size") is not None else None
    return PromptLine(number, raw_id, prompt, n, seed, None if guidance is None else float(guidance), obj.get("meta"),
                      size)


def read_prompt_file(path: Path, geometry: Geometry) -> tuple[list[PromptLine], list[str]]:
    """The valid lines, and one message per malformed line ("FILE:LINE: what is wrong").
    Blank lines are skipped; an id used twice is an error on its second line."""
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}")
    lines: list[PromptLine] = []
    problems: list[str] = []
    first_line_of: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"not valid JSON ({e.msg}, column {e.colno})") from None
            line = _parse_line(obj, number, geometry)
            if line.id in first_line_of:
                raise ValueError(f"id {line.id!r} is already used on line {first_line_of[line.id]}")
        except ValueError as e:
            problems.append(f"{path}:{number}: {e}")
            continue
        first_line_of[line.id] = number
        lines.append(line)
    if not lines and not problems:
        raise UserError(f"{path}: no prompts (the file is empty)")
    return lines, problems


def plan_units(lines: list[PromptLine], settings: BatchSettings) -> list[ImageUnit]:
    """Every image of the file, in file order."""
    return [ImageUnit(line, j, image_seed(settings.seed, line, j),
                      settings.guidance if line.guidance is None else line.guidance)
            for line in lines for j in range(line.n)]


# --- the output folder ----------------------------------------------------------------------------


def _read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a manifest or part file. A last line without its newline was cut by a crash
    and is ignored (its image is generated again); any other bad line is an error."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for number, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not valid JSON; this file is written by openjanus and "
                            "should not be edited (pass --overwrite to start the job again)") from None
        if not isinstance(rec, dict) or not {"id", "index", "prompt", "seed", "file", "tokens"} <= set(rec):
            raise UserError(f"{path}:{number}: not a manifest record (pass --overwrite to start the job again)")
        records.append(rec)
    del tail  # incomplete: its image is generated again
    return records


@dataclass
class FolderState:
    """What a folder holds from earlier runs of a job."""

    job: dict[str, Any] | None = None
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    part_files: list[Path] = field(default_factory=list)


def read_folder(out: Path) -> FolderState:
    state = FolderState()
    job = out / "job.json"
    if job.is_file():
        try:
            state.job = json.loads(job.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"{job} is not valid JSON (pass --overwrite to start the job again)") from None
    sources = [out / "manifest.jsonl"] if (out / "manifest.jsonl").is_file() else []
    state.part_files = sorted((out / "parts").glob("*.jsonl")) if (out / "parts").is_dir() else []
    for path in sources + state.part_files:
        for rec in _read_records(path):
            # A record counts only while its files exist (a folder copied in part, files deleted).
            if (out / rec["file"]).is_file() and (out / rec["tokens"]).is_file():
                state.records[(rec["id"], rec["index"])] = rec
    return state


def folder_conflict(state: FolderState, prompts: Path, settings: BatchSettings,
                    units: dict[tuple[str, int], ImageUnit]) -> str | None:
    """Why the folder's earlier outputs do not belong to this prompt file and these settings
    (None when they do, or when there are none)."""
    if state.job is None and not state.records:
        return None
    if state.job is not None:
        before = state.job.get("settings", {})
        for name, value in vars(settings).items():
            if before.get(name) != value:
                return f"its images were made with {name} = {before.get(name)!r}, this run has {value!r}"
    for key, rec in state.records.items():
        unit = units.get(key)
        if unit is None:
            return f"it holds image {key[1]} of id {key[0]!r}, which {prompts.name} does not ask for"
        if unit.record() != rec:
            return (f"its image {key[1]} of id {key[0]!r} was made from another line "
                    f"(prompt {rec['prompt']!r}, seed {rec['seed']}; {prompts.name} line {unit.line.line} "
                    f"asks for prompt {unit.line.prompt!r}, seed {unit.seed})")
    return None


def clear_folder(out: Path, state: FolderState) -> None:
    """Remove a job's outputs (the files its records name, its parts, manifest and job.json);
    nothing else in the folder."""
    for rec in state.records.values():
        (out / rec["file"]).unlink(missing_ok=True)
        (out / rec["tokens"]).unlink(missing_ok=True)
    for path in [*state.part_files, out / "manifest.jsonl", out / "job.json"]:
        path.unlink(missing_ok=True)


def write_manifest(out: Path, units: list[ImageUnit]) -> int:
    """Merge the manifest and every part into manifest.jsonl, in prompt-file order (atomically),
    then remove the parts. Returns the number of records."""
    state = read_folder(out)
    order = {u.key: i for i, u in enumerate(units)}
    records = sorted((r for k, r in state.records.items() if k in order), key=lambda r: order[(r["id"], r["index"])])
    with atomic_path(out / "manifest.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    for path in state.part_files:  # merged: a crash before this line leaves duplicates, read once
        path.unlink(missing_ok=True)
    return len(records)


def write_image(out: Path, unit: ImageUnit, image, tokens: np.ndarray) -> None:
    """The image and its tokens, each under a temporary name and then renamed."""
    rec = unit.record()
    with atomic_path(out / rec["file"]) as tmp:
        image.save(tmp, format="PNG")
    with atomic_path(out / rec["tokens"]) as tmp, tmp.open("wb") as f:
        np.save(f, tokens.astype(np.int64))


# --- the run --------------------------------------------------------------------------------------


class _Dist:
    """The torchrun process group, or one process without it."""

    def __init__(self, device: torch.device) -> None:
        from openjanus.distributed import barrier, init_distributed

        self.info = init_distributed(device)
        self.barrier = barrier

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world(self) -> int:
        return self.info.world_size

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class _Progress:
    """A bar per rank and, on rank 0 with several ranks, a bar for the whole job (fed by the
    lines the ranks append to their part files, so it works across nodes on a shared folder)."""

    def __init__(self, dist: _Dist, mine: int, total: int, done_before: int, parts: list[Path]) -> None:
        from tqdm.auto import tqdm

        self.dist, self.parts = dist, parts
        self.offsets = [0] * len(parts)
        self.counted = done_before
        several = dist.world > 1
        self.total = tqdm(total=total, initial=done_before, desc="total", unit="img", position=0,
                          dynamic_ncols=True) if dist.rank == 0 and several else None
        desc = f"rank {dist.rank}/{dist.world}" if several else "images"
        self.bar = tqdm(total=mine if several else total, initial=0 if several else done_before, desc=desc,
                        unit="img", position=dist.rank + 1 if several else 0, dynamic_ncols=True, leave=True)

    def step(self) -> None:
        self.bar.update(1)
        self.poll()

    def poll(self) -> None:
        if self.total is None:
            return
        for i, path in enumerate(self.parts):
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets[i])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1
            self.offsets[i] += end
            self.counted += chunk[:end].count(b"\n")
        self.total.update(min(self.counted, self.total.total) - self.total.n)

    def close(self) -> None:
        self.bar.close()
        if self.total is not None:
            self.poll()
            self.total.close()


def run_batch_job(prompts: Path, out: Path, *, load: Callable[[], Any], settings_of: Callable[[Any], BatchSettings],
                  request_of: Callable[[ImageUnit], Any], geometry: Geometry, device: torch.device,
                  on_bad_line: Literal["stop", "skip"] = "stop", overwrite: bool = False,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate every missing image of `prompts` into `out`: under torchrun, this rank's share.

    `load()` loads the pipeline on `device` (after the prompt file is checked, so a bad file
    fails before a model loads); `settings_of(pipe)` gives the settings that shape the images;
    `request_of(unit)` builds the unit's `ImageRequest`. Returns this rank's summary.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    dist = _Dist(device)
    finished = False
    try:
        summary = _run(dist, load, prompts, out, settings_of, geometry, on_bad_line, overwrite, request_of, log)
        finished = True
        return summary
    finally:
        from openjanus.distributed import destroy

        destroy(wait_for_all=finished)


def _run(dist: _Dist, load, prompts: Path, out: Path, settings_of, geometry: Geometry, on_bad_line: str,
         overwrite: bool, request_of, log) -> dict[str, Any]:
    main = dist.rank == 0
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    lines, problems = read_prompt_file(prompts, geometry)
    if problems:
        if main:
            for p in problems[:20]:
                log(f"{'error' if on_bad_line == 'stop' else 'skipped'}: {p}")
            if len(problems) > 20:
                log(f"... and {len(problems) - 20} more malformed line(s)")
        if on_bad_line == "stop":
            raise UserError(f"{prompts} has {len(problems)} malformed line(s) (listed above); fix them, or pass "
                            "--on-bad-line skip to generate the other lines (a re-run fills in fixed lines)")
    if not lines:
        raise UserError(f"{prompts}: no valid lines to generate")
    with load() as pipe:  # the job owns its pipeline: closed (engine thread, KV cache) when it ends
        return _run_with(dist, pipe, prompts, out, lines, problems, settings_of, overwrite, request_of, log)


def _run_with(dist: _Dist, pipe, prompts: Path, out: Path, lines: list[PromptLine], problems: list[str],
              settings_of, overwrite: bool, request_of, log) -> dict[str, Any]:
    main = dist.rank == 0
    settings = settings_of(pipe)
    units = plan_units(lines, settings)
    by_key = {u.key: u for u in units}

    state = read_folder(out) if out.is_dir() else FolderState()
    conflict = folder_conflict(state, prompts, settings, by_key)
    if conflict and not overwrite:
        raise UserError(f"{out} holds another job's outputs: {conflict}; choose another folder, or pass "
                        "--overwrite to replace them")
    # Every rank has read the folder before rank 0 changes it.
    dist.barrier()
    if main:
        if overwrite:
            clear_folder(out, state)
        for sub in ("images", "tokens", "parts"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        write_json(out / "job.json", {"prompts": prompts.name, "settings": vars(settings)})
    run_id = dist.broadcast(f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    dist.barrier()
    if overwrite:  # on every rank: the folder holds nothing of earlier runs now
        state = FolderState()

    pending = [u for u in units if u.key not in state.records]
    mine = pending[dist.rank::dist.world]
    parts = [out / "parts" / f"{run_id}-rank{r}.jsonl" for r in range(dist.world)]
    progress = _Progress(dist, len(mine), len(units), len(units) - len(pending), parts)
    t0 = time.perf_counter()
    written = 0
    try:
        with parts[dist.rank].open("a", encoding="utf-8") as part:
            written = _generate(pipe, mine, out, part, request_of, progress)
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    log(f"rank {dist.rank}/{dist.world}: {written} image(s) in {seconds:.1f} s "
        f"({written / seconds if seconds else 0:.2f} images/s)")
    # A rank that failed raised above; the others reach the merge only when every rank is done.
    dist.barrier()
    summary = {"rank": dist.rank, "world": dist.world, "images": written, "seconds": seconds}
    if main:
        wall = time.perf_counter() - t0
        count = write_manifest(out, units)
        new = len(pending)
        skipped = f", {len(problems)} malformed line(s) skipped" if problems else ""
        log(f"total: {new} new image(s) in {wall:.1f} s ({new / wall if wall else 0:.2f} images/s) on "
            f"{dist.world} process(es), {len(units) - new} done before{skipped}; {count} image(s) in "
            f"{out / 'manifest.jsonl'}")
        summary.update(total_new=new, wall_seconds=wall, manifest_records=count)
    return summary


def _generate(pipe, mine: list[ImageUnit], out: Path, part, request_of, progress: _Progress) -> int:
    """Keep the engine's batch full: up to `window` images in flight, written in order as they
    finish (the next ones decode meanwhile)."""
    from collections import deque

    engine = pipe.engine
    window = max(2, engine.config.rows)  # two batches' worth of images: one running, one queued
    queue: deque = deque()
    written = 0
    try:
        for unit in mine:
            queue.append((unit, engine.submit(request_of(unit), wait=True)))
            if len(queue) < window:
                continue
            written += _finish_one(queue, out, part, progress)
        while queue:
            written += _finish_one(queue, out, part, progress)
    except BaseException:
        for _, handle in queue:
            handle.cancel()
        raise
    return written


def _finish_one(queue, out: Path, part, progress: _Progress) -> int:
    unit, handle = queue.popleft()
    while not handle.wait(0.5):
        progress.poll()
    result = handle.result()
    write_image(out, unit, result.images[0], result.tokens[0].numpy())
    part.write(json.dumps(unit.record(), ensure_ascii=False) + "\n")
    part.flush()  # the record reaches the file before the next image: a kill loses only those in flight
    progress.step()
    return 1
