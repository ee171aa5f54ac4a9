"""Checkpoint formats at the boundary: each external layout has one key map and one config parser.

`load_model(folder)` reads any supported folder (official deepseek-ai `multi_modality` or
Hugging Face transformers `janus`), builds the model on the meta device and loads the weights
memory-mapped with strict key checking. `save_model(model, folder, layout=...)` writes it back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from openjanus.checkpoints import hf, official
from openjanus.checkpoints.io import load_into, save_tensors, weight_files
from openjanus.checkpoints.weights import Weights, open_weights, read_config
from openjanus.errors import CheckpointError
from openjanus.files import write_json
from openjanus.model.janus import Janus

# Files that travel with the weights (tokenizer and processor settings).
SIDECAR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "preprocessor_config.json", "processor_config.json", "openjanus.json",
                 "generation_config.json", "chat_template.jinja")


def load_model(folder: str | Path, device: torch.device | str = "cpu",
               dtype: torch.dtype | None = None, check_finite: bool = False) -> Janus:
    """Load a whole Janus model from a checkpoint folder (official or HF layout, or one of our
    training checkpoints of a Janus stage); floating tensors are cast to `dtype` if given.

    `check_finite` refuses, naming it, the first tensor that holds NaN or inf (a corrupt or
    diverged checkpoint would otherwise load and fail only when sampling).
    """
    weights = open_weights(folder)
    if weights.task != "janus":
        raise CheckpointError(f"{folder} holds a pretrained {weights.part!r} part, not a whole Janus model")
    with torch.device("meta"):
        model = Janus(weights.config)
    load_into(model, weights.tensors, optional=weights.optional, device=device, dtype=dtype, source=str(folder),
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


__all__ = ["load_model", "save_model", "read_config", "open_weights", "Weights", "weight_files"]
