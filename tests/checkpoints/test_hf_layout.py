"""The Hugging Face layout, checked against transformers' own Janus implementation at tiny size.

Both models run in fp32 on CPU with the same weights and the same arithmetic, so outputs
differ only by the order of floating-point reductions inside matmuls, convolutions and
softmax (about 1e-7 relative). TOL is a few hundred times that and still catches any
mapping slip (a swapped q/k, a lost bias, a transposed table), which moves outputs by
1e-2 or more. transformers runs with attn_implementation="eager" (explicit matmul and
softmax) so our SDPA attention is checked against a different implementation.

Every tensor is randomised before the comparison: transformers initialises biases to zero
and norms to one, which would hide a wrong mapping of exactly those tensors.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from conftest import (
    HF_IMAGE_TOKEN_ID,
    TINY_HF,
    hf_tiny_cfg,
    hf_transformers,
    load_hf_janus,
    randomise,
    write_hf_sidecars,
)
from torch import Tensor

from openjanus.checkpoints import hf, load_model, save_model
from openjanus.config import ConfigError, JanusConfig
from openjanus.model.janus import Janus

TOL: dict[str, float] = {"rtol": 1e-5, "atol": 1e-5}
IMAGE_TOKEN_ID = HF_IMAGE_TOKEN_ID


# --- the same computation on both sides -------------------------------------------------------


def _chat_inputs(cfg: JanusConfig, image_token_id: int) -> tuple[Tensor, Tensor]:
    # Two rows of text ids, each with one image's placeholders at a different offset.
    g = torch.Generator().manual_seed(1)
    n_img, prefixes, length = cfg.num_und_tokens, (2, 6), cfg.num_und_tokens + 8
    ids = torch.randint(0, cfg.llm.vocab_size, (2, length), generator=g)
    ids[ids == image_token_id] = image_token_id + 1
    for row, start in enumerate(prefixes):
        ids[row, start:start + n_img] = image_token_id
    s = cfg.vision.image_size
    return ids, torch.randn(2, 3, s, s, generator=g)


def _positions(batch: int, length: int) -> Tensor:
    return torch.arange(length).expand(batch, length)


@torch.no_grad()
def _ours_text_logits(model: Janus, ids: Tensor, pixels: Tensor, image_token_id: int) -> Tensor:
    h = model.embed_chat(ids, ids == image_token_id, pixels)
    return model.text_logits(model.llm(h, _positions(*ids.shape)))


@torch.no_grad()
def _hf_text_logits(ref, ids: Tensor, pixels: Tensor) -> Tensor:
    return ref(input_ids=ids, pixel_values=pixels).logits


def _gen_inputs(cfg: JanusConfig) -> tuple[Tensor, Tensor]:
    # A short text prompt followed by image codes, as in image generation.
    g = torch.Generator().manual_seed(2)
    return (torch.randint(0, cfg.llm.vocab_size, (2, 5), generator=g),
            torch.randint(0, cfg.vq.codebook_size, (2, 9), generator=g))


@torch.no_grad()
def _ours_image_logits(model: Janus, prompt: Tensor, codes: Tensor) -> Tensor:
    h = torch.cat([model.embed_text(prompt), model.embed_image_tokens(codes)], dim=1)
    return model.image_logits(model.llm(h, _positions(*h.shape[:2])))


@torch.no_grad()
def _hf_image_logits(ref, prompt: Tensor, codes: Tensor) -> Tensor:
    h = torch.cat([ref.get_input_embeddings()(prompt), ref.prepare_embeddings_for_image_generation(codes)], dim=1)
    return ref.model.generation_head(ref.model.language_model(inputs_embeds=h).last_hidden_state)


def _codes(cfg: JanusConfig) -> Tensor:
    return torch.randint(0, cfg.vq.codebook_size, (2, cfg.num_gen_tokens), generator=torch.Generator().manual_seed(3))


def _vq_images(cfg: JanusConfig) -> Tensor:
    s = cfg.vq.image_size
    return torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(4)) * 2 - 1


# --- transformers -> ours ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pair(hf_janus_folder) -> tuple[Any, Janus]:
    """A random transformers Janus saved by `save_pretrained` and the same folder loaded by us."""
    return load_hf_janus(hf_janus_folder), load_model(hf_janus_folder)


def test_hf_folder_parses_to_the_tiny_config(hf_pair):
    _, ours = hf_pair
    want = hf_tiny_cfg()
    assert (ours.cfg.llm, ours.cfg.vision, ours.cfg.vq, ours.cfg.gen_head_dim) == \
        (want.llm, want.vision, want.vq, want.gen_head_dim)


def test_understanding_logits_match(hf_pair):
    ref, ours = hf_pair
    ids, pixels = _chat_inputs(ours.cfg, ref.config.image_token_id)
    torch.testing.assert_close(_ours_text_logits(ours, ids, pixels, ref.config.image_token_id),
                               _hf_text_logits(ref, ids, pixels), **TOL)


def test_image_head_logits_match(hf_pair):
    ref, ours = hf_pair
    prompt, codes = _gen_inputs(ours.cfg)
    torch.testing.assert_close(_ours_image_logits(ours, prompt, codes), _hf_image_logits(ref, prompt, codes), **TOL)


@torch.no_grad()
def test_vq_decode_matches(hf_pair):
    ref, ours = hf_pair
    codes = _codes(ours.cfg)
    torch.testing.assert_close(ours.decode_image_tokens(codes), ref.model.vqmodel.decode(codes), **TOL)


@torch.no_grad()
def test_vq_encode_matches(hf_pair):
    ref, ours = hf_pair
    images = _vq_images(ours.cfg)
    vq = ref.model.vqmodel
    torch.testing.assert_close(ours.gen_tokenizer.encode_latents(images), vq.quant_conv(vq.encoder(images)), **TOL)
    assert torch.equal(ours.gen_tokenizer.encode(images), vq.encode(images).image_tokens.view(2, -1))


# --- ours -> transformers ---------------------------------------------------------------------


def test_export_loads_in_transformers_and_matches(tmp_path):
    tr = hf_transformers()
    torch.manual_seed(0)
    ours = Janus(hf_tiny_cfg()).eval()
    randomise(ours, seed=1)
    sidecars = tmp_path / "tokenizer"
    sidecars.mkdir()
    write_hf_sidecars(sidecars, image_token_id=11)
    folder = save_model(ours, tmp_path / "export", layout="hf", sidecars_from=sidecars)

    ref, info = tr.JanusForConditionalGeneration.from_pretrained(folder, attn_implementation="eager",
                                                                 output_loading_info=True)
    ref.eval()
    assert {k: sorted(v) for k, v in info.items() if v} == {}
    assert ref.config.image_token_id == 11  # taken from the tokenizer beside the weights
    assert ref.lm_head.weight.data_ptr() != ref.get_input_embeddings().weight.data_ptr()

    ids, pixels = _chat_inputs(ours.cfg, ref.config.image_token_id)
    torch.testing.assert_close(_hf_text_logits(ref, ids, pixels),
                               _ours_text_logits(ours, ids, pixels, ref.config.image_token_id), **TOL)
    prompt, codes = _gen_inputs(ours.cfg)
    torch.testing.assert_close(_hf_image_logits(ref, prompt, codes), _ours_image_logits(ours, prompt, codes), **TOL)
    codes = _codes(ours.cfg)
    with torch.no_grad():
        torch.testing.assert_close(ref.model.vqmodel.decode(codes), ours.decode_image_tokens(codes), **TOL)


def test_official_to_hf_round_trip_keeps_every_tensor(tmp_path):
    torch.manual_seed(0)
    model = Janus(hf_tiny_cfg())
    randomise(model, seed=2)
    save_model(model, tmp_path / "official", layout="official")
    via_official = load_model(tmp_path / "official")
    save_model(via_official, tmp_path / "hf", layout="hf")
    back = load_model(tmp_path / "hf")

    assert (back.cfg.llm, back.cfg.vision, back.cfg.vq) == (model.cfg.llm, model.cfg.vision, model.cfg.vq)
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for key, t in want.items():
        if any(re.search(p, key) for p in hf.OPTIONAL_KEYS):
            assert not got[key].any(), f"{key}: dropped by the HF layout, so it loads as zeros"
        else:
            assert torch.equal(got[key], t), key


# --- key map and config, no transformers needed -----------------------------------------------


def test_every_key_has_an_hf_name_and_maps_back():
    with torch.device("meta"):
        state = Janus(hf_tiny_cfg()).state_dict()
    out = hf.to_hf_state(state, hf_tiny_cfg())
    triples = [(k, (lambda: pytest.fail("loader called during mapping")), tuple(v.shape)) for k, v in out.items()]
    mapped = hf.map_tensors(triples, hf_tiny_cfg())  # lazy: no loader may run here
    optional = [k for k in state if any(re.search(p, k) for p in hf.OPTIONAL_KEYS)]
    assert sorted(mapped) == sorted(set(state) - set(optional))
    assert {k: s for k, (_, s) in mapped.items() if s != tuple(state[k].shape)} == {}


def test_missing_lm_head_is_read_from_the_tied_embedding():
    table = torch.arange(6.0).reshape(3, 2)
    mapped = hf.map_tensors([(hf.EMBED_TOKENS, lambda: table, (3, 2))], hf_tiny_cfg())
    assert torch.equal(mapped["llm.lm_head.weight"][0](), table)


def test_config_round_trip():
    cfg = hf_tiny_cfg()
    back = hf.config_from_hf(hf.config_to_hf(cfg, "float32"), name="x")
    assert (back.llm, back.vision, back.vq, back.gen_head_dim) == (cfg.llm, cfg.vision, cfg.vq, cfg.gen_head_dim)


@pytest.mark.parametrize("overrides,field", [
    ({}, "vq grid"),  # the plain tiny preset: VQ grid 8, SigLIP grid 4
    ({**TINY_HF, "gen_head_dim": 32}, "gen_head_dim"),
    ({**TINY_HF, "vq.norm_groups": 16}, "vq.norm_groups"),
])
def test_config_to_hf_rejects_what_hf_cannot_express(overrides, field):
    with pytest.raises(ConfigError, match=field):
        hf.config_to_hf(JanusConfig.from_name("tiny", **overrides), "float32")


@pytest.mark.parametrize("part,field,value", [
    ("vision_config", "hidden_act", "gelu_pytorch_tanh"),
    ("vision_config", "use_qk_norm", True),
    ("vision_config", "projection_dim", 32),
    ("vq_config", "double_latent", True),
    ("vq_config", "image_token_embed_dim", 32),
    ("text_config", "attention_bias", True),
    ("text_config", "rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
    ("text_config", "head_dim", 8),
    ("text_config", "rope_scaling", {"rope_type": "dynamic", "factor": 2.0}),
])
def test_config_from_hf_names_the_unsupported_field(part, field, value):
    raw = hf.config_to_hf(hf_tiny_cfg(), "float32")
    raw[part][field] = value
    with pytest.raises(ConfigError, match=re.escape(f"{part}.{field}")):
        hf.config_from_hf(raw)


def test_config_from_hf_reads_legacy_rope_theta_and_defaults():
    raw = hf.config_to_hf(hf_tiny_cfg(), "float32")
    del raw["text_config"]["rope_parameters"]
    raw["text_config"]["rope_theta"] = 5e5
    assert hf.config_from_hf(raw).llm.rope_theta == 5e5
    # A config that omits everything is the 1B release's architecture, as in transformers.
    full = hf.config_from_hf({"model_type": "janus", "text_config": {"vocab_size": 102400, "hidden_size": 2048,
                              "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
                              "max_position_embeddings": 16384}})
    want = JanusConfig.from_name("janus-pro-1b")
    assert (full.llm, full.vision, full.vq) == (want.llm, want.vision, want.vq)
