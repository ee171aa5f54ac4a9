"""One way to open weights: `open_weights(folder)` reads any folder this project writes or loads.

Four kinds of folder hold weights, told apart by the file that describes them:

=========  =====================  ==================================================
kind       marker                 what it holds
=========  =====================  ==================================================
official   config.json            a whole Janus model, deepseek-ai `multi_modality`
hf         config.json            a whole Janus model, Hugging Face `janus`
part       part.json              one pretrained part (vq, siglip or llm), our names
training   train_state.json       a training checkpoint: the task's model, our names
=========  =====================  ==================================================

Each comes back as a `Weights`: lazily loaded tensors in our names, the config, and what the
folder holds (a whole Janus model or one part). Callers pick the whole model or one part from
it, so the layout choice and the key maps live here only; the tensors stay memory-mapped until
`load_into` (or `materialise`) reads them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from openjanus.checkpoints import hf, official
from openjanus.checkpoints.io import iter_tensors, load_into, save_tensors, weight_files
from openjanus.config import ConfigError, JanusConfig, LLMConfig, VisionConfig, VQConfig
from openjanus.errors import CheckpointError, UserError
from openjanus.files import write_json

TensorSource = tuple[Callable[[], Tensor], tuple[int, ...]]  # (lazy loader, shape)
PartConfig = VQConfig | VisionConfig | LLMConfig

PART_FORMAT = "openjanus-part"
PARTS = ("vq", "siglip", "llm")
# The part each part task trains, and where that task's model keeps it (the SigLIP pair keeps
# the vision tower beside a caption tower that is not part of Janus).
PART_OF_TASK = {"vq": "vq", "siglip": "siglip", "text": "llm"}
TASK_PART_PREFIX = {"vq": "", "siglip": "und_encoder.", "text": ""}
# part -> its attribute on `Janus` and on `JanusConfig`.
JANUS_ATTR = {"vq": "gen_tokenizer", "siglip": "und_encoder", "llm": "llm"}
CONFIG_ATTR = {"vq": "vq", "siglip": "vision", "llm": "llm"}
PART_CONFIG_CLS: dict[str, type[PartConfig]] = {"vq": VQConfig, "siglip": VisionConfig, "llm": LLMConfig}
# A VQ trained here may predate the codebook-usage buffer; it is only a logging statistic.
PART_OPTIONAL = {"vq": (r"^quantize\.codebook_used$",), "siglip": (), "llm": ()}


@dataclass(frozen=True)
class Weights:
    """The opened weights of a folder (see the module docstring)."""

    folder: Path
    kind: str  # "official", "hf", "part" or "training"
    task: str  # "janus" for a whole Janus model, else the part task that wrote the folder
    tensors: dict[str, TensorSource]  # our names; a training checkpoint: its task model's names
    config: JanusConfig | None  # None for a part file (it carries only its part's config)
    part: str | None = None  # the one part a part file or a part task's checkpoint holds
    part_config_raw: dict[str, Any] = field(default_factory=dict)  # a part file's config
    optional: tuple[str, ...] = ()  # keys the layout may omit (zero-filled on load)

    def part_tensors(self, part: str) -> dict[str, TensorSource]:
        """The tensors of `part`, in the names of the part's own module."""
        prefix = self._part_prefix(part)
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def part_optional(self, part: str) -> tuple[str, ...]:
        """Keys of `part` the folder may omit (the layout's optional keys under the part)."""
        prefix = self._part_prefix(part)
        head = "^" + re.escape(prefix)
        under = tuple("^" + p[len(head):] for p in self.optional if prefix and p.startswith(head))
        return under + PART_OPTIONAL[part]

    def part_config(self, part: str) -> PartConfig:
        """The config of `part` as the folder records it."""
        self._part_prefix(part)  # refuses a folder without that part
        if self.config is not None:
            return getattr(self.config, CONFIG_ATTR[part])
        if self.kind != "part":
            raise UserError(f"{self.folder}: the checkpoint records no model config for its {part} part")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in self.part_config_raw.items()}
        try:
            return PART_CONFIG_CLS[part](**values)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"{self.folder}/part.json: invalid {part} config ({e})") from None

    def materialise(self) -> dict[str, Tensor]:
        """Every tensor, read into memory, in the folder's names (ours)."""
        return {k: loader() for k, (loader, _) in self.tensors.items()}

    def _part_prefix(self, part: str) -> str:
        if self.task == "janus":
            return JANUS_ATTR[part] + "."
        if self.part != part:
            raise UserError(f"{self.folder} holds the {self.part!r} part, not {part!r}")
        return "" if self.kind == "part" else TASK_PART_PREFIX[self.task]


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
            return hf.config_from_hf(raw, name=folder.name), "hf"
    except ConfigError as e:
        raise CheckpointError(f"{path}: {str(e).removeprefix('config.json: ')}") from None
    raise CheckpointError(f"{path}: model_type {model_type!r} is not a Janus checkpoint "
                          f"(expected {official.MODEL_TYPE!r} or 'janus')")


