"""`TrainConfig`: everything one training run needs, read from a JSON (or TOML) file.

JSON is the primary format because the package supports Python 3.10, whose standard library
has no TOML reader; TOML files work on Python 3.11+ (`tomllib`) and give a clear message on
3.10. Paths are taken relative to the working directory. Any field can be overridden from the
command line with dotted keys (`stage.lr=5e-4`, `model.overrides.llm.n_layers=4`,
`output_dir=runs/x`); values are parsed as JSON when they parse, else kept as strings.
See docs/training.md for the full schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openjanus.checkpoints import read_config
from openjanus.config import ConfigError, JanusConfig, LLMConfig, VisionConfig, VQConfig
from openjanus.errors import UserError
from openjanus.train.data import DataConfig
from openjanus.train.fields import check_json_type, field_types
from openjanus.train.stages import STAGES, Stage, stage_from_name

PART_NAMES = ("vq", "siglip", "llm")
# Maps whose keys may themselves contain dots: the rest of an override path is one key.
_FREE_KEY_MAPS = {("model", "overrides")}


@dataclass
class ModelSource:
    """Where the initial weights come from: a preset (random init, optionally with separately
    pretrained parts loaded into it) or an existing checkpoint folder (official or HF layout)."""

    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # "part.field" -> value, as JanusConfig.from_name
    checkpoint: str | None = None
    parts: dict[str, str] = field(default_factory=dict)  # "vq" | "siglip" | "llm" -> part export or training checkpoint
    tokenizer: str | None = None  # folder with tokenizer.json (and processor files); default: `checkpoint`
    roles: str = "pro"  # chat roles of the conversations: "pro" (Janus-Pro) or "legacy" (Janus-1.3B)

    def validate(self) -> None:
        if (self.preset is None) == (self.checkpoint is None):
            raise ConfigError("model: give exactly one of 'preset' (random init) or 'checkpoint' (a folder)")
        if self.checkpoint is not None and (self.overrides or self.parts):
            raise ConfigError("model: 'overrides' and 'parts' only apply to a 'preset'")
        if self.roles not in ("pro", "legacy"):
            raise ConfigError(f"model.roles {self.roles!r} must be 'pro' or 'legacy'")
        unknown = sorted(set(self.parts) - set(PART_NAMES))
        if unknown:
            raise ConfigError(f"model.parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PART_NAMES)}")


@dataclass
class StageSpec:
    """A stage preset name plus field overrides (`Stage` fields)."""

    preset: str = "stage1"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Stage:
        return self.build_with_notes()[0]

    def build_with_notes(self) -> tuple[Stage, list[str]]:
        """The stage, and notes on values adjusted for it: a warm-up longer than the run (the
        preset's or the config's, with a quick `-o stage.steps=10`) is cut to the step count."""
        fields = field_types(Stage)
        for key, value in self.overrides.items():
            if key in fields:
                check_json_type(value, fields[key], f"stage.{key}")
        overrides, notes = dict(self.overrides), []
        preset = STAGES.get(self.preset, {})
        steps = overrides.get("steps", preset.get("steps"))
        warmup = overrides.get("warmup_steps", preset.get("warmup_steps", 0))
        if _is_int(steps) and _is_int(warmup) and 1 <= steps < warmup:
            overrides["warmup_steps"] = steps
            notes.append(f"stage {self.preset!r}: warm-up of {warmup} steps cut to the run's steps={steps}")
        return stage_from_name(self.preset, **overrides), notes


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class EvalSettings:
    """Run an evaluation every `every` optimiser steps (0: never). `benchmarks` are names the
    evaluation package understands; `options` go to its runner unchanged."""

    every: int = 0
    benchmarks: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartOptions:
    """Settings of the parts' pretraining objectives."""

    vq_recon_loss: str = "l2"  # "l2" (LlamaGen) or "l1"
    vq_restart_every: int = 0  # re-seed codes unused for this many micro-batches (0: never)
    text_tower_layers: int = 2  # SigLIP pretraining: the caption encoder's depth
    caption_len: int = 32  # SigLIP pretraining: captions are cut to this many tokens
    # SigLIP pretraining on data.source "shapes": scenes come in groups of this many (2..6) that
    # differ only in their shapes, so in-batch negatives can be told apart by shape alone (0: off).
    siglip_shape_groups: int = 0

    def validate(self) -> None:
        if self.vq_recon_loss not in ("l1", "l2"):
            raise ConfigError(f"parts.vq_recon_loss {self.vq_recon_loss!r} must be 'l1' or 'l2'")
        if self.vq_restart_every < 0:
            raise ConfigError(f"parts.vq_restart_every {self.vq_restart_every} must be >= 0 (0: never)")
        if self.siglip_shape_groups != 0 and not 2 <= self.siglip_shape_groups <= 6:
            raise ConfigError(f"parts.siglip_shape_groups {self.siglip_shape_groups} must be 0 (off) or 2..6")
        if self.text_tower_layers < 1 or self.caption_len < 2:
            raise ConfigError(f"parts: text_tower_layers {self.text_tower_layers} must be >= 1 and "
                              f"caption_len {self.caption_len} >= 2")


