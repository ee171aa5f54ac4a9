"""Training checkpoints: contents, RNG round trip, and export to the official layout that the
inference side loads with the same logits."""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from conftest import build_tiny
from loop_batches import HandStream

from openjanus.checkpoints import load_model, read_config
from openjanus.model.llm import document_mask
from openjanus.train.checkpoint import export_checkpoint, latest_checkpoint, read_train_state, rng_state, set_rng_state
from openjanus.train.objectives import JanusObjective
from openjanus.train.stages import stage_from_name
from openjanus.train.trainer import LoopSettings, Trainer, apply_stage


def _train(tmp_path, steps: int = 2) -> Trainer:
    model = build_tiny()
    obj = JanusObjective(model)
    stage = stage_from_name("stage3", steps=10, warmup_steps=0, lr=1e-2)
    apply_stage(obj, stage)
    meta = {"task": "janus", "stage": stage.to_dict(), "model_config": model.cfg.to_dict(), "train_config": {}}
    trainer = Trainer(obj, stage, HandStream(model.cfg, rows=1), LoopSettings(output_dir=tmp_path, stop_at=steps,
                                                                              meta=meta), log=lambda line: None)
    trainer.fit()
    return trainer


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_checkpoint_carries_config_and_stage(tmp_path) -> None:
    trainer = _train(tmp_path)
    meta = read_train_state(latest_checkpoint(tmp_path))
    assert meta["step"] == 2 and meta["task"] == "janus" and meta["stage"]["name"] == "stage3"
    assert meta["model_config"]["llm"]["dim"] == trainer.objective.model.cfg.llm.dim
    assert meta["scheduler"]["last_epoch"] == 2 and meta["world_size"] == 1 and meta["has_data_state"]
    optim = torch.load(latest_checkpoint(tmp_path) / "optimizer.pt", weights_only=True)
    # Keyed by parameter name, so a checkpoint does not depend on the number of processes.
    assert "model.gen_head.proj.weight" in optim["state"]
    assert not any(k.startswith("model.gen_tokenizer") for k in optim["state"])


def test_export_loads_with_the_same_logits(tmp_path, tiny_checkpoint) -> None:
    trainer = _train(tmp_path / "run")
    model = trainer.objective.model.eval()
    out, notes = export_checkpoint(latest_checkpoint(tmp_path / "run"), tmp_path / "export",
                                   tokenizer_dir=tiny_checkpoint)
    assert notes == [] and (out / "tokenizer.json").is_file()
    assert read_config(out)[1] == "official"
    loaded = load_model(out)
    ids = torch.randint(0, model.cfg.llm.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12)[None]
    with torch.no_grad():
        logits = []
        for m in (model, loaded):
            h = m.llm(m.embed_text(ids), pos, mask=document_mask(torch.zeros_like(ids)))
            logits.append((m.text_logits(h), m.image_logits(h), m.embed_image_tokens(torch.arange(4))))
    for a, b in zip(*logits):
        assert torch.equal(a, b)

    from openjanus.inference.pipeline import JanusPipeline  # what `openjanus chat/generate --model DIR` does

    pipe = JanusPipeline.load(str(out), device="cpu", dtype="float32")
    assert pipe.model.cfg == model.cfg


def test_export_without_tokenizer_says_so(tmp_path) -> None:
    _train(tmp_path / "run", steps=1)
    out, notes = export_checkpoint(latest_checkpoint(tmp_path / "run"), tmp_path / "export", dtype=torch.bfloat16)
    assert any("tokenizer" in n for n in notes)
    assert json.loads((out / "config.json").read_text())["model_type"] == "multi_modality"
    assert load_model(out).llm.embed.weight.dtype == torch.bfloat16


def test_training_checkpoint_is_not_an_inference_folder(tmp_path) -> None:
    # Our training checkpoints use our names; only `export` writes the official layout.
    _train(tmp_path / "run", steps=1)
    assert not (latest_checkpoint(tmp_path / "run") / "config.json").exists()
