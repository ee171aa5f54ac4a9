"""Reading and writing weight files: safetensors or torch `.bin`, single or sharded.

Loading never unpickles arbitrary objects (`weights_only=True`) and memory-maps where the
format allows, so a 7B checkpoint is not copied into RAM before it reaches the model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from openjanus.errors import CheckpointError

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, preferring safetensors over .bin."""
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
            files = sorted({folder / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
            return files
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in folder.glob(pattern) if not p.name.startswith("training_"))
        if files:
            return files
    raise CheckpointError(f"{folder}: no *.safetensors or *.bin weight files found")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], Tensor], tuple[int, ...]]]:
    """Yield (key, loader, shape) for every tensor; `loader()` materialises it lazily."""
    for path in files:
        if path.suffix == ".safetensors":
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
            for key in handle.keys():
                shape = tuple(handle.get_slice(key).get_shape())
                yield key, (lambda h=handle, k=key: h.get_tensor(k)), shape
        else:
            state = _load_bin(path)
            for key, tensor in state.items():
                yield key, (lambda t=tensor: t), tuple(tensor.shape)


def _load_bin(path: Path) -> dict[str, Tensor]:
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Legacy (pre-zip) pickles cannot be memory-mapped; they still load safely.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load as a weights-only torch checkpoint ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors")
    return state


def load_into(model: nn.Module, tensors: dict[str, tuple[Callable[[], Tensor], tuple[int, ...]]],
              optional: tuple[str, ...] = (), device: torch.device | str = "cpu",
              dtype: torch.dtype | None = None, source: str = "checkpoint") -> None:
    """Strictly load lazily-read tensors (already in the model's names) into a meta-built model.

    Every problem (missing keys, unexpected keys, shape mismatches) is collected and raised
    together in one error. Keys matching a regex in `optional` may be absent: they are
    zero-filled (weights the forward pass never reads, such as SigLIP's attention pool).
    """
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in tensors and not any(re.search(p, k) for p in optional)]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(shape)} vs model {tuple(expected[k].shape)}"
        for k, (_, shape) in tensors.items()
        if k in expected and tuple(shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {len(items)} {title}: {shown}")
        raise CheckpointError("\n".join(lines))

    state: dict[str, Tensor] = {}
    for key, ref in expected.items():
        if key in tensors:
            t = tensors[key][0]()
        else:
            t = torch.zeros(ref.shape, dtype=ref.dtype)
        if t.is_floating_point() and dtype is not None:
            t = t.to(dtype)
        state[key] = t.to(device)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors left uninitialised after loading: {', '.join(leftover[:8])}")


def save_tensors(state: dict[str, Tensor], folder: Path, max_shard_bytes: int = 4 * 2**30,
                 metadata: dict[str, str] | None = None) -> list[Path]:
    """Write `state` as safetensors, sharded with an index when it exceeds `max_shard_bytes`.

    Each file is written to a temporary name and renamed, so a crash never leaves a
    truncated file under the final name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t.detach().contiguous().cpu()
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    paths = []
    for name, shard in zip(names, shards):
        path = folder / name
        _atomic(path, lambda tmp, s=shard: save_file(s, tmp, metadata=metadata or {"format": "pt"}))
        paths.append(path)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        write_json(folder / SAFE_INDEX, index)
    return paths


def write_json(path: Path, obj: object) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n"))


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the final file should read like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