@dataclass
class LoraOptions:
    """LoRA through peft (`openjanus.train.lora`): the stage's model stays frozen and rank-`rank`
    adapters train on the linear layers whose transformers-Janus name matches `targets` (peft's
    rule: a string is a regular expression over the whole name, a list matches names or name
    suffixes), e.g. "model.language_model.*proj", ["q_proj", "v_proj"], "model.generation_head.*"."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.targets:
            raise ConfigError("lora.targets must name at least one module pattern")


@dataclass
class TrainConfig:
    """One training run. `micro_batch_rows` is per process; gradient accumulation is derived
    from the stage's global batch: global_batch = micro_batch_rows x grad_accum x world size."""

    output_dir: str
    model: ModelSource = field(default_factory=ModelSource)
    stage: StageSpec = field(default_factory=StageSpec)
    data: DataConfig = field(default_factory=DataConfig)  # the data's settings (docs/training-data.md)
    seq_len: int = 4096
    micro_batch_rows: int = 1
    stop_at: int | None = None  # stop early at this step; the schedule still spans stage.steps
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    eval: EvalSettings = field(default_factory=EvalSettings)
    parts: PartOptions = field(default_factory=PartOptions)
    lora: LoraOptions | None = None  # LoRA adapters instead of training the stage's parameters
    seed: int = 0
    device: str = "auto"  # auto: cuda when available (the local rank's GPU under torchrun)
    dtype: str = "auto"  # compute dtype: auto = bf16 autocast on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    compile: bool = False
    tensorboard: bool = True
    progress_bar: bool = True
    dist_timeout_minutes: int = 30

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.model.validate()
        self.parts.validate()
        if self.lora is not None:
            self.lora.validate()
        for name in ("seq_len", "micro_batch_rows", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval.every < 0:
            raise ConfigError(f"eval.every must be >= 0, got {self.eval.every}")
        if self.stop_at is not None and self.stop_at < 1:
            raise ConfigError(f"stop_at must be >= 1, got {self.stop_at}")
        if self.dtype in ("float16", "fp16"):
            raise ConfigError("dtype float16 is not supported for training (it needs loss scaling); use bfloat16")
        if self.dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16"):
            raise ConfigError(f"dtype {self.dtype!r}: choose auto, float32 or bfloat16")

    def build_stage(self) -> Stage:
        return self.stage.build()

    def build_model_config(self) -> JanusConfig:
        """The Janus config of the model this run trains (its parts for the part tasks)."""
        if self.model.checkpoint is not None:
            return read_config(self.model.checkpoint)[0]
        return JanusConfig.from_name(self.model.preset, **self.model.overrides)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (as read from JSON); unknown keys are errors."""
        raw = _normalise(raw)
        try:
            return _build(cls, raw, "")
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    raw = dict(raw)
    if isinstance(raw.get("stage"), str):
        raw["stage"] = {"preset": raw["stage"]}
    elif isinstance(raw.get("stage"), dict) and "overrides" not in raw["stage"]:
        # Allow the flat form {"preset": "stage1", "lr": 5e-4}.
        stage = dict(raw["stage"])
        preset = stage.pop("preset", "stage1")
        raw["stage"] = {"preset": preset, "overrides": stage}
    return raw


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected an object, got {type(raw).__name__}")
    hints = field_types(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(hints))}")
    nested = {"model": ModelSource, "stage": StageSpec, "eval": EvalSettings, "parts": PartOptions,
              "lora": LoraOptions}
    kwargs = {}
    for key, value in raw.items():
        if cls is TrainConfig and key == "lora" and value is None:
            pass
        elif cls is TrainConfig and key in nested:
            value = _build(nested[key], value, key)
        elif cls is TrainConfig and key == "data":
            if not isinstance(value, dict):
                raise ConfigError(f"data: expected an object, got {json.dumps(value)}")
            value = DataConfig.from_dict(value)
        else:
            check_json_type(value, hints[key], f"{where + '.' if where else ''}{key}")
        kwargs[key] = value
    if cls is TrainConfig and "output_dir" not in kwargs:
        raise ConfigError("config: 'output_dir' is required")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """"a.b.c=value" -> (["a", "b", "c"], parsed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} is not of the form key=value")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply "dotted.key=value" overrides to a raw config dict (a new dict is returned)."""
    out = json.loads(json.dumps(_normalise(raw)))
    for text in overrides:
        path, value = parse_override(text)
        if path == ["stage"] and isinstance(value, str):
            out.setdefault("stage", {"preset": value, "overrides": {}})["preset"] = value
            continue
        if path[0] == "stage" and len(path) == 2 and path[1] != "preset":
            path = ["stage", "overrides", path[1]]  # `stage.lr=...` means a stage field
        node = out
        for i, key in enumerate(path[:-1]):
            if tuple(path[: i + 1]) in _FREE_KEY_MAPS:
                node = node.setdefault(key, {})
                path = [*path[: i + 1], ".".join(path[i + 1:])]
                break
            nxt = node.setdefault(key, {})
            if not isinstance(nxt, dict):
                raise UserError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw dict of a JSON or TOML config file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} not found")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:
            raise UserError(f"{path}: TOML configs need Python 3.11+; write the config as JSON") from None
        try:
            return tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: invalid TOML ({e})") from None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the config must be a JSON object")
    return raw


