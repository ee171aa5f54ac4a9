"""Training and export never lose work (issue 15), end to end through `openjanus train`:
process-group SIGINT/SIGTERM with dataloader workers, kill -9 at any moment, export into a
folder that holds other files, thin and oversized images in a training shard under a memory
cap, configs checked before anything is built, and resuming with changed optimiser settings."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors
from openjanus.train.loop import EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parents[2]
CFG = JanusConfig.from_name("tiny")


def write_data(root: Path, n: int = 8) -> dict:
    """Small und / text / gen shards (gen as VQ codes) for the tiny preset."""
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"imgs/{i}.png")
    rng = random.Random(0)
    und = [{"messages": [{"role": "user", "content": "what is in this picture?"},
                         {"role": "assistant", "content": f"two green stars {i}."}], "images": [f"imgs/{i % 3}.png"]}
           for i in range(n)]
    text = [{"text": "the cat sat on the mat. " * (1 + i % 2)} for i in range(n)]
    gen = [{"caption": f"a red circle above a blue square {i}.",
            "codes": [rng.randrange(CFG.vq.codebook_size) for _ in range(CFG.num_gen_tokens)]} for i in range(n)]
    for name, records in (("und", und), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"und": str(root / "und.jsonl"), "text": str(root / "text.jsonl"), "gen": str(root / "gen.jsonl"),
            "num_workers": 0, "pin_memory": False, "shuffle_block": 2}


def write_config(path: Path, tokenizer: Path, **fields) -> str:
    base = {"model": {"preset": "tiny", "tokenizer": str(tokenizer)}, "log_every": 1, "progress_bar": False,
            "tensorboard": False, "seq_len": 192, "micro_batch_rows": 1, "checkpoint_every": 1000,
            "stage": {"preset": "stage2", "steps": 4, "warmup_steps": 1, "global_batch": 1}}
    path.write_text(json.dumps({**base, **fields}))
    return str(path)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return read_model_tensors(list_checkpoints(run)[-1][1])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def start_train(args: list[str]) -> subprocess.Popen:
    """`openjanus train ...` as the leader of a new process group (like a job under a scheduler,
    or a pipeline in a terminal), with its stderr readable line by line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "openjanus.cli", "train", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env, start_new_session=True)


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    proc = start_train(args)
    _, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(lines)[-3000:]}")


# --- 1. SIGINT / SIGTERM to the whole process group, with dataloader workers -------------------


def test_group_signals_with_workers_checkpoint_exit_75_and_resume_exactly(tmp_path, tiny_checkpoint) -> None:
    data = {**write_data(tmp_path / "data"), "num_workers": 2}
    steps = 30
    stage = {"preset": "stage2", "steps": steps, "warmup_steps": 1, "global_batch": 1}
    reference = write_config(tmp_path / "ref.json", tiny_checkpoint, output_dir=str(tmp_path / "ref"), data=data,
                             stage=stage)
    assert run_train([reference]).returncode == 0  # in a subprocess too: the same thread count

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "run.json", tiny_checkpoint, output_dir=str(run), data=data, stage=stage)
    stopped_at = []
    for sig, resume in ((signal.SIGTERM, []), (signal.SIGINT, ["--resume"])):
        proc = start_train([cfg, *resume])
        start = stopped_at[-1] if stopped_at else 0
        wait_for_line(proc, f"step {start + 2}/{steps}")
        os.killpg(proc.pid, sig)  # the leader, its dataloader workers, everything in the group
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
        assert "Traceback" not in err and "interrupted, resumable" in err, err[-3000:]
        step = list_checkpoints(run)[-1][0]
        assert start + 2 <= step < steps  # stopped at a step boundary soon after the signal
        stopped_at.append(step)
    assert run_train([cfg, "--resume"]).returncode == 0
    assert [s for s, _ in list_checkpoints(run)] == [*stopped_at, steps]
    assert_same_weights(final_weights(run), final_weights(tmp_path / "ref"))
    assert (run / "export" / "config.json").is_file()  # exported once the run finished


# --- 2. export never deletes or overwrites what it did not write -------------------------------


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """A finished 2-step Stage II run of the tiny preset (one process, no workers)."""
    root = tmp_path_factory.mktemp("short-run")
    cfg = write_config(root / "cfg.json", tiny_checkpoint, output_dir=str(root / "run"),
                       data=write_data(root / "data"), stage={"preset": "stage2", "steps": 2, "global_batch": 1})
    assert main(["train", cfg]) == 0
    return root / "run"


def test_export_into_a_folder_with_other_files(short_run, tmp_path, capsys) -> None:
    from openjanus.checkpoints import load_model

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "other-model.safetensors").write_bytes(b"unrelated weights")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["train", "export", str(short_run), "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["train", "export", str(short_run), "--out", str(out), "--overwrite"]) == 2
    assert "other-model.safetensors" in capsys.readouterr().err  # would be loaded with the export
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched, nothing left behind
    assert not list(tmp_path.glob(".*export-tmp"))

    (out / "other-model.safetensors").unlink()
    assert main(["train", "export", str(short_run), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    model = load_model(out)
    assert model.cfg.llm.dim == CFG.llm.dim
    # Again, in bf16: the export's own files are replaced, the notes kept.
    assert main(["train", "export", str(short_run), "--out", str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert (out / "notes.txt").read_text() == "my notes"
    assert load_model(out, dtype=torch.float32).cfg == model.cfg
    weights = read_model_tensors(out)
    assert all(v.dtype == torch.bfloat16 for v in weights.values() if v.is_floating_point())
