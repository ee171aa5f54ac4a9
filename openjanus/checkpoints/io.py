"""Reading and writing weight files: safetensors or torch `.bin`, single or sharded.

Loading never unpickles arbitrary objects (`weights_only=True`) and memory-maps where the
format allows, so a 7B checkpoint is not copied into RAM before it reaches the model.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from openjanus.errors import CheckpointError
from openjanus.files import atomic_path, write_json

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, preferring safetensors over .bin."""
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            files = _shards(index, folder)
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
            return files
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(p for p in folder.glob(pattern) if not p.name.startswith("training_"))
        if files:
            return files
    raise CheckpointError(f"{folder}: no *.safetensors or *.bin weight files found")


def _shards(index: Path, folder: Path) -> list[Path]:
    """The shard files a `*.index.json` names; each must be a plain file name inside `folder`."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: not a valid shard index (needs a non-empty 'weight_map' object)")
    files = set()
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{index}: weight_map[{key!r}] is {name!r}, not a file name")
        # Shard names are relative paths that stay in the folder (`../x` and `/x` are refused).
        # Checked on the name, not the resolved path: the hub's cache links shards to blobs elsewhere.
        parts = Path(os.path.normpath(name)).parts
        if Path(name).is_absolute() or not parts or parts[0] == ".." or Path(name).drive:
            raise CheckpointError(f"{index}: weight_map[{key!r}] points outside the checkpoint folder ({name!r})")
        files.add(folder / name)
    return sorted(files)


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
              dtype: torch.dtype | None = None, source: str = "checkpoint",
              check_finite: bool = False) -> None:
    """Strictly load lazily-read tensors (already in the model's names) into a meta-built model.

    Every problem (missing keys, unexpected keys, shape mismatches) is collected and raised
    together in one error. Keys matching a regex in `optional` may be absent: they are
    zero-filled (weights the forward pass never reads, such as SigLIP's attention pool).
    A floating-point weight stored with an integer dtype is refused; `check_finite` also
    refuses the first tensor holding NaN or inf (after the cast to `dtype`).
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
        if ref.is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key} has dtype {str(t.dtype).removeprefix('torch.')}; "
                                  "the model needs floating point")
        stored = t
        if t.is_floating_point() and dtype is not None:
            t = t.to(dtype)
        if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(_non_finite(source, key, stored, t))
        state[key] = t.to(device)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{source}: tensors left uninitialised after loading: {', '.join(leftover[:8])}")


def _non_finite(source: str, key: str, stored: Tensor, cast: Tensor) -> str:
    n_nan, n_inf = int(torch.isnan(stored).sum()), int(torch.isinf(stored).sum())
    if n_nan or n_inf:
        return f"{source}: tensor {key} holds non-finite values ({n_nan} NaN, {n_inf} inf of {stored.numel()})"
    return (f"{source}: tensor {key} overflows {str(cast.dtype).removeprefix('torch.')} "
            f"(values up to {stored.abs().max().item():.3g}); load it in a wider dtype")


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
        with atomic_path(path) as tmp:
            save_file(shard, str(tmp), metadata=metadata or {"format": "pt"})
        paths.append(path)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        write_json(folder / SAFE_INDEX, index)
    return paths
