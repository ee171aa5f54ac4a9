"""`open_weights`: the one way every caller opens weights, for each kind of folder.

The same tiny model is written as an official folder, a Hugging Face folder, a part file of
its VQ and a SigLIP training checkpoint; each opens to the same tensors in our names."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import build_tiny
from safetensors.torch import save_file

from openjanus.checkpoints import load_model, save_model
from openjanus.checkpoints.weights import export_part, load_part, open_weights
from openjanus.errors import CheckpointError, UserError
from openjanus.model.siglip import SigLIPViT
from openjanus.model.vq import VQModel
from openjanus.train.pretokenize import load_vq
from openjanus.train.siglip import SigLIPPair

# The HF layout needs the VQ grid to equal the vision grid (as in the releases).
HF_FITS = {"vq.image_size": 16}


def _same(tensors, state) -> None:
    assert set(tensors) <= set(state)
    for k, (loader, shape) in tensors.items():
        assert tuple(shape) == tuple(state[k].shape) and torch.equal(loader(), state[k]), k


@pytest.mark.parametrize("layout", ["official", "hf"])
def test_whole_model_folders_open_in_our_names(tmp_path, layout) -> None:
    model = build_tiny(3, **HF_FITS)
    save_model(model, tmp_path, layout=layout)
    weights = open_weights(tmp_path)
    assert (weights.kind, weights.task) == (layout, "janus")
    assert dataclasses.replace(weights.config, name=model.cfg.name) == model.cfg  # named after its folder
    state = model.state_dict()
    _same(weights.tensors, state)
    vq = weights.part_tensors("vq")  # the VQ alone, in the VQ module's names
    _same(vq, {k.removeprefix("gen_tokenizer."): v for k, v in state.items() if k.startswith("gen_tokenizer.")})
    assert weights.part_config("vq") == model.cfg.vq
    assert torch.equal(load_vq(tmp_path).quantize.embedding.weight, model.gen_tokenizer.quantize.embedding.weight)


def test_part_files_and_training_checkpoints(tmp_path) -> None:
    model = build_tiny(4)
    export_part(model.gen_tokenizer.state_dict(), "vq", model.cfg.vq, tmp_path / "vq")
    weights = open_weights(tmp_path / "vq")
    assert (weights.kind, weights.task, weights.part, weights.config) == ("part", "vq", "vq", None)
    assert weights.part_config("vq") == model.cfg.vq
    with pytest.raises(UserError, match="holds the 'vq' part, not 'siglip'"):
        weights.part_tensors("siglip")
    vq = VQModel(model.cfg.vq)
    load_part(vq, "vq", model.cfg.vq, tmp_path / "vq")
    _same(weights.part_tensors("vq"), vq.state_dict())

    # A SigLIP training checkpoint holds the pair (vision and caption towers); the part is the
    # vision tower alone.
    pair = SigLIPPair(model.cfg.vision, vocab_size=64)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in pair.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "train_state.json").write_text(json.dumps({"task": "siglip", "model_config": model.cfg.to_dict()}))
    weights = open_weights(ckpt)
    assert (weights.kind, weights.task, weights.part) == ("training", "siglip", "siglip")
    _same(weights.tensors, pair.state_dict())
    tower = SigLIPViT(model.cfg.vision)
    load_part(tower, "siglip", model.cfg.vision, ckpt)
    _same(weights.part_tensors("siglip"), tower.state_dict())
    with pytest.raises(CheckpointError, match="holds a pretrained 'siglip' part"):
        load_model(ckpt)


def test_a_folder_without_weights_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        open_weights(tmp_path)
