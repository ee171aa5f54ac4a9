"""The Hugging Face transformers layout (`model_type: "janus"`): config.json and key names.

This is the layout of the deepseek-community releases, read by transformers'
`JanusForConditionalGeneration` (>= 4.52). transformers is never imported here: the
defaults of its config classes that matter for the architecture are written out below.

How it differs from the official layout, and what that means for us:

* Names. The LLM sits under `model.language_model.` (a bare LlamaModel) with `lm_head.` at
  the top; the understanding encoder is `model.vision_model.` with its own names;
  the VQ's levels are `down.{i}.block` / `up.{i}.block` and its middle blocks
  `block_1/attn_1/block_2`; the adaptors keep their second linear in `hidden_layers.0`.
* Shapes. SigLIP's fused `qkv` is stored as separate `q_proj/k_proj/v_proj` (merged back
  lazily on load, split on save) and `pos_embed` [1, P, D] as an embedding table [P, D].
* Dropped weights. HF's converter drops SigLIP's never-run attention pool and the VQ's
  `codebook_used` usage window, so both are optional on load (zero-filled) and not written.
* Config. The vision tower has exactly `num_hidden_layers` blocks (no `select_layer`; we
  export `VisionConfig.depth`, which computes the same features). The VQ decodes a grid
  of (vision image_size / patch_size)^2 codes, so HF cannot express a VQ grid that differs
  from the vision grid. The image-token head's hidden width is the adaptor's
  `projection_dim`, which must equal the LLM width, so `gen_head_dim == llm.dim`. GroupNorm
  uses 32 groups, hard-coded. Understanding images enter at `image_token_id`, the
  tokenizer's `<image_placeholder>` (100581 for Pro-1B; third-party ports report 100594
  for Pro-7B); our config does not hold it (the tokenizer does), so `config_to_hf` takes it.
  `vision_config.num_image_tokens` only sets how many tokens HF's `generate` samples; it is
  written as the VQ grid's token count and not read back.
* Tied head. transformers 5 ties `lm_head` to the input embedding unless the top-level
  `tie_word_embeddings` is false (`JanusConfig` defaults it to true, whatever
  `text_config` says). We write it false; on load a missing `lm_head.weight` (dropped by
  HF's save as a tied duplicate) is read from the input embedding.
* Numerics. Everything matches the official model except VQ *encoding*: HF picks the code
  nearest to the raw latent among the raw codebook rows, where the official code (and
  ours) L2-normalises both first. The two agree only when every codebook row has unit
  length; decoding (which normalises in both) is unaffected. HF's `vision_config.hidden_act`
  also drives the understanding adaptor's activation and `vq_config.hidden_act` the
  generation adaptor's and head's: both must be the exact "gelu".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from openjanus.checkpoints.keymap import compile_table, rename
from openjanus.checkpoints.official import LLAMA_DEFAULTS
from openjanus.config import (
    ConfigError,
    FieldError,
    JanusConfig,
    LLMConfig,
    VisionConfig,
    VQConfig,
    check_float,
    check_int,
    renamed_fields,
)

MODEL_TYPE = "janus"
ARCHITECTURE = "JanusForConditionalGeneration"

Loader = Callable[[], Tensor]

# transformers.JanusVisionConfig defaults that matter for the architecture.
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 16,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "mlp_ratio": 4.0,
    "attention_bias": True,
    "use_qk_norm": False,
    "projection_dim": 2048,
    "depth": 2,
}

# transformers.JanusVQVAEConfig defaults that matter for the architecture.
VQ_DEFAULTS: dict[str, Any] = {
    "embed_dim": 8,
    "num_embeddings": 16384,
    "double_latent": False,
    "latent_channels": 256,
    "in_channels": 3,
    "out_channels": 3,
    "base_channels": 128,
    "channel_multiplier": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "projection_dim": 2048,
    "num_hidden_layers": 2,
    "hidden_act": "gelu",
    "image_token_embed_dim": 2048,
    "beta": 0.25,
}

# `<image_placeholder>` of the Janus-Pro-1B tokenizer, transformers' default.
DEFAULT_IMAGE_TOKEN_ID = 100581
IMAGE_PLACEHOLDER = "<image_placeholder>"
# transformers' VQ builds every GroupNorm with this many groups.
HF_NORM_GROUPS = 32

_VIT = "model.vision_model."
_LAYER = _VIT + "encoder.layers.{i}."
_VQ = "model.vqmodel."
_LM = "model.language_model."

# (our prefix, HF prefix); `{i}` stands for a layer or level index. First match wins, so a
# longer prefix comes before any prefix of it. SigLIP's qkv and pos_embed change shape and
# are handled separately (see _QKV_KEY and POS_EMBED).
KEY_MAP: list[tuple[str, str]] = [
    ("und_encoder.patch_embed.proj.", _VIT + "embeddings.patch_embedding."),
    ("und_encoder.blocks.{i}.norm1.", _LAYER + "layer_norm1."),
    ("und_encoder.blocks.{i}.norm2.", _LAYER + "layer_norm2."),
    ("und_encoder.blocks.{i}.attn.proj.", _LAYER + "self_attn.projection_layer."),
    ("und_encoder.blocks.{i}.mlp.", _LAYER + "mlp."),
    ("und_encoder.norm.", _VIT + "post_layernorm."),
    ("und_aligner.fc1.", "model.aligner.fc1."),
    ("und_aligner.fc2.", "model.aligner.hidden_layers.0."),
    ("gen_tokenizer.encoder.conv_blocks.{i}.res.", _VQ + "encoder.down.{i}.block."),
    ("gen_tokenizer.encoder.conv_blocks.{i}.", _VQ + "encoder.down.{i}."),
    ("gen_tokenizer.encoder.mid.0.", _VQ + "encoder.mid.block_1."),
    ("gen_tokenizer.encoder.mid.1.", _VQ + "encoder.mid.attn_1."),
    ("gen_tokenizer.encoder.mid.2.", _VQ + "encoder.mid.block_2."),
    ("gen_tokenizer.decoder.conv_blocks.{i}.res.", _VQ + "decoder.up.{i}.block."),
    ("gen_tokenizer.decoder.conv_blocks.{i}.", _VQ + "decoder.up.{i}."),
    ("gen_tokenizer.decoder.mid.0.", _VQ + "decoder.mid.block_1."),
    ("gen_tokenizer.decoder.mid.1.", _VQ + "decoder.mid.attn_1."),
    ("gen_tokenizer.decoder.mid.2.", _VQ + "decoder.mid.block_2."),
    ("gen_tokenizer.", _VQ),
    ("gen_aligner.fc1.", "model.generation_aligner.fc1."),
    ("gen_aligner.fc2.", "model.generation_aligner.hidden_layers.0."),
    ("gen_head.proj.", "model.generation_head.proj_out."),
    ("gen_head.out.", "model.generation_head.vision_head."),
    ("gen_embed.", "model.generation_embeddings."),
    ("llm.embed.", _LM + "embed_tokens."),
    ("llm.layers.{i}.attn_norm.", _LM + "layers.{i}.input_layernorm."),
    ("llm.layers.{i}.mlp_norm.", _LM + "layers.{i}.post_attention_layernorm."),
    ("llm.layers.{i}.attn.", _LM + "layers.{i}.self_attn."),
    ("llm.layers.{i}.mlp.", _LM + "layers.{i}.mlp."),
    ("llm.norm.", _LM + "norm."),
    ("llm.lm_head.", "lm_head."),
]

# ([1, P, D] ours, [P, D] HF): the learned positions are an nn.Embedding in transformers.
POS_EMBED = ("und_encoder.pos_embed", _VIT + "embeddings.position_embedding.weight")
LM_HEAD = "lm_head.weight"
EMBED_TOKENS = _LM + "embed_tokens.weight"

_QKV_KEY = re.compile(r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_OUR_QKV_KEY = re.compile(r"^und_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")

# Keys older saves may carry that hold nothing we need (both are recomputed on the fly).
IGNORED_KEYS = (r"\.rotary_emb\.inv_freq$", r"^model\.vision_model\.embeddings\.position_ids$")
# Our keys absent from the HF layout (its converter drops them); neither is read by a forward.
OPTIONAL_KEYS = (r"^und_encoder\.attn_pool\.", r"^gen_tokenizer\.quantize\.codebook_used$")


_TO_HF = compile_table(KEY_MAP)
_FROM_HF = compile_table([(b, a) for a, b in KEY_MAP])


def to_hf_key(key: str) -> str:
    """The HF name of one of our keys (not for `qkv` or `pos_embed`, which change shape)."""
    if key == POS_EMBED[0]:
        return POS_EMBED[1]
    out = rename(key, _TO_HF)
    if out is None:
        raise KeyError(f"no Hugging Face name for {key!r}")
    return out


def from_hf_key(key: str) -> str | None:
    """Our name for an HF key; None for keys that are knowingly ignored."""
    if any(re.search(p, key) for p in IGNORED_KEYS):
        return None
    if key == POS_EMBED[1]:
        return POS_EMBED[0]
    return rename(key, _FROM_HF) or key  # unknown keys pass through and fail the strict check


def map_tensors(items: Iterable[tuple[str, Loader, tuple[int, ...]]],
                cfg: JanusConfig) -> dict[str, tuple[Loader, tuple[int, ...]]]:
    """HF (key, loader, shape) triples -> {our key: (loader, shape)}; loading stays lazy.

    SigLIP's separate q/k/v projections become one `qkv` whose loader concatenates the
    three on demand; an incomplete q/k/v set is passed through under its HF names so that
    the strict load reports it.
    """
    out: dict[str, tuple[Loader, tuple[int, ...]]] = {}
    qkv_parts: dict[tuple[str, str], dict[str, tuple[str, Loader, tuple[int, ...]]]] = {}
    for key, loader, shape in items:
        m = _QKV_KEY.match(key)
        if m:
            layer, which, kind = m.groups()
            qkv_parts.setdefault((layer, kind), {})[which] = (key, loader, tuple(shape))
            continue
        ours = from_hf_key(key)
        if ours is None:
            continue
        if ours == POS_EMBED[0] and len(shape) == 2:
            out[ours] = (lambda f=loader: f().unsqueeze(0), (1, *shape))  # [P, D] -> [1, P, D]
        else:
            out[ours] = (loader, tuple(shape))

    for (layer, kind), parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            for key, loader, shape in parts.values():
                out[key] = (loader, shape)
            continue
        # Rows in q, k, v order: the fused projection's output is read as [3, heads, head_dim].
        loaders = [parts[w][1] for w in "qkv"]
        shapes = [parts[w][2] for w in "qkv"]
        merged = (sum(s[0] for s in shapes), *shapes[0][1:])
        out[f"und_encoder.blocks.{layer}.attn.qkv.{kind}"] = (
            lambda fs=loaders: torch.cat([f() for f in fs], dim=0), merged)

    # save_pretrained drops lm_head.weight when it is tied to the input embedding.
    if "llm.lm_head.weight" not in out and "llm.embed.weight" in out:
        out["llm.lm_head.weight"] = out["llm.embed.weight"]
    return out


def to_hf_state(state: dict[str, Tensor], cfg: JanusConfig) -> dict[str, Tensor]:
    """Our state dict -> HF names and shapes (qkv split, pos_embed squeezed, optional keys dropped).

    The caller's tensors are not modified; split parts are copies, because safetensors
    refuses to write tensors that share storage.
    """
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        if any(re.search(p, key) for p in OPTIONAL_KEYS):
            continue
        m = _OUR_QKV_KEY.match(key)
        if m:
            layer, kind = m.groups()
            for which, part in zip("qkv", t.chunk(3, dim=0)):
                out[f"{_LAYER.format(i=layer)}self_attn.{which}_proj.{kind}"] = part.clone()
        elif key == POS_EMBED[0]:
            out[POS_EMBED[1]] = t.reshape(t.shape[-2], t.shape[-1])  # [1, P, D] -> [P, D]
        else:
            out[to_hf_key(key)] = t
    return out


# --- config.json ------------------------------------------------------------------------------


def _square(value: Any, field: str) -> int:
    # transformers' config types allow an int or an [h, w] pair; only square sizes fit here.
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"config.json: {field}={value!r}; only square sizes are supported")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"config.json: {field}={value!r} is not an integer")
    return value


def _require(block: dict[str, Any], part: str, field: str, want: Any) -> None:
    if block.get(field) != want:
        raise ConfigError(f"config.json: {part}.{field}={block.get(field)!r} is not supported (need {want!r})")


def _rope_theta(tc: dict[str, Any]) -> float:
    # transformers 5 writes rope_parameters; 4.x configs (the published ones) write
    # rope_theta and rope_scaling at the top of text_config.
    params = tc.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: text_config.rope_parameters={params!r} is not an object")
    if params.get("rope_type", "default") != "default":
        raise ConfigError(f"config.json: text_config.rope_parameters={params!r} is not supported (need plain RoPE)")
    if tc.get("rope_scaling") is not None:
        raise ConfigError(f"config.json: text_config.rope_scaling={tc['rope_scaling']!r} is not supported "
                          "(need plain RoPE)")
    if "rope_theta" in params:
        return float(check_float("text_config.rope_parameters.rope_theta", params["rope_theta"]))
    return float(check_float("text_config.rope_theta", tc.get("rope_theta", LLAMA_DEFAULTS["rope_theta"])))


# Our field -> the transformers config.json's name for it, so that errors name the file's field.
FIELD_NAMES: dict[str, str] = {
    "llm.vocab_size": "text_config.vocab_size",
    "llm.dim": "text_config.hidden_size",
    "llm.n_layers": "text_config.num_hidden_layers",
    "llm.n_heads": "text_config.num_attention_heads",
    "llm.n_kv_heads": "text_config.num_key_value_heads",
    "llm.ffn_dim": "text_config.intermediate_size",
    "llm.norm_eps": "text_config.rms_norm_eps",
    "llm.max_seq_len": "text_config.max_position_embeddings",
    "vision.image_size": "vision_config.image_size",
    "vision.patch_size": "vision_config.patch_size",
    "vision.dim": "vision_config.hidden_size",
    "vision.n_layers": "vision_config.num_hidden_layers",
    "vision.n_heads": "vision_config.num_attention_heads",
    "vision.norm_eps": "vision_config.layer_norm_eps",
    "vq.codebook_size": "vq_config.num_embeddings",
    "vq.codebook_dim": "vq_config.embed_dim",
    "vq.base_channels": "vq_config.base_channels",
    "vq.z_channels": "vq_config.latent_channels",
    "vq.num_res_blocks": "vq_config.num_res_blocks",
    "vq.commit_beta": "vq_config.beta",
}


def config_from_hf(raw: dict[str, Any], name: str = "custom") -> JanusConfig:
    """Build a JanusConfig from a transformers Janus `config.json` dict, validating every part.

    Omitted fields take transformers' defaults (LlamaConfig, JanusVisionConfig,
    JanusVQVAEConfig), as they do when transformers reads the file.
    """
    if raw.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"config.json: model_type is {raw.get('model_type')!r}, expected {MODEL_TYPE!r}")
    with renamed_fields(FIELD_NAMES):
        return _config_from_hf_blocks(raw, name)


def _config_from_hf_blocks(raw: dict[str, Any], name: str) -> JanusConfig:
    parts = {}
    for part in ("text_config", "vision_config", "vq_config"):
        block = raw.get(part) or {}
        if not isinstance(block, dict):
            raise ConfigError(f"config.json: {part} is not an object")
        parts[part] = block

    tc = {**LLAMA_DEFAULTS, **parts["text_config"]}
    if tc.get("model_type", "llama") != "llama":
        raise ConfigError(f"config.json: text_config.model_type={tc['model_type']!r} is not supported (need 'llama')")
    for field, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        _require(tc, "text_config", field, want)
    try:
        llm = LLMConfig(
            vocab_size=tc["vocab_size"], dim=tc["hidden_size"], n_layers=tc["num_hidden_layers"],
            n_heads=tc["num_attention_heads"],
            n_kv_heads=tc["num_key_value_heads"] or tc["num_attention_heads"],
            ffn_dim=tc["intermediate_size"], norm_eps=tc["rms_norm_eps"], rope_theta=_rope_theta(tc),
            max_seq_len=tc["max_position_embeddings"],
        )
    except FieldError:
        raise
    except ConfigError as e:
        raise ConfigError(f"config.json: text_config: {e}") from None
    if tc.get("head_dim") not in (None, llm.head_dim):
        raise ConfigError(f"config.json: text_config.head_dim={tc['head_dim']} differs from "
                          f"hidden_size/num_attention_heads={llm.head_dim}")

    vc = {**VISION_DEFAULTS, **parts["vision_config"]}
    for field, want in (("hidden_act", "gelu"), ("num_channels", 3), ("attention_bias", True),
                        ("use_qk_norm", False), ("depth", 2), ("projection_dim", llm.dim)):
        _require(vc, "vision_config", field, want)
    # how transformers sizes the MLP
    mlp_dim = int(check_int("vision_config.hidden_size", vc["hidden_size"])
                  * check_float("vision_config.mlp_ratio", vc["mlp_ratio"]))
    try:
        vision = VisionConfig(
            image_size=_square(vc["image_size"], "vision_config.image_size"),
            patch_size=_square(vc["patch_size"], "vision_config.patch_size"),
            dim=vc["hidden_size"], n_layers=vc["num_hidden_layers"], n_heads=vc["num_attention_heads"],
            mlp_dim=mlp_dim, norm_eps=vc["layer_norm_eps"], select_layer=-1,
        )
    except FieldError:
        raise
    except ConfigError as e:
        raise ConfigError(f"config.json: vision_config: {e}") from None

    qc = {**VQ_DEFAULTS, **parts["vq_config"]}
    for field, want in (("double_latent", False), ("in_channels", 3), ("out_channels", 3),
                        ("num_hidden_layers", 2), ("hidden_act", "gelu"),
                        ("projection_dim", llm.dim), ("image_token_embed_dim", llm.dim)):
        _require(qc, "vq_config", field, want)
    mult = qc["channel_multiplier"]
    if not isinstance(mult, (list, tuple)) or not mult:
        raise ConfigError(f"config.json: vq_config.channel_multiplier={mult!r} is not a list")
    for i, m in enumerate(mult):
        check_int(f"vq_config.channel_multiplier[{i}]", m)
    # transformers decodes a grid of (vision image_size / patch_size)^2 codes whatever the
    # VQ's own settings, so the VQ's image size follows from the vision grid.
    try:
        vq = VQConfig(
            image_size=vision.grid * 2 ** (len(mult) - 1), codebook_size=qc["num_embeddings"],
            codebook_dim=qc["embed_dim"], base_channels=qc["base_channels"], channel_mult=tuple(mult),
            z_channels=qc["latent_channels"], num_res_blocks=qc["num_res_blocks"],
            norm_groups=HF_NORM_GROUPS, commit_beta=qc["beta"],
        )
    except FieldError:
        raise
    except ConfigError as e:
        raise ConfigError(f"config.json: vq_config: {e}") from None
    return JanusConfig(llm=llm, vision=vision, vq=vq, gen_head_dim=llm.dim, name=name)


def config_to_hf(cfg: JanusConfig, dtype: str = "bfloat16", image_token_id: int | None = None) -> dict[str, Any]:
    """A transformers Janus `config.json` for `cfg`.

    `image_token_id` is the tokenizer's `<image_placeholder>` id (see `image_token_id_in`);
    without it, HF's default 100581 (the Pro-1B id) is written when it fits the vocabulary,
    otherwise the last id, which makes a small model loadable but names no real token.
    Sizes transformers cannot express raise ConfigError naming the field.
    """
    llm, vision, vq = cfg.llm, cfg.vision, cfg.vq
    if cfg.gen_head_dim != llm.dim:
        raise ConfigError(f"gen_head_dim {cfg.gen_head_dim} != llm.dim {llm.dim}: the HF layout sizes the "
                          "image head's hidden layer with the adaptor width, which is the LLM width")
    if vq.grid != vision.grid:
        raise ConfigError(f"vq grid {vq.grid} (image_size {vq.image_size} / {vq.downsample}) != vision grid "
                          f"{vision.grid} (image_size {vision.image_size} / patch {vision.patch_size}): "
                          "the HF layout decodes the vision grid's number of codes")
    if vq.norm_groups != HF_NORM_GROUPS:
        raise ConfigError(f"vq.norm_groups {vq.norm_groups} is not supported by the HF layout "
                          f"(always {HF_NORM_GROUPS})")
    mlp_ratio = vision.mlp_dim / vision.dim
    if int(vision.dim * mlp_ratio) != vision.mlp_dim:
        raise ConfigError(f"vision.mlp_dim {vision.mlp_dim} cannot be written as hidden_size * mlp_ratio")
    if image_token_id is None:
        image_token_id = DEFAULT_IMAGE_TOKEN_ID if DEFAULT_IMAGE_TOKEN_ID < llm.vocab_size else llm.vocab_size - 1
    if not 0 <= image_token_id < llm.vocab_size:
        raise ConfigError(f"image_token_id {image_token_id} is outside the vocabulary of {llm.vocab_size}")

    vq_block: dict[str, Any] = {
        "model_type": "janus_vqgan", "embed_dim": vq.codebook_dim, "num_embeddings": vq.codebook_size,
        "double_latent": False, "latent_channels": vq.z_channels, "in_channels": 3, "out_channels": 3,
        "base_channels": vq.base_channels, "channel_multiplier": list(vq.channel_mult),
        "num_res_blocks": vq.num_res_blocks, "num_patches": vq.grid, "dropout": 0.0,
        "projection_dim": llm.dim, "num_hidden_layers": 2, "hidden_act": "gelu",
        "image_token_embed_dim": llm.dim,
    }
    if vq.commit_beta != VQ_DEFAULTS["beta"]:
        vq_block["beta"] = vq.commit_beta  # read by transformers' quantizer when present
    return {
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURE],
        "dtype": dtype,
        "image_token_id": image_token_id,
        # JanusConfig defaults this to true in transformers 5, which would tie lm_head to the
        # input embedding; Janus's head is untied.
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama", "vocab_size": llm.vocab_size, "hidden_size": llm.dim,
            "intermediate_size": llm.ffn_dim, "num_hidden_layers": llm.n_layers,
            "num_attention_heads": llm.n_heads, "num_key_value_heads": llm.n_kv_heads,
            "head_dim": llm.head_dim, "hidden_act": "silu", "rms_norm_eps": llm.norm_eps,
            "max_position_embeddings": llm.max_seq_len, "attention_bias": False, "mlp_bias": False,
            # transformers 5 reads rope_parameters, 4.x rope_theta; each ignores the other.
            "rope_parameters": {"rope_type": "default", "rope_theta": llm.rope_theta},
            "rope_theta": llm.rope_theta,
            "tie_word_embeddings": False, "dtype": dtype,
        },
        "vision_config": {
            "model_type": "janus_vision_model", "hidden_size": vision.dim,
            "num_hidden_layers": vision.depth,  # the blocks actually run; see module docstring
            "num_attention_heads": vision.n_heads, "num_channels": 3,
            "image_size": vision.image_size, "patch_size": vision.patch_size, "hidden_act": "gelu",
            "layer_norm_eps": vision.norm_eps, "mlp_ratio": mlp_ratio, "attention_bias": True,
            "use_qk_norm": False, "projection_dim": llm.dim, "depth": 2,
            "num_image_tokens": cfg.num_gen_tokens,  # how many tokens HF's generate() samples
        },
        "vq_config": vq_block,
    }


def image_token_id_in(folder: str | Path | None) -> int | None:
    """The `<image_placeholder>` id of the `tokenizer.json` in `folder`, or None if there is none."""
    if folder is None:
        return None
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tok = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for added in tok.get("added_tokens") or []:
        if added.get("content") == IMAGE_PLACEHOLDER and isinstance(added.get("id"), int):
            return added["id"]
    vocab = (tok.get("model") or {}).get("vocab")
    found = vocab.get(IMAGE_PLACEHOLDER) if isinstance(vocab, dict) else None
    return found if isinstance(found, int) else None


__all__ = ["MODEL_TYPE", "KEY_MAP", "OPTIONAL_KEYS", "config_from_hf", "config_to_hf", "map_tensors",
           "to_hf_state", "to_hf_key", "from_hf_key", "image_token_id_in"]
