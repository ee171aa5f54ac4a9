"""The official deepseek-ai layout (`model_type: "multi_modality"`): config.json and key names.

The official `config.json` nests one `{cls, params}` block per part; its `language_config`
is a transformers LlamaConfig dict in which every omitted field takes LlamaConfig's default
(Janus-Pro-7B omits its width, heads and FFN size entirely).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from openjanus.checkpoints.keymap import compile_table, rename
from openjanus.config import ConfigError, FieldError, JanusConfig, LLMConfig, VisionConfig, VQConfig, renamed_fields

MODEL_TYPE = "multi_modality"

# transformers.LlamaConfig defaults that matter for the architecture.
LLAMA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,  # None means "same as num_attention_heads"
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
}

# SigLIP variants the official tower knows that fit this implementation.
SIGLIP_VARIANTS: dict[str, dict[str, int]] = {
    "siglip_large_patch16_384": {"patch_size": 16, "dim": 1024, "n_layers": 24, "n_heads": 16, "mlp_dim": 4096},
}

# (our prefix, official prefix); `{i}` stands for a layer index. First match wins.
KEY_MAP: list[tuple[str, str]] = [
    ("und_encoder.", "vision_model.vision_tower."),
    ("und_aligner.fc1.", "aligner.layers.0."),
    ("und_aligner.fc2.", "aligner.layers.2."),
    ("gen_tokenizer.", "gen_vision_model."),
    ("gen_aligner.fc1.", "gen_aligner.layers.0."),
    ("gen_aligner.fc2.", "gen_aligner.layers.2."),
    ("gen_head.proj.", "gen_head.output_mlp_projector."),
    ("gen_head.out.", "gen_head.vision_head."),
    ("gen_embed.", "gen_embed."),
    ("llm.embed.", "language_model.model.embed_tokens."),
    ("llm.layers.{i}.attn_norm.", "language_model.model.layers.{i}.input_layernorm."),
    ("llm.layers.{i}.mlp_norm.", "language_model.model.layers.{i}.post_attention_layernorm."),
    ("llm.layers.{i}.attn.", "language_model.model.layers.{i}.self_attn."),
    ("llm.layers.{i}.mlp.", "language_model.model.layers.{i}.mlp."),
    ("llm.norm.", "language_model.model.norm."),
    ("llm.lm_head.", "language_model.lm_head."),
]

# Keys that old saves may carry and that hold nothing we need (RoPE is computed on the fly).
IGNORED_KEYS = (r"\.rotary_emb\.inv_freq$",)
# Our keys that may be absent from a file: never read by the forward pass.
OPTIONAL_KEYS = (r"^und_encoder\.attn_pool\.", r"^gen_tokenizer\.quantize\.codebook_used$")


_TO_OFFICIAL = compile_table(KEY_MAP)
_FROM_OFFICIAL = compile_table([(b, a) for a, b in KEY_MAP])


def to_official_key(key: str) -> str:
    out = rename(key, _TO_OFFICIAL)
    if out is None:
        raise KeyError(f"no official name for {key!r}")
    return out


def from_official_key(key: str) -> str | None:
    """Our name for an official key; None for keys that are knowingly ignored."""
    if any(re.search(p, key) for p in IGNORED_KEYS):
        return None
    return rename(key, _FROM_OFFICIAL) or key  # unknown keys pass through and fail the strict check


def map_tensors(items: Iterable[tuple[str, Callable[[], Tensor], tuple[int, ...]]],
                cfg: JanusConfig) -> dict[str, tuple[Callable[[], Tensor], tuple[int, ...]]]:
    """Official (key, loader, shape) triples -> {our key: (loader, shape)}; loading stays lazy."""
    out = {}
    for key, loader, shape in items:
        ours = from_official_key(key)
        if ours is not None:
            out[ours] = (loader, shape)
    return out


# --- config.json ------------------------------------------------------------------------------


# Our field -> the official config.json's name for it, so that errors name the file's field.
FIELD_NAMES: dict[str, str] = {
    "llm.vocab_size": "language_config.vocab_size",
    "llm.dim": "language_config.hidden_size",
    "llm.n_layers": "language_config.num_hidden_layers",
    "llm.n_heads": "language_config.num_attention_heads",
    "llm.n_kv_heads": "language_config.num_key_value_heads",
    "llm.ffn_dim": "language_config.intermediate_size",
    "llm.norm_eps": "language_config.rms_norm_eps",
    "llm.rope_theta": "language_config.rope_theta",
    "llm.max_seq_len": "language_config.max_position_embeddings",
    "vision.image_size": "vision_config.params.image_size",
    "vision.select_layer": "vision_config.params.select_layer",
    "vq.codebook_size": "gen_vision_config.params.image_token_size",
    "vq.codebook_dim": "gen_vision_config.params.n_embed",
    "gen_head_dim": "gen_head_config.params.image_token_embed",
}


def _params(cfg: dict[str, Any], part: str, expected_cls: tuple[str, ...]) -> dict[str, Any]:
    block = cfg.get(part)
    if not isinstance(block, dict):
        raise ConfigError(f"config.json: missing {part!r}")
    cls = block.get("cls")
    if cls not in expected_cls:
        raise ConfigError(f"config.json: {part}.cls is {cls!r}; supported: {', '.join(expected_cls)}")
    params = block.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: {part}.params must be an object, got {params!r}")
    return dict(params)


def _check_mlp(params: dict[str, Any], part: str, in_dim: int, out_dim: int) -> None:
    if params.get("projector_type", "mlp_gelu") != "mlp_gelu" or params.get("depth", 2) != 2:
        raise ConfigError(f"config.json: {part} must be a depth-2 mlp_gelu projector, got {params}")
    for field, want in (("input_dim", in_dim), ("n_embed", out_dim)):
        if field in params and params[field] != want:
            raise ConfigError(f"config.json: {part}.{field} is {params[field]} but the model needs {want}")


def config_from_official(cfg: dict[str, Any], name: str = "custom") -> JanusConfig:
    """Build a JanusConfig from an official `config.json` dict, validating every part."""
    if cfg.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"config.json: model_type is {cfg.get('model_type')!r}, expected {MODEL_TYPE!r}")
    if "openjanus" in cfg:
        # Our own small models: the official blocks describe the layout, this the exact sizes.
        try:
            with renamed_fields({}, prefix="openjanus."):
                return JanusConfig.from_dict(cfg["openjanus"])
        except FieldError:
            raise
        except ConfigError as e:
            raise ConfigError(f"config.json: openjanus block: {e}") from None
    with renamed_fields(FIELD_NAMES):
        return _config_from_official_blocks(cfg, name)


def _config_from_official_blocks(cfg: dict[str, Any], name: str) -> JanusConfig:
    language_config = cfg.get("language_config", {})
    if not isinstance(language_config, dict):
        raise ConfigError(f"config.json: language_config must be an object, got {language_config!r}")
    lc = {**LLAMA_DEFAULTS, **language_config}
    for field, want in (("hidden_act", "silu"), ("rope_scaling", None), ("attention_bias", False),
                        ("mlp_bias", False), ("tie_word_embeddings", False)):
        if lc.get(field) != want:
            raise ConfigError(f"config.json: language_config.{field}={lc.get(field)!r} is not supported "
                              f"(need {want!r})")
    llm = LLMConfig(
        vocab_size=lc["vocab_size"], dim=lc["hidden_size"], n_layers=lc["num_hidden_layers"],
        n_heads=lc["num_attention_heads"],
        n_kv_heads=lc["num_key_value_heads"] or lc["num_attention_heads"],
        ffn_dim=lc["intermediate_size"], norm_eps=lc["rms_norm_eps"], rope_theta=lc["rope_theta"],
        max_seq_len=lc["max_position_embeddings"],
    )
    if lc.get("head_dim") not in (None, llm.head_dim):
        raise ConfigError(f"config.json: language_config.head_dim={lc['head_dim']} differs from "
                          f"hidden/heads={llm.head_dim}")

    vp = _params(cfg, "vision_config", ("CLIPVisionTower",))
    model_name = vp.get("model_name", "siglip_large_patch16_384")
    if model_name not in SIGLIP_VARIANTS:
        raise ConfigError(f"config.json: vision model {model_name!r} is not supported; "
                          f"supported: {', '.join(SIGLIP_VARIANTS)}")
    if vp.get("pixel_mean") is not None or vp.get("pixel_std") is not None:
        raise ConfigError("config.json: vision_config with pixel_mean/pixel_std (in-tower normalisation) "
                          "is not supported")
    vision = VisionConfig(image_size=vp.get("image_size", 384), select_layer=vp.get("select_layer", -1),
                          **SIGLIP_VARIANTS[model_name])

    gp = _params(cfg, "gen_vision_config", ("VQ-16",))
    vq = VQConfig(codebook_size=gp.get("image_token_size", 16384), codebook_dim=gp.get("n_embed", 8))

    _check_mlp(_params(cfg, "aligner_config", ("MlpProjector",)), "aligner_config", vision.dim, llm.dim)
    _check_mlp(_params(cfg, "gen_aligner_config", ("MlpProjector",)), "gen_aligner_config", vq.codebook_dim, llm.dim)
    hp = _params(cfg, "gen_head_config", ("vision_head",))
    for field, want in (("n_embed", llm.dim), ("image_token_size", vq.codebook_size)):
        if field in hp and hp[field] != want:
            raise ConfigError(f"config.json: gen_head_config.{field} is {hp[field]} but the model needs {want}")
    return JanusConfig(llm=llm, vision=vision, vq=vq, gen_head_dim=hp.get("image_token_embed", llm.dim), name=name)


def config_to_official(cfg: JanusConfig, dtype: str = "bfloat16") -> dict[str, Any]:
    """The official `config.json` for `cfg`.

    Sizes the official schema cannot express (a small SigLIP or VQ) are written under an
    extra top-level `openjanus` key, which the official code ignores and we read back first.
    """
    official_vision = VisionConfig(image_size=cfg.vision.image_size, select_layer=cfg.vision.select_layer,
                                   **SIGLIP_VARIANTS["siglip_large_patch16_384"])
    d = cfg.llm.dim
    out: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "architectures": ["MultiModalityCausalLM"],
        "torch_dtype": dtype,
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": {
            "image_size": cfg.vision.image_size, "model_name": "siglip_large_patch16_384",
            "select_feature": "same", "select_layer": cfg.vision.select_layer}},
        "aligner_config": {"cls": "MlpProjector", "model_type": "aligner", "params": {
            "depth": 2, "input_dim": cfg.vision.dim, "n_embed": d, "projector_type": "mlp_gelu"}},
        "gen_vision_config": {"cls": "VQ-16", "model_type": "gen_vision", "params": {
            "image_token_size": cfg.vq.codebook_size, "n_embed": cfg.vq.codebook_dim}},
        "gen_aligner_config": {"cls": "MlpProjector", "model_type": "gen_aligner", "params": {
            "depth": 2, "input_dim": cfg.vq.codebook_dim, "n_embed": d, "projector_type": "mlp_gelu"}},
        "gen_head_config": {"cls": "vision_head", "model_type": "gen_head", "params": {
            "image_token_embed": cfg.gen_head_dim, "image_token_size": cfg.vq.codebook_size, "n_embed": d}},
        "language_config": {
            "model_type": "llama", "hidden_size": d, "intermediate_size": cfg.llm.ffn_dim,
            "num_hidden_layers": cfg.llm.n_layers, "num_attention_heads": cfg.llm.n_heads,
            "num_key_value_heads": cfg.llm.n_kv_heads, "rms_norm_eps": cfg.llm.norm_eps,
            "rope_theta": cfg.llm.rope_theta, "max_position_embeddings": cfg.llm.max_seq_len,
            "vocab_size": cfg.llm.vocab_size, "torch_dtype": dtype},
    }
    if cfg.vision != official_vision or cfg.vq != VQConfig(codebook_size=cfg.vq.codebook_size,
                                                           codebook_dim=cfg.vq.codebook_dim):
        out["openjanus"] = cfg.to_dict()
    return out
