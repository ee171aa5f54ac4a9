"""Training checkpoints: atomic, resumable, carrying their config and stage; export for inference.

A checkpoint is a folder ``OUTPUT/checkpoints/step_00001000/`` holding

* ``model.safetensors``   the trained model's full state dict, in our module names;
* ``optimizer.pt``        the optimiser state keyed by parameter name (independent of the
                          number of processes and of FSDP), loaded with ``weights_only=True``;
* ``train_state.json``    step, task, stage, model config, the whole TrainConfig, scheduler
                          state, world size and counters;
* ``rng_rank{r}.pt``      each process's Python, NumPy, torch CPU and CUDA generator states;
* ``data_rank{r}.pt``     each process's data-stream position (its ``state_dict()``).

Everything is written into a hidden temporary folder that is renamed into place only when
complete, so a crash (or a kill) never leaves a partial checkpoint under a ``step_*`` name;
resuming picks the highest complete step. With FSDP2 the full state dicts are gathered with
`torch.distributed.checkpoint.state_dict` and rank 0 writes them; every rank writes its own
RNG and data files, so the output folder must be shared by all nodes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from openjanus.checkpoints import load_model, save_model
from openjanus.checkpoints.io import save_tensors
from openjanus.checkpoints.weights import export_part, open_weights
from openjanus.distributed import DistInfo, barrier
from openjanus.errors import CheckpointError, UserError
from openjanus.files import write_json

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    """Counters that travel with a checkpoint."""

    step: int = 0  # optimiser steps completed
    tokens_seen: int = 0  # real tokens (or image units) over all processes
    extra: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False  # stopped by SIGINT/SIGTERM after a checkpoint (not saved)


def checkpoints_root(output_dir: str | Path) -> Path:
    """OUTPUT/checkpoints."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under OUTPUT/checkpoints, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def is_complete(folder: Path) -> bool:
    """Whether a checkpoint folder holds its state, optimiser and weights files (a folder
    that lost some of them, e.g. to a prune cut short by older versions, is not a checkpoint)."""
    return ((folder / "train_state.json").is_file() and (folder / "optimizer.pt").is_file()
            and any(folder.glob("*.safetensors")))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


