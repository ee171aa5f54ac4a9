"""LoRA adapters through peft in PEFT's own format with transformers' Janus module names: one
trained here loads onto transformers' JanusForConditionalGeneration with
`peft.PeftModel.from_pretrained`, and one made there loads here; both give the same logits.

Tolerances are those of tests/checkpoints/test_hf_layout.py (fp32 on both sides, only the
order of reductions differs, ~1e-7 relative): an adapter mapped to the wrong module, a
transposed A/B or a lost scaling moves the logits by 1e-2 or more. Adapters are initialised
at random (B != 0), so that a LoRA that did nothing could not pass. The transformers Janus is
the one tests/conftest.py builds for both files (`hf_janus_folder`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

import pytest
import torch
from conftest import HF_IMAGE_TOKEN_ID as IMAGE_TOKEN_ID
from conftest import load_hf_janus, randomise
from test_hf_layout import (
    TOL,
    _chat_inputs,
    _gen_inputs,
    _hf_image_logits,
    _hf_text_logits,
    _ours_image_logits,
    _ours_text_logits,
)

from openjanus.checkpoints import load_model
from openjanus.config import JanusConfig
from openjanus.errors import UserError
from openjanus.model.janus import Janus
from openjanus.train.lora import add_lora, load_adapter, merge_lora, save_adapter

peft = pytest.importorskip("peft")


@dataclass
class Lora:
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj", "down_proj", "proj_out",
                                                              "vision_head", "generation_aligner.fc1"])


# The same targets written as peft users of transformers' Janus write them (a regex over its
# names, leaving out the vision tower's q/k/v).
HF_TARGETS = (r"model\.language_model\.layers\.\d+\.(self_attn\.(q|o)_proj|mlp\.up_proj)"
              r"|model\.generation_head\.vision_head|lm_head")


def _both_logits(model, ref_model, cfg):
    ids, pixels = _chat_inputs(cfg, IMAGE_TOKEN_ID)
    prompt, codes = _gen_inputs(cfg)
    return ((_ours_text_logits(model, ids, pixels, IMAGE_TOKEN_ID), _hf_text_logits(ref_model, ids, pixels)),
            (_ours_image_logits(model, prompt, codes), _hf_image_logits(ref_model, prompt, codes)))


def test_adapter_trained_here_loads_onto_transformers_janus(hf_janus_folder, tmp_path):
    ours = load_model(hf_janus_folder).eval()
    notes = []
    add_lora(ours, Lora(), init=False, log=notes.append)
    assert notes and "leaves out the understanding encoder's q/k/v" in notes[0]  # "q_proj" matches SigLIP's too
    save_adapter(ours, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and "model.language_model.layers.0.self_attn.q_proj" in cfg["target_modules"]
    hf = peft.PeftModel.from_pretrained(load_hf_janus(hf_janus_folder), tmp_path / "adapter").eval()
    base = load_hf_janus(hf_janus_folder)
    (t_ours, t_hf), (i_ours, i_hf) = _both_logits(ours, hf.get_base_model(), ours.cfg)
    torch.testing.assert_close(t_ours, t_hf, **TOL)
    torch.testing.assert_close(i_ours, i_hf, **TOL)
    # ... and the adapter changed something (so the comparison above is not base vs base).
    (_, t_base), (_, i_base) = _both_logits(ours, base, ours.cfg)
    assert (t_hf - t_base).abs().max() > 1e-3 and (i_hf - i_base).abs().max() > 1e-3


def test_adapter_made_on_transformers_loads_here(hf_janus_folder, tmp_path):
    hf_model = load_hf_janus(hf_janus_folder)
    lora = peft.LoraConfig(r=4, lora_alpha=12, target_modules=HF_TARGETS, init_lora_weights=False)
    peft_model = peft.get_peft_model(hf_model, lora)
    peft_model.save_pretrained(tmp_path / "hf-adapter")
    ours = load_model(hf_janus_folder).eval()
    load_adapter(ours, tmp_path / "hf-adapter")
    (t_ours, t_hf), (i_ours, i_hf) = _both_logits(ours, peft_model.get_base_model().eval(), ours.cfg)
    torch.testing.assert_close(t_ours, t_hf, **TOL)
    torch.testing.assert_close(i_ours, i_hf, **TOL)


def _tiny() -> Janus:
    torch.manual_seed(0)
    model = Janus(JanusConfig.from_name("tiny")).eval()
    randomise(model, seed=1)
    return model


def _logits(model: Janus) -> tuple[torch.Tensor, torch.Tensor]:
    ids, pixels = _chat_inputs(model.cfg, IMAGE_TOKEN_ID)
    prompt, codes = _gen_inputs(model.cfg)
    return _ours_text_logits(model, ids, pixels, IMAGE_TOKEN_ID), _ours_image_logits(model, prompt, codes)


def test_zero_initialised_adapter_is_bit_identical():
    model = _tiny()
    before = _logits(model)
    add_lora(model, Lora(targets=r".*"), init=True)  # every linear layer (the fused SigLIP qkv left out)
    after = _logits(model)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_merged_equals_unmerged_and_export_has_no_adapter(tmp_path):
    model = _tiny()
    add_lora(model, Lora(), init=False)
    unmerged = _logits(model)
    merged_model = merge_lora(copy.deepcopy(model))
    assert not any("lora_" in k for k in merged_model.state_dict())
    merged = _logits(merged_model)
    # Merging adds B @ A * scale into W: the products round differently, nothing more (fp32).
    torch.testing.assert_close(merged[0], unmerged[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged[1], unmerged[1], rtol=1e-5, atol=1e-5)


def test_adapter_for_another_model_is_one_error_naming_the_module(tmp_path):
    model = _tiny()
    add_lora(model, Lora(), init=False)
    save_adapter(model, tmp_path / "a")
    other = Janus(JanusConfig.from_name("tiny", **{"llm.dim": 48, "llm.n_heads": 3, "llm.n_kv_heads": 3}))
    with pytest.raises(UserError, match=r"another model: model\.generation_aligner\.fc1 is"):
        load_adapter(other, tmp_path / "a")
    # A module name the model lacks (a deeper model's layer).
    weights = (tmp_path / "a" / "adapter_model.safetensors")
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["base_model.model.model.language_model.layers.99.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 8)
    save_file(state, str(weights))
    with pytest.raises(UserError, match=r"adapts model\.language_model\.layers\.99\.self_attn\.q_proj"):
        load_adapter(_tiny(), tmp_path / "a")


@pytest.mark.parametrize("settings, message", [
    (Lora(rank=0), "rank must be a positive integer"),
    (Lora(alpha=-1.0), "alpha must be positive"),
    (Lora(targets=["no_such_layer"]), "matches no linear layer"),
    (Lora(targets=[r"model.vision_model.encoder.layers.0.self_attn.q_proj"]), "fuses into one qkv"),
    (Lora(targets=[]), "empty"),
])
def test_bad_lora_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        add_lora(_tiny(), settings)
