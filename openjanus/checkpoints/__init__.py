"""Checkpoint formats at the boundary: each external layout has one key map and one config parser.

`load_model(folder)` reads any supported folder (official deepseek-ai `multi_modality` or
Hugging Face transformers `janus`), builds the model on the meta device and loads the weights
memory-mapped with strict key checking. `save_model(model, folder, layout=...)` writes it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from openjanus.checkpoints import official
from openjanus.checkpoints.io import load_into, save_tensors, weight_files, write_json, iter_tensors
from openjanus.config import ConfigError, JanusConfig
from openjanus.errors import CheckpointError
from openjanus.model.janus import Janus

# Files that travel with the weights (tokenizer and processor settings).
SIDECAR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json", "processor_config.json", "openjanus.json",
                 "generation_config.json", "chat_template.jinja")


def read_config(folder: str | Path) -> tuple[JanusConfig, str]:
    """(config, layout) of a checkpoint folder; layout is "official" or "hf"."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no config.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {_json_kind(raw)}")
    model_type = raw.get("model_type")
    try:
        if model_type == official.MODEL_TYPE:
            return official.config_from_official(raw, name=folder.name), "official"
        if model_type == "janus":
            from openjanus.checkpoints import hf

            return hf.config_from_hf(raw, name=folder.name), "hf"
    except ConfigError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('config.json: ')}") from None
    raise CheckpointError(f"{path}: model_type {model_type!r} is not a Janus checkpoint "
                          f"(expected {official.MODEL_TYPE!r} or 'janus')")


def _json_kind(value: object) -> str:
    """How a JSON value reads to a user: 'a list', 'null', 'a string', ..."""
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def load_model(folder: str | Path, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None, check_finite: bool = False) -> Janus:
    """Load a checkpoint folder of either layout; floating tensors are cast to `dtype` if given.

    `check_finite` refuses, naming it, the first tensor that holds NaN or inf (a corrupt or
    diverged checkpoint would otherwise load and fail only when sampling).
    """
    folder = Path(folder)
    cfg, layout = read_config(folder)
    if layout == "official":
        fmt = official
    else:
        from openjanus.checkpoints import hf as fmt
    tensors = fmt.map_tensors(iter_tensors(weight_files(folder)), cfg)
    optional = fmt.OPTIONAL_KEYS
    with torch.device("meta"):
        model = Janus(cfg)
    load_into(model, tensors, optional=optional, device=device, dtype=dtype, source=str(folder),
              check_finite=check_finite)
    return model.eval()


def save_model(model: Janus, folder: str | Path, layout: str = "official",
               dtype: torch.dtype | None = None, sidecars_from: str | Path | None = None,
               max_shard_bytes: int = 4 * 2**30) -> Path:
    """Write `model` to `folder` in the given layout ("official" or "hf").

    `dtype` casts floating tensors on the way out (e.g. bfloat16 like the releases);
    `sidecars_from` copies tokenizer/processor files from another folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    dtype_name = str(next(iter(state.values())).dtype).removeprefix("torch.")
    if layout == "official":
        out_state = {official.to_official_key(k): v for k, v in state.items()}
        config = official.config_to_official(model.cfg, dtype=dtype_name)
    elif layout == "hf":
        from openjanus.checkpoints import hf

        out_state = hf.to_hf_state(state, model.cfg)
        # The placeholder id lives in the tokenizer, not in our config.
        config = hf.config_to_hf(model.cfg, dtype=dtype_name,
                                 image_token_id=hf.image_token_id_in(sidecars_from))
    else:
        raise ValueError(f"unknown layout {layout!r}; choose 'official' or 'hf'")
    for old in list(folder.glob("*.safetensors")) + [folder / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    save_tensors(out_state, folder, max_shard_bytes=max_shard_bytes)
    write_json(folder / "config.json", config)
    if sidecars_from is not None:
        for name in SIDECAR_FILES:
            src = Path(sidecars_from) / name
            if src.is_file() and src.resolve() != (folder / name).resolve():
                shutil.copy2(src, folder / name)
    return folder


__all__ = ["load_model", "save_model", "read_config", "weight_files"]
