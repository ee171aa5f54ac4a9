"""`openjanus train CONFIG` end to end on the tiny preset: the real data stream, checkpoints,
resume, export that `openjanus chat/generate` load, and the parts pretrained from scratch then
assembled into Stage I."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from openjanus.checkpoints import load_model
from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.errors import UserError
from openjanus.train.checkpoint import list_checkpoints
from openjanus.train.config import TrainConfig, apply_overrides, load_train_config

CFG = JanusConfig.from_name("tiny")


def _write_data(root) -> dict:
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 40, 3),
                                                          dtype=np.uint8)).save(root / f"imgs/{i}.png")
    rng = random.Random(0)
    und = [{"messages": [{"role": "user", "content": "what is in this picture?"},
                         {"role": "assistant", "content": f"two green stars {i}."}], "images": [f"imgs/{i % 3}.png"]}
           for i in range(6)]
    text = [{"text": "the cat sat on the mat. " * (1 + i % 2)} for i in range(6)]
    gen = [{"caption": f"a red circle above a blue square {i}.",
            "codes": [rng.randrange(CFG.vq.codebook_size) for _ in range(CFG.num_gen_tokens)]} for i in range(6)]
    for name, recs in (("und", und), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {"und": str(root / "und.jsonl"), "text": str(root / "text.jsonl"), "gen": str(root / "gen.jsonl"),
            "num_workers": 0, "pin_memory": False, "shuffle_block": 2}


def _config(tmp_path, name: str, **fields) -> str:
    base = {"log_every": 1, "progress_bar": False, "tensorboard": False, "seq_len": 192, "micro_batch_rows": 1}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**base, **fields}))
    return str(path)


def test_train_resume_and_export_end_to_end(tmp_path, tiny_checkpoint, capsys) -> None:
    run = tmp_path / "run"
    cfg = _config(tmp_path, "stage2", output_dir=str(run), data=_write_data(tmp_path / "data"),
                  model={"preset": "tiny", "tokenizer": str(tiny_checkpoint)},
                  stage={"preset": "stage2", "steps": 3, "warmup_steps": 1, "global_batch": 2},
                  checkpoint_every=2,
                  eval={"every": 3, "benchmarks": ["geneval_shapes"],
                        "options": {"geneval_shapes": {"per_category": 1, "n_per_prompt": 1,
                                                       "tags": ["single_object"]}}})
    assert main(["train", cfg]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [2, 3]
    err = capsys.readouterr().err
    assert "step 3/3 | loss" in err and "| packed " in err and " mix 0." in err
    assert "eval step 3: geneval_shapes/overall" in err  # the evaluation package's runner, via the hook
    assert (run / "eval" / "step_00000003" / "geneval_shapes" / "report.json").is_file()
    model = load_model(run / "export")  # the final export: official layout, with tokenizer files
    assert model.cfg.llm.dim == CFG.llm.dim and (run / "export" / "tokenizer.json").is_file()

    assert main(["train", cfg]) == 2  # refuses to overwrite a run without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["train", cfg, "--resume", "--override", "stage.steps=4"]) == 0
    err = capsys.readouterr().err
    assert "resumed from" in err and "step 4/4" in err
    assert [s for s, _ in list_checkpoints(run)][-1] == 4

    out = tmp_path / "exported"
    assert main(["train", "export", str(run), "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert main(["generate", "--model", str(out), "a red circle", "--out", str(tmp_path / "imgs"),
                 "--temperature", "1", "--guidance", "2"]) == 0
    assert (tmp_path / "imgs" / "image_0.png").is_file()


def test_parts_from_scratch_then_stage1(tmp_path, tiny_checkpoint) -> None:
    tok = {"preset": "tiny", "tokenizer": str(tiny_checkpoint)}
    for task in ("vq", "siglip"):
        cfg = _config(tmp_path, task, output_dir=str(tmp_path / task), model=tok, data={"source": "shapes"},
                      stage={"preset": task, "steps": 1, "warmup_steps": 0, "global_batch": 2}, micro_batch_rows=2)
        assert main(["train", cfg]) == 0
        assert json.loads((tmp_path / task / "export" / "part.json").read_text())["part"] == task
    parts = {"vq": str(tmp_path / "vq" / "export"), "siglip": str(tmp_path / "siglip" / "checkpoints")}
    parts["siglip"] = str(list_checkpoints(tmp_path / "siglip")[-1][1])  # a training checkpoint works too
    cfg = _config(tmp_path, "stage1", output_dir=str(tmp_path / "stage1"), data=_write_data(tmp_path / "data"),
                  model={**tok, "parts": parts},
                  stage={"preset": "stage1", "steps": 1, "warmup_steps": 0, "global_batch": 1})
    assert main(["train", cfg]) == 0
    model = load_model(tmp_path / "stage1" / "export")
    vq = load_model(tmp_path / "stage1" / "export").gen_tokenizer.state_dict()
    from safetensors.torch import load_file

    part = load_file(str(tmp_path / "vq" / "export" / "model.safetensors"))
    for k, v in part.items():
        assert (vq[k] == v).all(), k  # the VQ stays frozen in Stage I
    assert model.cfg.vq == CFG.vq


def test_config_overrides_and_errors(tmp_path) -> None:
    raw = {"output_dir": "x", "model": {"preset": "tiny"}, "stage": "stage1"}
    out = apply_overrides(raw, ["stage.lr=5e-4", "model.overrides.llm.n_layers=3", "seq_len=128", "stage=stage2",
                                "data.num_workers=0"])
    cfg = TrainConfig.from_dict(out)
    assert cfg.stage.preset == "stage2" and cfg.build_stage().lr == 5e-4
    assert cfg.model.overrides == {"llm.n_layers": 3} and cfg.build_model_config().llm.n_layers == 3
    assert cfg.seq_len == 128 and cfg.data.num_workers == 0
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**raw, "sequence_length": 5}))
    with pytest.raises(UserError, match="unknown key.*sequence_length"):
        load_train_config(path)
    path.write_text(json.dumps({**raw, "stage": {"preset": "stage1", "lr": -1}}))
    with pytest.raises(UserError, match="lr -1"):
        load_train_config(path)
    path.write_text(json.dumps({"output_dir": "x", "model": {"preset": "tiny", "checkpoint": "y"}}))
    with pytest.raises(UserError, match="exactly one"):
        load_train_config(path)
    with pytest.raises(UserError, match="key=value"):
        apply_overrides(raw, ["stage.lr"])
    assert main(["train", str(tmp_path / "missing.json")]) == 2


def test_example_configs_load() -> None:
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "configs" / "train"
    files = sorted(folder.glob("*.json"))
    assert {f.stem for f in files} >= {"stage1", "stage2", "stage3", "cpu-vq", "cpu-siglip", "cpu-text"}
    for f in files:
        cfg = load_train_config(f)
        stage = cfg.build_stage()
        if cfg.model.preset is not None:
            cfg.build_model_config()
        if f.stem in ("stage1", "stage2", "stage3"):
            assert stage.name == f.stem and stage.task == "janus"


def test_tokenizer_command(tmp_path) -> None:
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "the quick brown fox jumps over the lazy dog. " * 3},
        {"messages": [{"role": "user", "content": "<image_placeholder>\nwhat colour is the fox?"},
                      {"role": "assistant", "content": "brown."}]},
        {"caption": "a red circle above a blue square", "codes": [1, 2]}]))
    out = tmp_path / "tok"
    assert main(["train", "tokenizer", "--data", str(data), "--vocab-size", "300", "--out", str(out)]) == 0
    from openjanus.processing import JanusTokenizer

    tok = JanusTokenizer.from_dir(out)
    assert tok.vocab_size <= 300 and tok.decode(tok.encode("the red fox")) == "the red fox"


def test_plot_writes_an_svg_of_the_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from openjanus.cli import main

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tensorboard")) as w:
        for step in range(1, 6):
            w.add_scalar("train/loss", 5.0 / step, step)
            w.add_scalar("loss/gen", 6.0 / step, step)
    assert main(["train", "plot", str(run), "--out", str(tmp_path / "l.svg")]) == 0
    svg = (tmp_path / "l.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and "loss/gen" in svg
