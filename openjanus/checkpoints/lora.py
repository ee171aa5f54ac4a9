"""LoRA adapters through `peft` (for training, and for inference's `--adapter`), saved in PEFT's
own format with the module names of transformers' `JanusForConditionalGeneration`.

peft does the LoRA itself here (`inject_adapter_in_model` wraps our `nn.Linear` modules,
`merge`, `enable_adapters`); what it cannot do, and is written here, is the naming: our
modules are named after the official layout (`llm.layers.0.attn.q_proj`), transformers' after
its own (`model.language_model.layers.0.self_attn.q_proj`). So

* target patterns are matched (by peft's own rule: a string is a full regular expression, a
  list matches names or name suffixes) against the **transformers** names of our linear
  layers, and the matches are injected under our names;
* `save_adapter` writes `adapter_config.json` + `adapter_model.safetensors` with transformers'
  names (`base_model.model.<name>.lora_A.weight`), so `peft.PeftModel.from_pretrained(hf_janus,
  DIR)` loads it; `load_adapter` reads such a folder (ours or one made on transformers' Janus)
  and maps the names back (`openjanus.checkpoints.hf` holds the one key map).

Not supported, and refused by name: LoRA on the understanding encoder's q/k/v projections
(transformers keeps three matrices, ours one fused `qkv`, so one adapter per matrix has no
counterpart) and on embeddings.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from openjanus.checkpoints.hf import from_hf_key, to_hf_key
from openjanus.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# transformers names of the SigLIP q/k/v projections (fused into `qkv` here).
_VISION_QKV = r"model.vision_model.encoder.layers.{i}.self_attn.{w}_proj"


def _require_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the 'peft' package: pip install 'openjanus[train]'") from None
    return peft


def _hf_module_name(ours: str) -> str | None:
    try:
        return to_hf_key(ours + ".weight").removesuffix(".weight")
    except KeyError:
        return None


def _our_module_name(hf: str) -> str | None:
    key = from_hf_key(hf + ".weight")
    return None if key is None or not key.endswith(".weight") else key.removesuffix(".weight")


def linear_modules(model: nn.Module) -> dict[str, str]:
    """Our linear layers that LoRA can adapt: {our name: transformers name}."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not _is_lora_part(name):
            hf = _hf_module_name(name)
            if hf is not None and not name.endswith("attn.qkv"):
                out[name] = hf
    return out


def _is_lora_part(name: str) -> bool:
    return any(part in ("lora_A", "lora_B", "base_layer") for part in name.split("."))


def _matcher(targets: str | Sequence[str]) -> Any:
    peft = _require_peft()
    from peft.tuners.tuners_utils import check_target_module_exists

    cfg = peft.LoraConfig(target_modules=targets if isinstance(targets, str) else list(targets))
    return lambda name: bool(check_target_module_exists(cfg, name))


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """(our module names whose transformers name matches `targets` by peft's rule, the
    transformers names of SigLIP q/k/v projections it also matches, which are left out: ours
    fuses them). Refuses patterns that match nothing else."""
    if not targets:
        raise UserError("LoRA target_modules is empty")
    matches = _matcher(targets)
    found = [ours for ours, hf in linear_modules(model).items() if matches(hf)]
    n_vit = sum(1 for n, _ in model.named_modules() if n.endswith("attn.qkv"))
    vit = [_VISION_QKV.format(i=i, w=w) for i in range(n_vit) for w in "qkv"]
    skipped = [v for v in vit if matches(v)]
    if not found:
        if skipped:
            raise UserError(f"LoRA target {targets!r} matches only the understanding encoder's q/k/v projections "
                            f"({skipped[0]}, ...), which this implementation fuses into one qkv matrix; target "
                            f"model.language_model.*, the heads or the aligners instead")
        raise UserError(f"LoRA target {targets!r} matches no linear layer (names are transformers' "
                        f"JanusForConditionalGeneration's, e.g. {next(iter(linear_modules(model).values()), '?')})")
    return found, skipped


def _lora_config(targets: list[str], rank: int, alpha: float, dropout: float, **extra: Any) -> Any:
    peft = _require_peft()
    return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                           **extra)


def check_lora_settings(rank: Any, alpha: Any, dropout: Any) -> None:
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise UserError(f"lora.rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise UserError(f"lora.alpha must be positive, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"lora.dropout must be in [0, 1), got {dropout!r}")


def add_lora(model: nn.Module, settings: Any, init: bool | str = True, log: Any = None) -> Any:
    """Freeze `model` and inject LoRA adapters (peft) where `settings.targets` match; returns
    the peft LoraConfig (our names). `init=True`: peft's default (B = 0, the output unchanged);
    False: random A and B (tests). `log` gets a note when the targets also match the SigLIP
    q/k/v projections, which are left out."""
    peft = _require_peft()
    check_lora_settings(settings.rank, settings.alpha, settings.dropout)
    targets, skipped = resolve_targets(model, settings.targets)
    if skipped and log is not None:
        log(f"note: LoRA leaves out the understanding encoder's q/k/v ({len(skipped)} projections matching "
            f"{settings.targets!r}): this implementation fuses them into one matrix")
    model.requires_grad_(False)
    cfg = _lora_config(targets, settings.rank, float(settings.alpha), float(settings.dropout),
                       init_lora_weights=init)
    peft.inject_adapter_in_model(cfg, model)
    model._openjanus_lora = cfg  # type: ignore[attr-defined]
    return cfg


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            yield name, m


