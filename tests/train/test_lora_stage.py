"""LoRA in a Janus training stage (`lora` in the training config): the base stays frozen, the
run resumes, exports the adapter (PEFT format) at the end and `train export --merge` writes
merged weights; under torchrun (FSDP2, 2 CPU processes) the same."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from processes import free_port
from train_data import write_train_config, write_train_data

from openjanus.checkpoints import load_model
from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.model.janus import Janus
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors
from openjanus.train.lora import load_adapter

LORA = {"rank": 4, "alpha": 8, "targets": "model.language_model.*proj|model.generation_head.*"}


def _config(tmp_path: Path, tokenizer: Path, steps: int = 3) -> Path:
    return Path(write_train_config(
        tmp_path / "cfg.json", output_dir=str(tmp_path / "run"), model={"preset": "tiny", "tokenizer": str(tokenizer)},
        data=write_train_data(tmp_path / "data"), stage={"preset": "stage3", "steps": steps, "global_batch": 2},
        checkpoint_every=1, lora=LORA))


def _check_run(run: Path) -> None:
    torch.manual_seed(0)
    initial = Janus(JanusConfig.from_name("tiny")).state_dict()  # the preset's weights from the seed
    tensors = read_model_tensors(list_checkpoints(run)[-1][1])
    lora = [k for k in tensors if ".lora_" in k]
    assert lora
    for k, v in tensors.items():  # the base is frozen: every base tensor is the initial one
        if ".lora_" not in k:
            assert torch.equal(v, initial[k.replace(".base_layer", "")]), k
    assert (run / "export" / "adapter_config.json").is_file()


def test_lora_stage_resumes_exports_and_merges(tmp_path, tiny_checkpoint, one_thread):
    cfg = _config(tmp_path, tiny_checkpoint)
    assert main(["train", str(cfg), "-o", "stop_at=2"]) == 0
    assert main(["train", str(cfg), "--resume"]) == 0
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)][-1] == 3
    _check_run(run)
    assert main(["train", "export", str(run), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    merged = load_model(tmp_path / "merged").eval()
    torch.manual_seed(0)
    unmerged = Janus(JanusConfig.from_name("tiny")).eval()
    load_adapter(unmerged, run / "export")
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(10).expand(2, 10)
    with torch.no_grad():
        a = merged.image_logits(merged.llm(merged.embed_text(ids), pos))
        b = unmerged.image_logits(unmerged.llm(unmerged.embed_text(ids), pos))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lora_target_matching_nothing_is_refused_before_training(tmp_path, tiny_checkpoint, capsys):
    cfg = _config(tmp_path, tiny_checkpoint)
    assert main(["train", str(cfg), "-o", "lora.targets=nothing_here"]) == 2
    assert "matches no linear layer" in capsys.readouterr().err
    assert not list_checkpoints(tmp_path / "run")


def test_lora_stage_under_torchrun_fsdp2(tmp_path, tiny_checkpoint):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    cfg = _config(tmp_path, tiny_checkpoint, steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m",
                           "openjanus.cli", "train", str(cfg)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    _check_run(tmp_path / "run")
