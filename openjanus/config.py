"""Typed configs for every Janus component, composed by :class:`JanusConfig`, plus presets.

Sizes that follow from others are derived (image tokens = (image_size / patch)^2), never
stored twice. Presets are plain override tables; ``JanusConfig.from_name`` builds one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from openjanus.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is missing, inconsistent or unsupported."""


class FieldError(ConfigError):
    """One field has the wrong type or is out of range; `field` names it so that a file parser
    can say it in the file's own words (see `renamed_fields`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def check_int(name: str, value: Any, minimum: int | None = 1) -> int:
    """`value` if it is an integer (not a bool) >= `minimum`, else a FieldError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldError(name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise FieldError(name, f"must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: Any, positive: bool = True) -> float:
    """`value` if it is a finite number (> 0 when `positive`, else >= 0), else a FieldError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise FieldError(name, f"must be {'> 0' if positive else '>= 0'}, got {value}")
    return value


@contextmanager
def renamed_fields(names: Mapping[str, str], prefix: str = "") -> Iterator[None]:
    """Re-raise a FieldError under the name a file gives the field (`names`, else `prefix` + ours)."""
    try:
        yield
    except FieldError as e:
        raise FieldError(names.get(e.field, prefix + e.field), e.problem) from None


@dataclass(frozen=True)
class LLMConfig:
    """Llama-architecture decoder (DeepSeek-LLM)."""

    vocab_size: int = 102400
    dim: int = 2048
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int = 16
    ffn_dim: int = 5632
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 16384

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            check_int(f"llm.{name}", getattr(self, name))
        check_float("llm.norm_eps", self.norm_eps)
        check_float("llm.rope_theta", self.rope_theta)
        if self.dim % self.n_heads:
            raise ConfigError(f"LLM dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"LLM n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP ViT used as the understanding encoder (`und_encoder`)."""

    image_size: int = 384
    patch_size: int = 16
    dim: int = 1024
    n_layers: int = 24  # layers of the full architecture; `depth` is how many are built
    n_heads: int = 16
    mlp_dim: int = 4096
    norm_eps: float = 1e-6
    select_layer: int = -1

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "dim", "n_layers", "n_heads", "mlp_dim"):
            check_int(f"vision.{name}", getattr(self, name))
        check_float("vision.norm_eps", self.norm_eps)
        check_int("vision.select_layer", self.select_layer, minimum=None)
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.dim % self.n_heads:
            raise ConfigError(f"vision dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.depth < 1:
            raise ConfigError(f"select_layer {self.select_layer} leaves no vision blocks")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def depth(self) -> int:
        """Blocks actually built: the official tower truncates at `select_layer`."""
        if self.select_layer <= 0:
            return min(self.n_layers, self.n_layers + self.select_layer + 1)
        return min(self.n_layers, self.select_layer)


@dataclass(frozen=True)
class VQConfig:
    """LlamaGen VQ-16 image tokenizer (`gen_tokenizer`)."""

    image_size: int = 384
    codebook_size: int = 16384
    codebook_dim: int = 8
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    norm_groups: int = 32
    commit_beta: float = 0.25

    def __post_init__(self) -> None:
        for name in ("image_size", "codebook_size", "codebook_dim", "base_channels", "z_channels",
                     "num_res_blocks", "norm_groups"):
            check_int(f"vq.{name}", getattr(self, name))
        check_float("vq.commit_beta", self.commit_beta, positive=False)
        if isinstance(self.channel_mult, (str, bytes)) or not isinstance(self.channel_mult, (list, tuple)) \
                or not self.channel_mult:
            raise FieldError("vq.channel_mult", f"must be a non-empty list of integers, got {self.channel_mult!r}")
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        for i, m in enumerate(self.channel_mult):
            check_int(f"vq.channel_mult[{i}]", m)
        if self.image_size % self.downsample:
            raise ConfigError(
                f"VQ image_size {self.image_size} is not divisible by the downsampling factor {self.downsample}"
            )
        for c in [self.base_channels * m for m in self.channel_mult]:
            if c % self.norm_groups:
                raise ConfigError(f"VQ channels {c} are not divisible by norm_groups {self.norm_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class JanusConfig:
    """The whole model: two visual paths around one LLM.

    Adaptor and head sizes are derived from the parts: `und_aligner` maps vision.dim -> llm.dim,
    `gen_aligner` maps vq.codebook_dim -> llm.dim, `gen_head` maps llm.dim -> gen_head_dim ->
    vq.codebook_size. `gen_head_dim` defaults to llm.dim (true for all released models).
    """

    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    gen_head_dim: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        for part, cls in (("llm", LLMConfig), ("vision", VisionConfig), ("vq", VQConfig)):
            if not isinstance(getattr(self, part), cls):
                raise FieldError(part, f"must be a {cls.__name__}, got {getattr(self, part)!r}")
        if self.gen_head_dim is None:
            object.__setattr__(self, "gen_head_dim", self.llm.dim)
        check_int("gen_head_dim", self.gen_head_dim)
        if not isinstance(self.name, str):
            raise FieldError("name", f"must be a string, got {self.name!r}")

    @property
    def num_und_tokens(self) -> int:
        """Image tokens one understanding image occupies in the LLM sequence (576 at 384/16)."""
        return self.vision.num_patches

    @property
    def num_gen_tokens(self) -> int:
        """Image tokens sampled for one generated image (576 at 384/16)."""
        return self.vq.num_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JanusConfig:
        """The inverse of `to_dict`; unknown fields and wrong types raise ConfigError naming them."""
        if not isinstance(d, dict):
            raise ConfigError(f"a Janus config must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"llm", "vision", "vq", "gen_head_dim", "name"})
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        parts = {}
        for part, part_cls in (("llm", LLMConfig), ("vision", VisionConfig), ("vq", VQConfig)):
            values = d.get(part, {})
            if not isinstance(values, dict):
                raise FieldError(part, f"must be an object, got {values!r}")
            known = {f.name for f in dataclasses.fields(part_cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ConfigError(f"unknown {part} field(s): {', '.join(map(str, unknown))}")
            parts[part] = part_cls(**values)
        return cls(**parts, gen_head_dim=d.get("gen_head_dim"), name=d.get("name", "custom"))

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> JanusConfig:
        """Build a preset; `overrides` use "part.field" keys, e.g. ``{"llm.n_layers": 2}``."""
        if name not in PRESETS:
            hint = (f"; {name!r} is the shipped demo model, its architecture preset is {name + '-arch'!r}"
                    if name + "-arch" in PRESETS else "")
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}{hint}")
        table = {**PRESETS[name], **overrides}
        parts: dict[str, dict[str, Any]] = {"llm": {}, "vision": {}, "vq": {}}
        top: dict[str, Any] = {"name": name}
        for key, value in table.items():
            part, _, fld = key.partition(".")
            if fld:
                if part not in parts:
                    raise ConfigError(f"override {key!r}: unknown part {part!r}")
                parts[part][fld] = value
            else:
                top[key] = value
        try:
            return cls(
                llm=LLMConfig(**parts["llm"]),
                vision=VisionConfig(**parts["vision"]),
                vq=VQConfig(**parts["vq"]),
                **top,
            )
        except TypeError as e:
            raise ConfigError(f"preset {name!r}: {e}") from None


# Presets are data: overrides over the dataclass defaults (which are Janus-Pro-1B's).
PRESETS: dict[str, dict[str, Any]] = {
    "janus-pro-1b": {},
    "janus-1.3b": {},
    "janus-pro-7b": {
        "llm.dim": 4096,
        "llm.n_layers": 30,
        "llm.n_heads": 32,
        "llm.n_kv_heads": 32,
        "llm.ffn_dim": 11008,
    },
    # CPU-sized presets: same architecture, small widths. `tiny` runs every test in seconds.
    "tiny": {
        "llm.vocab_size": 512,
        "llm.dim": 64,
        "llm.n_layers": 2,
        "llm.n_heads": 4,
        "llm.n_kv_heads": 2,
        "llm.ffn_dim": 128,
        "llm.max_seq_len": 512,
        "vision.image_size": 32,
        "vision.patch_size": 8,
        "vision.dim": 32,
        "vision.n_layers": 2,
        "vision.n_heads": 2,
        "vision.mlp_dim": 64,
        "vq.image_size": 32,
        "vq.codebook_size": 64,
        "vq.base_channels": 32,
        "vq.channel_mult": (1, 1, 2),
        "vq.z_channels": 32,
        "vq.num_res_blocks": 1,
    },
    # The architecture of the shipped demo model janus-shapes (trained on the shapes world, see
    # README): 64 px on both visual paths. The name "janus-shapes" itself means the trained model.
    "janus-shapes-arch": {
        "llm.vocab_size": 576,
        "llm.dim": 256,
        "llm.n_layers": 6,
        "llm.n_heads": 4,
        "llm.n_kv_heads": 4,
        "llm.ffn_dim": 688,
        "llm.max_seq_len": 1024,
        "vision.image_size": 64,
        "vision.patch_size": 8,
        "vision.dim": 128,
        "vision.n_layers": 4,
        "vision.n_heads": 4,
        "vision.mlp_dim": 512,
        "vq.image_size": 64,
        "vq.codebook_size": 1024,
        "vq.base_channels": 16,
        "vq.norm_groups": 8,
        "vq.channel_mult": (1, 2, 2, 4),
        "vq.z_channels": 64,
        "vq.num_res_blocks": 1,
    },
    "small": {
        "llm.vocab_size": 4096,
        "llm.dim": 256,
        "llm.n_layers": 6,
        "llm.n_heads": 4,
        "llm.n_kv_heads": 4,
        "llm.ffn_dim": 704,
        "llm.max_seq_len": 2048,
        "vision.image_size": 64,
        "vision.patch_size": 8,
        "vision.dim": 192,
        "vision.n_layers": 4,
        "vision.n_heads": 3,
        "vision.mlp_dim": 768,
        "vq.image_size": 64,
        "vq.codebook_size": 1024,
        "vq.base_channels": 32,
        "vq.channel_mult": (1, 2, 2, 4),
        "vq.z_channels": 64,
        "vq.num_res_blocks": 1,
    },
}