def has_lora(model: nn.Module) -> bool:
    try:
        return next(lora_layers(model), None) is not None
    except ImportError:
        return False


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model's outputs inside the block (the adapters bypassed, not removed)."""
    layers = [m for _, m in lora_layers(model)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain layers back (in place)."""
    for name, layer in list(lora_layers(model)):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "_openjanus_lora"):
        del model._openjanus_lora
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights in PEFT's file names for transformers' Janus."""
    from peft import get_peft_model_state_dict

    return _hf_adapter_names(get_peft_model_state_dict(model))


def _hf_adapter_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{our module}.lora_{A|B}[.default].weight -> base_model.model.{transformers module}.lora_{A|B}.weight"""
    out = {}
    for key, t in state.items():
        module, _, leaf = key.partition(".lora_")
        leaf = leaf.replace(".default", "")
        hf = _hf_module_name(module)
        if hf is None:
            raise UserError(f"adapter on {module}: no transformers name for it")
        out[f"{_PREFIX}{hf}.lora_{leaf}"] = t.detach().contiguous()
    return out


def save_adapter(model: nn.Module, folder: str | Path, base_model: str | None = None,
                 state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write adapter_config.json and adapter_model.safetensors (PEFT's format, transformers'
    names). `state`: the model's full state dict in our names (e.g. gathered from FSDP shards)
    to take the adapter weights from, instead of the model's own (local) parameters."""
    cfg = getattr(model, "_openjanus_lora", None)
    if cfg is None:
        raise UserError("this model has no LoRA adapter to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if state is not None:
        state = _hf_adapter_names({k: v for k, v in state.items() if ".lora_" in k})
    else:
        state = adapter_state(model)
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    d = cfg.to_dict()
    d["target_modules"] = sorted({_hf_module_name(t) for t in cfg.target_modules})  # type: ignore[misc]
    d["base_model_name_or_path"] = base_model
    d["init_lora_weights"] = True
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(d, indent=2, default=str) + "\n")
    return folder


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    folder = Path(folder)
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise UserError(f"--adapter {folder}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e.msg})") from None
    if cfg.get("peft_type") != "LORA":
        raise UserError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported")
    return cfg, load_file(str(w_path))


def load_adapter(model: nn.Module, folder: str | Path) -> Any:
    """Inject the LoRA adapter of a PEFT folder (transformers' Janus names, or ours) into
    `model`, unmerged. A module it names that this model lacks, or whose shape differs, is one
    error naming the first such module."""
    peft = _require_peft()
    from peft import set_peft_model_state_dict

    raw, weights = read_adapter(folder)
    ours: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for key in sorted(weights):
        body = key.removeprefix(_PREFIX)
        module, sep, leaf = body.partition(".lora_")
        if not sep and body.endswith(".base_layer.weight"):
            # peft's save_embedding_layers copy of a base weight (it saves lm_head whole when the
            # config says embeddings are tied): harmless when it equals ours.
            name = _our_module_name(body.removesuffix(".base_layer.weight"))
            base = modules.get(name) if name is not None else None
            if isinstance(base, nn.Linear) and base.weight.shape == weights[key].shape and torch.equal(
                    base.weight.detach().cpu(), weights[key].to(base.weight.dtype)):
                continue
            raise UserError(f"{folder}: the adapter carries its own base weights of {body} (a resized vocabulary?), "
                            f"which differ from this model's; only LoRA A/B weights are supported")
        if not sep:
            raise UserError(f"{folder}: unexpected tensor {key!r} in the adapter (only LoRA A/B weights are supported)")
        name = _our_module_name(module) if module not in modules else module
        target = modules.get(name) if name is not None else None
        if not isinstance(target, nn.Linear):
            raise UserError(f"{folder}: the adapter is for another model: it adapts {module}, which this model "
                            f"({getattr(getattr(model, 'cfg', None), 'name', 'model')}) does not have")
        t = weights[key]
        want = (t.shape[0], target.in_features) if leaf.startswith("A") else (target.out_features, t.shape[1])
        if tuple(t.shape) != want:
            raise UserError(f"{folder}: the adapter is for another model: {module} is "
                            f"{target.out_features}x{target.in_features} here, the adapter's lora_{leaf} is "
                            f"{list(t.shape)}")
        ours[f"{name}.lora_{leaf.replace('.default', '')}"] = t
    if not ours:
        raise UserError(f"{folder}: the adapter holds no weights")
    targets = sorted({k.partition(".lora_")[0] for k in ours})
    keep = {k: raw[k] for k in ("use_rslora", "use_dora", "fan_in_fan_out") if k in raw}
    for k in ("rank_pattern", "alpha_pattern"):
        if raw.get(k):
            raise UserError(f"{folder}: adapter_config {k} is not supported (one rank and alpha for all layers)")
    check_lora_settings(raw.get("r"), raw.get("lora_alpha"), raw.get("lora_dropout", 0.0))
    cfg = _lora_config(targets, raw["r"], float(raw["lora_alpha"]), float(raw.get("lora_dropout", 0.0)), **keep)
    peft.inject_adapter_in_model(cfg, model)
    result = set_peft_model_state_dict(model, ours)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise UserError(f"{folder}: the adapter lacks {missing[0]}")
    model._openjanus_lora = cfg  # type: ignore[attr-defined]
    model.requires_grad_(False)
    return cfg


__all__ = ["add_lora", "save_adapter", "load_adapter", "merge_lora", "adapters_disabled",
           "resolve_targets",
           "linear_modules", "has_lora", "adapter_state", "read_adapter", "check_lora_settings"]
