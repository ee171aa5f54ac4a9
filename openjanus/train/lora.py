"""LoRA for training: the adapters themselves live in `openjanus.checkpoints.lora` (inference
applies them too, with `--adapter`); exporting a LoRA run's checkpoint is here."""

from __future__ import annotations

from pathlib import Path

import torch

from openjanus.checkpoints.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    adapter_state,
    adapters_disabled,
    add_lora,
    check_lora_settings,
    has_lora,
    linear_modules,
    load_adapter,
    lora_layers,
    merge_lora,
    read_adapter,
    resolve_targets,
    save_adapter,
)
from openjanus.errors import UserError


def export_lora_checkpoint(folder: str | Path, out: str | Path, merge: bool = False, dtype: torch.dtype | None = None,
                           tokenizer_dir: str | Path | None = None, overwrite: bool = False) -> tuple[Path, str]:
    """Export a LoRA run's checkpoint (one with `adapter/`): the adapter alone in PEFT's format,
    or with `merge` the model with the adapter folded in (official layout). Works from the
    checkpoint alone (it holds the frozen base weights too). Returns (out, a line for the user)."""
    import shutil

    from openjanus.checkpoints import save_model
    from openjanus.checkpoints.weights import open_weights
    from openjanus.config import JanusConfig
    from openjanus.model.janus import Janus
    from openjanus.train.checkpoint import read_train_state

    folder, out = Path(folder), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"export: {out} is not empty; pass --overwrite to write into it")
    meta = read_train_state(folder)
    if not merge:
        out.mkdir(parents=True, exist_ok=True)
        for f in (folder / "adapter").iterdir():
            shutil.copy2(f, out / f.name)
        return out, (f"exported the LoRA adapter of {folder} to {out} (PEFT format; apply it with --adapter, "
                     f"or export with --merge for merged weights)")
    model = Janus(JanusConfig.from_dict(meta["model_config"]))
    load_adapter(model, folder / "adapter")
    state = open_weights(folder).materialise()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("codebook_used")]
    if missing or unexpected:
        raise UserError(f"{folder}: checkpoint and adapter do not match ({(missing or unexpected)[0]})")
    merge_lora(model)
    source = (meta.get("train_config") or {}).get("model") or {}
    sidecars = tokenizer_dir or source.get("tokenizer") or source.get("checkpoint")
    if sidecars is not None and not (Path(sidecars) / "tokenizer.json").is_file():
        sidecars = None
    save_model(model, out, layout="official", dtype=dtype, sidecars_from=sidecars)
    return out, f"exported {folder} with its LoRA adapter merged to {out}"


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "add_lora", "adapter_state", "adapters_disabled",
           "check_lora_settings",
           "export_lora_checkpoint", "has_lora", "linear_modules", "load_adapter", "lora_layers", "merge_lora",
           "read_adapter", "resolve_targets", "save_adapter"]
