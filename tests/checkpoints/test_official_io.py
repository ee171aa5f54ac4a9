"""Official-layout folders: every file arrangement the releases use, strictness, round trips."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_tiny

from openjanus.checkpoints import load_model, save_model
from openjanus.checkpoints.official import to_official_key
from openjanus.errors import CheckpointError


def official_state(model) -> dict[str, torch.Tensor]:
    return {to_official_key(k): v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def model():
    return build_tiny(seed=3)


def test_sharded_safetensors_round_trip(model, tmp_path):
    save_model(model, tmp_path, max_shard_bytes=200_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    assert_same_weights(load_model(tmp_path), model)


def test_bin_single_and_sharded_with_known_extras(model, tmp_path):
    state = official_state(model)
    # Old saves carry RoPE buffers; some conversions drop the attention pool and usage buffer.
    state["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    del state["gen_vision_model.quantize.codebook_used"]
    for k in [k for k in state if ".attn_pool." in k]:
        del state[k]
    single = tmp_path / "single"
    save_model(model, single)  # for config.json
    for f in single.glob("*.safetensors"):
        f.unlink()
    torch.save(state, single / "pytorch_model.bin")
    loaded = load_model(single)
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        if ".attn_pool." in k or k.endswith("codebook_used"):
            assert not v.any(), "absent optional tensors are zero-filled"
        else:
            assert torch.equal(v, ref[k]), k

    sharded = tmp_path / "sharded"
    shutil.copytree(single, sharded)
    (sharded / "pytorch_model.bin").unlink()
    keys = sorted(state)
    halves = [dict((k, state[k]) for k in keys[: len(keys) // 2]), dict((k, state[k]) for k in keys[len(keys) // 2:])]
    names = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    for name, part in zip(names, halves):
        torch.save(part, sharded / name)
    index = {"weight_map": {k: n for n, part in zip(names, halves) for k in part}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_same_weights(load_model(sharded), loaded)


def test_bf16_release_loads_in_fp32(model, tmp_path):
    save_model(model, tmp_path, dtype=torch.bfloat16)
    loaded = load_model(tmp_path, dtype=torch.float32)
    w = loaded.llm.layers[0].attn.q_proj.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, model.llm.layers[0].attn.q_proj.weight.to(torch.bfloat16).float())


def test_mismatches_are_reported_together(model, tmp_path):
    state = official_state(model)
    state["language_model.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    state["vision_model.vision_tower.surprise"] = torch.zeros(1)
    del state["gen_head.vision_head.bias"]
    save_model(model, tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "1 missing keys: gen_head.out.bias" in msg
    assert "1 unexpected keys: und_encoder.surprise" in msg
    assert "llm.layers.0.mlp.up_proj.weight: checkpoint (3, 3)" in msg


def test_unsafe_pickles_are_refused(tmp_path, model):
    save_model(model, tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path)


def test_not_a_janus_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not a Janus checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "nowhere")