# Sizes beyond these are typing mistakes, not models (Janus-Pro-7B: 30 layers x 4096, 102,400
# ids); they are refused before anything is allocated.
MODEL_BOUNDS: dict[str, int] = {
    "llm.n_layers": 1024, "llm.dim": 65536, "llm.n_heads": 1024, "llm.n_kv_heads": 1024, "llm.ffn_dim": 262144,
    "llm.vocab_size": 1 << 22, "llm.max_seq_len": 1 << 20, "vision.n_layers": 1024, "vision.dim": 65536,
    "vision.n_heads": 1024, "vision.mlp_dim": 262144, "vision.image_size": 4096, "vision.patch_size": 4096,
    "vq.image_size": 4096, "vq.codebook_size": 1 << 22, "vq.codebook_dim": 65536, "vq.base_channels": 4096,
    "vq.z_channels": 65536, "vq.num_res_blocks": 64, "vq.norm_groups": 4096,
}


def _check_model_overrides(overrides: dict[str, Any]) -> None:
    parts = {"llm": LLMConfig, "vision": VisionConfig, "vq": VQConfig}
    top = {k: v for k, v in field_types(JanusConfig).items() if k not in parts}
    for key, value in overrides.items():
        part, _, name = key.partition(".")
        fields = field_types(parts[part]) if part in parts and name else top
        name = name if part in parts and name else key
        if name not in fields:
            raise ConfigError(f"model.overrides: unknown field {key!r}")
        check_json_type(value, fields[name], f"model.overrides.{key}")