def _json_kind(value: object) -> str:
    """How a JSON value reads to a user: 'a list', 'null', 'a string', ..."""
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def open_weights(folder: str | Path) -> Weights:
    """Open an official, Hugging Face, part or training-checkpoint folder (nothing is read
    into memory yet)."""
    folder = Path(folder)
    if (folder / "part.json").is_file():
        return _open_part(folder)
    if (folder / "train_state.json").is_file():
        return _open_training(folder)
    cfg, layout = read_config(folder)
    fmt = official if layout == "official" else hf
    tensors = fmt.map_tensors(iter_tensors(weight_files(folder)), cfg)
    return Weights(folder, layout, "janus", tensors, cfg, optional=fmt.OPTIONAL_KEYS)


def _open_part(folder: Path) -> Weights:
    meta = json.loads((folder / "part.json").read_text())
    if meta.get("format") != PART_FORMAT or meta.get("part") not in PARTS:
        raise UserError(f"{folder / 'part.json'}: not an openjanus part file")
    task = next(t for t, p in PART_OF_TASK.items() if p == meta["part"])
    return Weights(folder, "part", task, _named_tensors(folder), None, part=meta["part"],
                   part_config_raw=dict(meta.get("config") or {}))


def _open_training(folder: Path) -> Weights:
    meta = json.loads((folder / "train_state.json").read_text())
    task = meta.get("task", "janus")
    # A Trainer used from Python records no model config unless its caller passes one.
    config = JanusConfig.from_dict(meta["model_config"]) if "model_config" in meta else None
    return Weights(folder, "training", task, _named_tensors(folder), config, part=PART_OF_TASK.get(task))


def _named_tensors(folder: Path) -> dict[str, TensorSource]:
    return {k: (loader, shape) for k, loader, shape in iter_tensors(weight_files(folder))}


def load_part(module: nn.Module, part: str, config: PartConfig, folder: str | Path) -> None:
    """Load a pretrained part from any folder that holds it (a part file, a part task's or a
    Janus training checkpoint, an official or HF model) into `module`, which must be built
    from `config`: checked field by field, then key by key."""
    weights = open_weights(folder)
    given = asdict(weights.part_config(part))
    diff = [f"{k}: part {given[k]!r} vs model {v!r}" for k, v in asdict(config).items() if k in given and given[k] != v]
    if diff:
        raise UserError(f"{folder}: the {part} part does not fit the model config ({'; '.join(diff)})")
    ref = next(iter(module.parameters()))
    load_into(module, weights.part_tensors(part), optional=weights.part_optional(part), device=ref.device,
              dtype=ref.dtype, source=str(folder))


def load_part_into(model: nn.Module, part: str, folder: str | Path) -> None:
    """Load a pretrained part into the matching module of a Janus model."""
    load_part(getattr(model, JANUS_ATTR[part]), part, part_config(model.cfg, part), folder)


def part_config(cfg: JanusConfig, part: str) -> PartConfig:
    """The component config of a part ("vq", "siglip", "llm") in a Janus config."""
    return getattr(cfg, CONFIG_ATTR[part])


def export_part(state: dict[str, Tensor], part: str, config: PartConfig, folder: str | Path) -> Path:
    """Write a part folder: part.json ({"format", "part", "config"}) and model.safetensors."""
    folder = Path(folder)
    save_tensors(state, folder)
    write_json(folder / "part.json", {"format": PART_FORMAT, "part": part, "config": asdict(config)})
    return folder


__all__ = ["Weights", "open_weights", "read_config", "load_part", "load_part_into", "export_part", "part_config",
           "PART_FORMAT", "PART_OF_TASK", "JANUS_ATTR",
           "TensorSource"]
