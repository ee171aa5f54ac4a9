"""`openjanus train CONFIG` end to end on the tiny preset: the real data stream, checkpoints,
resume, export that `openjanus chat/generate` load, and the parts pretrained from scratch then
assembled into Stage I."""

from __future__ import annotations

import json

import pytest
from train_data import write_train_config, write_train_data

from openjanus.checkpoints import load_model
from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.errors import UserError
from openjanus.train.checkpoint import list_checkpoints
from openjanus.train.config import TrainConfig, apply_overrides, load_train_config

CFG = JanusConfig.from_name("tiny")


def _config(tmp_path, name: str, **fields) -> str:
    return write_train_config(tmp_path / f"{name}.json", **fields)


def test_train_resume_and_export_end_to_end(tmp_path, tiny_checkpoint, capsys) -> None:
    run = tmp_path / "run"
    cfg = _config(tmp_path, "stage2", output_dir=str(run), data=write_train_data(tmp_path / "data"),
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
    cfg = _config(tmp_path, "stage1", output_dir=str(tmp_path / "stage1"), data=write_train_data(tmp_path / "data"),
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


def test_plot_of_a_run_with_one_logged_point_draws_the_point(tmp_path):
    """One logged step (a short run): the point is drawn inside the axes, with its value on them."""
    pytest.importorskip("tensorboard")
    import re

    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    with SummaryWriter(str(run / "tensorboard")) as w:
        w.add_scalar("train/loss", 4.25, 10)
    assert main(["train", "plot", str(run), "--out", str(tmp_path / "l.svg")]) == 0
    svg = (tmp_path / "l.svg").read_text()
    (cx, cy), = [tuple(map(float, m)) for m in re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)]
    x, y, w_, h = map(float, re.search(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" '
                                       r'fill="none"', svg).groups())
    assert x < cx < x + w_ and y < cy < y + h  # inside the plot area, not on its edge
    assert ">4.25<" in svg and ">10<" in svg  # the value and the step are labelled


def test_resume_hint_carries_the_overrides():
    """The command printed after Ctrl-C continues the same run: same config, same -o overrides
    (output_dir among them decides which run), quoted for the shell."""
    import shlex

    from openjanus.train.commands import resume_command

    cmd = resume_command("configs/train/cpu-stage1.json", ["output_dir=runs/my run", "stage.lr=5e-4"])
    assert cmd == "openjanus train configs/train/cpu-stage1.json -o 'output_dir=runs/my run' -o stage.lr=5e-4 --resume"
    assert shlex.split(cmd)[2:] == ["configs/train/cpu-stage1.json", "-o", "output_dir=runs/my run",
                                    "-o", "stage.lr=5e-4", "--resume"]