# --- RNG state --------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator the training process draws from, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's device only: touching every GPU would create a context on each.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- model and optimiser state (plain or FSDP2) -----------------------------------------------


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather_model_state(objective: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict of `objective.model` in our names (complete on rank 0). A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(objective, options=_options(cpu_offload=True))
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def gather_optimizer_state(objective: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Full optimiser state keyed by parameter name (complete on rank 0). A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(objective, optimizer, options=_options(cpu_offload=True))


def load_model_state(objective: nn.Module, state: dict[str, torch.Tensor], dist_info: DistInfo) -> None:
    """Load a full state dict (our names) into `objective.model`, sharded or not. With several
    processes only rank 0's `state` is read; it is broadcast to the others."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    full = {f"model.{k}": v for k, v in state.items()}
    set_model_state_dict(objective, full, options=_options(broadcast_from_rank0=dist_info.distributed))


def load_optimizer_state(objective: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         dist_info: DistInfo) -> None:
    """Load a full, name-keyed optimiser state (rank 0's is broadcast with several processes)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # AdamW has no state yet for a parameter that has had no gradient (in one process, e.g. the
    # understanding aligner before the first image sample), so the load is not strict; and the
    # state the loader gives such a parameter (a zero-gradient step) is dropped, or its first
    # real step would be its second and the run would not continue exactly.
    set_optimizer_state_dict(objective, optimizer, state,
                             options=_options(broadcast_from_rank0=dist_info.distributed, strict=False))
    if not dist_info.distributed:  # (with several processes every parameter always has a gradient)
        saved = set(state.get("state", {}))
        for name, p in objective.named_parameters():
            if p in optimizer.state and name not in saved:
                del optimizer.state[p]


# --- save / load ------------------------------------------------------------------------------


def save_checkpoint(output_dir: str | Path, *, objective: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, data: Any, state: TrainState,
                    meta: dict[str, Any], dist_info: DistInfo = DistInfo(), keep_last: int | None = None) -> Path:
    """Write a checkpoint for `state.step` atomically; every process must call this.

    `meta` holds what describes the run (task, stage, model_config, train_config, ...).
    """

    root = checkpoints_root(output_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f".step_{state.step:08d}.tmp"
    model_state = gather_model_state(objective)
    optim_state = gather_optimizer_state(objective, optimizer)
    if dist_info.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*"):  # left by a kill during an earlier save or prune
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    torch.save(rng_state(), tmp / f"rng_rank{dist_info.rank}.pt")
    data_state = data.state_dict() if hasattr(data, "state_dict") else None
    torch.save({"state": data_state}, tmp / f"data_rank{dist_info.rank}.pt")
    if dist_info.is_main:
        save_tensors(model_state, tmp, metadata={"format": "pt", "openjanus": "training-checkpoint"})
        torch.save(optim_state, tmp / "optimizer.pt")
        write_json(tmp / "train_state.json", {
            "format_version": FORMAT_VERSION, "step": state.step, "tokens_seen": state.tokens_seen,
            "extra": state.extra, "world_size": dist_info.world_size, "has_data_state": data_state is not None,
            "scheduler": scheduler.state_dict(), **meta,
        })
    barrier()
    if dist_info.is_main:
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (a resumed run passing an older step)
            _discard(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        if keep_last:
            for _, old in list_checkpoints(output_dir)[:-keep_last]:
                _discard(old)
    barrier()
    return final


def _discard(folder: Path) -> None:
    # Renamed to a hidden name first (atomic), so a kill while deleting never leaves a folder
    # under a step_* name with some of its files gone.
    doomed = folder.with_name(f".{folder.name}.deleting")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    # Flush file data and the directory entry so a rename after a crash never exposes an
    # empty file; best effort where the platform does not allow opening directories.
    try:
        for p in path.iterdir():
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_train_state(folder: str | Path) -> dict[str, Any]:
    """The train_state.json of a checkpoint folder."""
    path = Path(folder) / "train_state.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a training checkpoint (no train_state.json)")
    return json.loads(path.read_text())


def read_tensors_matching(folder: str | Path, substring: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder whose names contain `substring` (only those are read)."""
    from safetensors import safe_open

    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if substring in key:
                    out[key] = f.get_tensor(key)
    return out


def read_model_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All weights of a training checkpoint folder, in the names of its task's model."""
    return open_weights(folder).materialise()


def load_checkpoint(folder: str | Path, *, objective: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, data: Any,
                    dist_info: DistInfo = DistInfo(), include_model: bool = True,
                    shared_data: bool = False) -> TrainState:
    """Restore model, optimiser, schedule, data position and RNG from a checkpoint folder.

    Call after the model is sharded and the optimiser built, before the first step; every
    process must call it. `include_model=False` skips the weights (already loaded).
    `shared_data`: the data position is the same in every process (post-training's prompt
    stream), so every process reads rank 0's and any number of processes may resume.
    """
    folder = Path(folder)
    meta = read_train_state(folder)
    if meta.get("world_size", 1) != dist_info.world_size and meta.get("has_data_state") and not shared_data:
        raise UserError(f"{folder} was written by {meta['world_size']} processes and holds their data positions; "
                        f"resume it with the same number of processes (now {dist_info.world_size})")
    if include_model:
        model_state = read_model_tensors(folder) if dist_info.is_main else {}
        load_model_state(objective, model_state, dist_info)
        del model_state
    optim_state = torch.load(folder / "optimizer.pt", map_location="cpu",
                             weights_only=True) if dist_info.is_main else {}
    load_optimizer_state(objective, optimizer, optim_state, dist_info)
    scheduler.load_state_dict(meta["scheduler"])
    data_file = folder / f"data_rank{0 if shared_data else dist_info.rank}.pt"
    if data_file.is_file():
        data_state = torch.load(data_file, map_location="cpu", weights_only=True)["state"]
        if data_state is not None and hasattr(data, "load_state_dict"):
            data.load_state_dict(data_state)
        elif data_state is None and dist_info.is_main:
            warnings.warn("the checkpoint has no data position: the data stream starts from its beginning",
                          stacklevel=2)
    rng_file = folder / f"rng_rank{dist_info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return TrainState(step=int(meta["step"]), tokens_seen=int(meta.get("tokens_seen", 0)), extra=meta.get("extra", {}))


# --- export -----------------------------------------------------------------------------------


# An export folder lists the files it wrote here, so that a later export with `overwrite`
# replaces exactly those and leaves everything else in the folder alone.
EXPORT_MANIFEST = ".openjanus-export.json"
# Files that a loader would take for (part of) the model's weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def _export_manifest(out: Path) -> set[str]:
    try:
        return set(json.loads((out / EXPORT_MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _check_export_target(out: Path, overwrite: bool, source: Path) -> None:
    # Before any work: an existing folder is only written into with `overwrite`.
    if out.exists() and not out.is_dir():
        raise UserError(f"export: {out} exists and is not a folder")
    if out.resolve() == source.resolve():
        raise UserError(f"export: {out} is the checkpoint being exported; choose another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"export: {out} is not empty ({len(names)} entries: {shown}); pass --overwrite to replace "
                        f"the files an export writes (the others are kept), or choose another folder")


def _publish(staging: Path, out: Path) -> list[str]:
    """Move the files of a finished export from `staging` into `out`, each with an atomic
    rename; remove what an earlier export there wrote and this one did not; keep the rest.
    Refuses (before moving anything) when `out` holds weight files no export wrote."""
    new = sorted(p.name for p in staging.iterdir())
    old = _export_manifest(out) if out.is_dir() else set()
    foreign = sorted(p.name for p in out.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)
                     and p.name not in old and p.name not in new) if out.is_dir() else []
    if foreign:
        raise UserError(f"export: {out} holds weight files that no export wrote ({', '.join(foreign[:3])}); a "
                        f"loader would mix them with the export's; move them away or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    for name in new:
        os.replace(staging / name, out / name)
    for name in sorted(old - set(new)):
        if "/" not in name and name != EXPORT_MANIFEST:
            (out / name).unlink(missing_ok=True)
    tmp = out / f"{EXPORT_MANIFEST}.tmp"
    tmp.write_text(json.dumps({"files": new}, indent=1))
    os.replace(tmp, out / EXPORT_MANIFEST)
    return new


def export_checkpoint(folder: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                      tokenizer_dir: str | Path | None = None, overwrite: bool = False) -> tuple[Path, list[str]]:
    """Export a training checkpoint for inference; returns (out folder, notes for the user).

    Janus checkpoints become the official deepseek layout (loadable by `openjanus chat` and
    `openjanus generate` when tokenizer files are present); part checkpoints become part
    folders for `model.parts` of a later run. A non-empty `out` is refused unless `overwrite`;
    even then only the files an export writes are replaced (each atomically, after the whole
    export was written next to it) and other files are kept.
    """
    folder, out = Path(folder), Path(out)
    _check_export_target(out, overwrite, folder)
    staging = out.parent / f".{out.name}.export-tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        notes = _export_into(folder, staging, dtype=dtype, tokenizer_dir=tokenizer_dir)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    notes = [n.replace(str(staging), str(out)) for n in notes]
    return out, notes


def _export_into(folder: Path, out: Path, *, dtype: torch.dtype | None,
                 tokenizer_dir: str | Path | None) -> list[str]:
    meta = read_train_state(folder)
    weights = open_weights(folder)
    notes: list[str] = []
    if weights.task != "janus":
        # The part alone: the SigLIP pair's caption tower stays behind.
        state = {k: loader() for k, (loader, _) in weights.part_tensors(weights.part).items()}
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        export_part(state, weights.part, weights.part_config(weights.part), out)
        notes.append(f"use it with model.parts.{weights.part} = {str(out)!r} in a Janus stage config")
        return notes
    model = load_model(folder, device="cpu")
    if tokenizer_dir is None:
        # The run's tokenizer: model.tokenizer, else the checkpoint it started from, else the
        # stand-in tokenizer a run without one saves next to its checkpoints.
        source = (meta.get("train_config") or {}).get("model", {})
        tokenizer_dir = source.get("tokenizer") or source.get("checkpoint") or str(folder.parent.parent / "tokenizer")
    if tokenizer_dir is not None and not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        tokenizer_dir = None
    save_model(model, out, layout="official", dtype=dtype, sidecars_from=tokenizer_dir)
    if not (out / "tokenizer.json").is_file():
        notes.append(f"no tokenizer files were copied: put tokenizer.json (and processor_config.json) into "
                     f"{out} or pass --tokenizer DIR before using it with `openjanus chat/generate`")
    return notes


__all__ = ["EXPORT_MANIFEST", "is_complete", "TrainState", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "list_checkpoints",
           "export_checkpoint", "read_train_state", "read_model_tensors", "read_tensors_matching", "rng_state",
           "set_rng_state"]