def estimate_parameters(cfg: JanusConfig) -> int:
    """Parameters of the LLM, the SigLIP tower, the adaptors and the heads (the VQ, a few
    tens of millions at most within MODEL_BOUNDS, left out): a cheap upper-bound check."""
    llm, vis = cfg.llm, cfg.vision
    kv = llm.n_kv_heads * llm.head_dim
    per_layer = 2 * llm.dim * llm.dim + 2 * llm.dim * kv + 3 * llm.dim * llm.ffn_dim + 2 * llm.dim
    vision = vis.depth * (4 * vis.dim * vis.dim + 2 * vis.dim * vis.mlp_dim) + vis.num_patches * vis.dim
    heads = 2 * llm.vocab_size * llm.dim + llm.dim * cfg.gen_head_dim + cfg.gen_head_dim * cfg.vq.codebook_size
    adaptors = 2 * vis.dim * llm.dim + 2 * llm.dim * llm.dim + cfg.vq.codebook_size * cfg.vq.codebook_dim
    return llm.n_layers * per_layer + vision + heads + adaptors


def check_model_config(cfg: JanusConfig, seq_len: int, task: str) -> None:
    """Sizes within MODEL_BOUNDS, the whole fp32 model within this host's memory (rank 0
    builds it on the CPU), and seq_len within the LLM's positions (for the LLM tasks)."""
    for key, bound in MODEL_BOUNDS.items():
        part, _, name = key.partition(".")
        value = getattr(getattr(cfg, part), name)
        if not 1 <= value <= bound:
            raise ConfigError(f"model {key} {value} must lie in [1, {bound:,}]")
    if len(cfg.vq.channel_mult) > 8 or any(not 1 <= m <= 64 for m in cfg.vq.channel_mult):
        raise ConfigError(f"model vq.channel_mult {list(cfg.vq.channel_mult)} must have at most 8 values in [1, 64]")
    params = estimate_parameters(cfg)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    if ram and 4 * params > ram:
        raise ConfigError(f"the model has about {params / 1e9:.1f}B parameters, {4 * params / 2**30:,.0f} GiB in "
                          f"fp32, more than this machine's {ram / 2**30:,.0f} GiB of memory (rank 0 builds it whole)")
    if task in ("janus", "text") and seq_len > cfg.llm.max_seq_len:
        raise ConfigError(f"seq_len {seq_len} exceeds the model's {cfg.llm.max_seq_len} positions "
                          f"(llm.max_seq_len); lower seq_len")


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a config file, apply command-line overrides and validate everything that can be
    checked before a model is built: types of every field, the stage, the data settings, model
    sizes and seq_len against the model (errors are `UserError`)."""
    raw = apply_overrides(read_config_file(path), list(overrides))
    try:
        cfg = TrainConfig.from_dict(raw)
        stage = cfg.build_stage()  # validate the stage now, not after the model is built
        if cfg.model.preset is not None:  # (a checkpoint's config is read and checked when the run starts)
            _check_model_overrides(cfg.model.overrides)
            check_model_config(cfg.build_model_config(), cfg.seq_len, stage.task)
    except ConfigError as e:
        raise UserError(f"{path}: {e}") from None
    return cfg


__all__ = ["MODEL_BOUNDS", "check_json_type", "check_model_config", "estimate_parameters", "TrainConfig",
           "ModelSource", "StageSpec", "EvalSettings", "PartOptions", "load_train_config",
           "apply_overrides", "read_config_file"]
