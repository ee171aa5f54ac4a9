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

import pytest
import torch
from PIL import Image
from train_data import write_train_config, write_train_data

from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors
from openjanus.train.trainer import EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parents[2]
CFG = JanusConfig.from_name("tiny")


def write_data(root: Path) -> dict:
    """Small und / text / gen shards (gen as VQ codes) for the tiny preset, 8 records each."""
    return write_train_data(root, n=8)


def write_config(path: Path, tokenizer: Path, **fields) -> str:
    base = {"model": {"preset": "tiny", "tokenizer": str(tokenizer)}, "checkpoint_every": 1000,
            "stage": {"preset": "stage2", "steps": 4, "warmup_steps": 1, "global_batch": 1}}
    return write_train_config(path, **{**base, **fields})


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


STEPS = 120  # long enough that a signal sent at step 2 always arrives mid-run
STAGE = {"preset": "stage2", "steps": STEPS, "warmup_steps": 1, "global_batch": 1}


@pytest.fixture(scope="module")
def workers_data(tmp_path_factory) -> dict:
    return {**write_data(tmp_path_factory.mktemp("data") / "d"), "num_workers": 2}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_checkpoint, workers_data) -> Path:
    """An uninterrupted 120-step run with 2 dataloader workers (in a subprocess, like the runs
    it is compared with, so the thread count and hence the floats are the same)."""
    root = tmp_path_factory.mktemp("reference")
    cfg = write_config(root / "ref.json", tiny_checkpoint, output_dir=str(root / "run"), data=workers_data, stage=STAGE)
    proc = run_train([cfg])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def test_group_signals_with_workers_checkpoint_exit_75_and_resume_exactly(tmp_path, tiny_checkpoint, workers_data,
                                                                          reference_run) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "run.json", tiny_checkpoint, output_dir=str(run), data=workers_data, stage=STAGE)
    stopped_at = []
    for sig, resume in ((signal.SIGTERM, []), (signal.SIGINT, ["--resume"])):
        proc = start_train([cfg, *resume])
        start = stopped_at[-1] if stopped_at else 0
        wait_for_line(proc, f"step {start + 2}/{STEPS}")
        os.killpg(proc.pid, sig)  # the leader, its dataloader workers, everything in the group
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
        assert "Traceback" not in err and "interrupted, resumable" in err, err[-3000:]
        step = list_checkpoints(run)[-1][0]
        assert start + 2 <= step < STEPS  # stopped at a step boundary soon after the signal
        stopped_at.append(step)
    assert not (run / "export").exists()  # an interrupted run is not exported
    assert run_train([cfg, "--resume"]).returncode == 0
    assert [s for s, _ in list_checkpoints(run)] == [*stopped_at, STEPS]
    assert_same_weights(final_weights(run), final_weights(reference_run))
    assert (run / "export" / "config.json").is_file()  # exported once the run finished


def test_kill_9_at_random_moments_then_resume_exactly(tmp_path, tiny_checkpoint, workers_data, reference_run) -> None:
    # A checkpoint every step, so the kills often land inside a save or a prune.
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "run.json", tiny_checkpoint, output_dir=str(run), data=workers_data, stage=STAGE,
                       checkpoint_every=1, keep_last=2)
    rng = random.Random()
    for attempt in range(2):
        proc = start_train([cfg] + (["--resume"] if list_checkpoints(run) else []))
        wait_for_line(proc, "| loss")
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        root = run / "checkpoints"
        for folder in root.glob("step_*"):  # no half-written or half-pruned checkpoint is visible
            assert {"train_state.json", "optimizer.pt", "model.safetensors", "data_rank0.pt"} <= \
                {p.name for p in folder.iterdir()}, (attempt, sorted(p.name for p in folder.iterdir()))
    proc = run_train([cfg, "--resume"] if list_checkpoints(run) else [cfg])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list_checkpoints(run)[-1][0] == STEPS
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
    assert_same_weights(final_weights(run), final_weights(reference_run))


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


# --- 4. configs are checked before anything big is built -------------------------------------


@pytest.mark.parametrize("override, message", [
    ("stage.steps=20.7", "stage.steps: expected int, got 20.7"),
    ("stage.betas=[0.9]", "stage.betas: expected tuple[float, float]"),
    ("stage.trainable=\"llm\"", "stage.trainable: expected tuple[str, ...]"),
    ("seq_len=100000", "seq_len 100000 exceeds the model's 512 positions"),
    ("seq_len=true", "seq_len: expected int, got true"),
    ("model.overrides.llm.n_layers=100000000", "llm.n_layers 100000000 must lie in [1, 1,024]"),
    ("model.overrides.llm.n_layers=\"two\"", "model.overrides.llm.n_layers: expected int"),
    ("model.overrides.llm.dim=65536", "more than this machine's"),
    ("model.overrides.llm.nlayers=2", "unknown field 'llm.nlayers'"),
    ("data.num_workers=\"2\"", "data.num_workers: expected int, got \"2\""),
    ("data.p_uncond=[0.1]", "data.p_uncond: expected float"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, capsys, override, message) -> None:
    cfg = write_config(tmp_path / "c.json", tmp_path, output_dir=str(tmp_path / "run"), data=write_data(tmp_path / "d"))
    assert main(["train", cfg, "-o", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_every_shipped_config_takes_a_quick_step_count(capsys) -> None:
    from openjanus.train.config import load_train_config

    files = sorted(f for f in (REPO / "configs").glob("*/*.json") if f.parent.name != "posttrain")
    assert len(files) >= 15
    for f in sorted((REPO / "configs" / "posttrain").glob("*.json")):  # `openjanus posttrain` configs
        from openjanus.posttrain.config import PostTrainConfig

        assert PostTrainConfig.load(f, ["steps=10"]).steps == 10, f
    for f in files:
        cfg = load_train_config(f, ["stage.steps=10"])
        stage, notes = cfg.stage.build_with_notes()
        assert stage.steps == 10 and stage.warmup_steps <= 10, f
        if cfg.stage.overrides.get("warmup_steps", 0) > 10:
            assert notes and "cut to the run's steps=10" in notes[0]


def test_shipped_cpu_configs_fit_the_exported_understanding_records(tmp_path, capsys) -> None:
    # The data and tokenizer of docs/training.md's CPU recipe, at a small scale (a tokenizer
    # trained on fewer texts makes longer sequences: the check errs on the safe side).
    from openjanus.processing import JanusProcessor
    from openjanus.train.config import load_train_config
    from openjanus.train.data import SampleBuilder

    data = tmp_path / "und"
    assert main(["eval", "export-dataset", "--kind", "und", "-n", "150", "--image-size", "64", "--out", str(data)]) == 0
    assert main(["train", "tokenizer", "--data", str(data), "--vocab-size", "1024", "--out",
                 str(tmp_path / "tok")]) == 0
    model_cfg = JanusConfig.from_name("small")
    processor = JanusProcessor.from_dir(tmp_path / "tok", model_cfg)
    shard = sorted(data.glob("*.jsonl"))[0]
    builder = SampleBuilder("und", processor, 10_000)
    longest = max(len(builder.build_line(line, shard, random.Random(0))) for line in shard.read_bytes().splitlines())
    assert longest > 256  # what the configs had
    for name in ("cpu-stage1", "cpu-stage2", "cpu-stage3"):
        cfg = load_train_config(REPO / "configs" / "train" / f"{name}.json")
        assert cfg.seq_len >= longest + 32, (name, longest)


# --- 5. resume applies changed optimiser settings, and says so -------------------------------


def test_resume_applies_a_changed_lr_and_betas(short_run, tmp_path, tiny_checkpoint, capsys) -> None:
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(run), data=write_data(tmp_path / "d"),
                       stage={"preset": "stage2", "steps": 4, "warmup_steps": 0, "global_batch": 1, "lr": 1e-3})
    assert main(["train", cfg, "-o", "stop_at=2"]) == 0
    capsys.readouterr()
    assert main(["train", cfg, "--resume", "-o", "stage.lr=0.0005", "-o", "stage.betas=[0.8, 0.9]"]) == 0
    err = capsys.readouterr().err
    assert "applied from this step on: lr 0.001 -> 0.0005; betas [0.9, 0.95] -> [0.8, 0.9]" in err
    assert "step 3/4 | loss" in err and "lr 5.00e-04" in err.split("step 3/4")[1].splitlines()[0]
    optim = torch.load(list_checkpoints(run)[-1][1] / "optimizer.pt", weights_only=True)
    assert {g["lr"] for g in optim["param_groups"]} == {5e-4}
    assert {tuple(g["betas"]) for g in optim["param_groups"]} == {(0.8, 0.9)}

    assert main(["train", cfg, "--resume", "-o", "stage.steps=6", "-o", "stage=stage3"]) == 2
    assert "cannot change what trains" in capsys.readouterr().err


# --- 5b. pruning is atomic; a changed data file is detected on resume --------------------------


def test_interrupted_prune_never_leaves_a_checkpoint_without_weights(short_run, tmp_path, tiny_checkpoint,
                                                                       monkeypatch) -> None:
    import shutil

    import openjanus.train.checkpoint as ckpt

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(run), data=write_data(tmp_path / "d"),
                       checkpoint_every=1, keep_last=1)
    real_rmtree = shutil.rmtree

    def killed_while_deleting(path, ignore_errors=False):
        path = Path(path)
        (path / "model.safetensors").unlink()  # what an interrupted rmtree leaves: some files gone
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_while_deleting)
    assert main(["train", cfg, "-o", "stop_at=2"]) == 130  # "killed" while pruning step 1
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".step_00000001.deleting", "step_00000002"]
    # A folder that lost its weights to an older, non-atomic prune is not taken for a checkpoint.
    legacy = run / "checkpoints" / "step_00000003"
    legacy.mkdir()
    (legacy / "train_state.json").write_text((run / "checkpoints" / "step_00000002" / "train_state.json").read_text())
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert main(["train", cfg, "--resume"]) == 0
    assert [s for s, _ in list_checkpoints(run)] == [4]
    assert not (run / "checkpoints" / ".step_00000001.deleting").exists()


def test_same_size_edit_of_a_data_file_is_detected_on_resume(tmp_path, tiny_checkpoint, capsys) -> None:
    data = write_data(tmp_path / "d")
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(tmp_path / "run"), data=data)
    assert main(["train", cfg, "-o", "stop_at=2"]) == 0
    text = Path(data["text"])
    body = text.read_bytes()
    edited = body.replace(b"the cat sat", b"the dog sat", 1)
    assert len(edited) == len(body) and edited != body
    text.write_bytes(edited)
    capsys.readouterr()
    assert main(["train", cfg, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "source 'text': the content of its 1 shard(s) changed since the checkpoint" in err
    assert err.count("\n") == 1
    text.write_bytes(body)  # restored: resumes
    assert main(["train", cfg, "--resume"]) == 0


# --- issue 13: a missing TensorBoard is reported before training ------------------------------


def test_missing_tensorboard_is_reported_before_any_work(tmp_path, tiny_checkpoint, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(run), data=write_data(tmp_path / "d"),
                       tensorboard=True)
    assert main(["train", cfg]) == 2
    err = capsys.readouterr().err
    assert "pip install 'openjanus[train]'" in err and "step 1/" not in err
    assert not (run / "checkpoints").exists()


# --- 3. odd images in a training shard, under a memory cap -----------------------------------


def test_thin_and_oversized_images_in_a_training_shard_under_a_memory_cap(tmp_path, tiny_checkpoint) -> None:
    from memlimit import run_limited
    from test_images import png_header_only

    root = tmp_path / "d"
    data = write_data(root)
    Image.new("RGB", (1_000_000, 1), (200, 30, 10)).save(root / "imgs" / "thin.png")  # 3 KB
    (root / "imgs" / "huge.png").write_bytes(png_header_only(12_000, 12_000))  # above MAX_IMAGE_PIXELS
    gen = [{"caption": f"a red circle {i}.", "image": f"imgs/{name}"}
           for i, name in enumerate(["thin.png", "0.png", "huge.png", "1.png", "thin.png", "2.png"])]
    (root / "gen-raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    und = [{"messages": [{"role": "user", "content": "what is this?"}, {"role": "assistant", "content": "a line."}],
            "images": [f"imgs/{name}"]} for name in ["thin.png", "huge.png", "0.png"]]
    (root / "und-odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in und))
    data = {**data, "gen": str(root / "gen-raw.jsonl"), "und": str(root / "und-odd.jsonl")}
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(run), data=data,
                       stage={"preset": "stage2", "steps": 6, "warmup_steps": 0, "global_batch": 1})
    # The old preprocessing needed ~16 GB for the thin image; the run itself needs a few hundred MB.
    proc = run_limited(f"""
        import sys
        from openjanus.cli import main
        sys.exit(main(["train", {cfg!r}]))
    """, budget_mb=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(list_checkpoints(run)[-1][1] / "data_rank0.pt", weights_only=True)["state"]
    sources = state["units"]["0"]["sources"]
    for name, per_epoch in (("gen", 6), ("und", 3)):  # one oversized record per epoch of each source
        src = sources[name]
        assert set(src["skipped"]) == {"corrupt_image"}, src["skipped"]
        bad = src["skipped"]["corrupt_image"]
        assert src["records"] - src["samples"] == bad and 1 <= bad <= -(-src["records"] // per_epoch), src
    assert sources["gen"]["samples"] >= 3  # the thin images were cropped and trained on


def test_sigterm_to_torchrun_checkpoints_every_rank_and_resumes(tmp_path, tiny_checkpoint, workers_data) -> None:
    import shutil
    import socket

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", tiny_checkpoint, output_dir=str(run), data=workers_data,
                       stage={**STAGE, "steps": 200, "global_batch": 2})

    def torchrun_train(*extra: str) -> subprocess.Popen:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "openjanus.cli",
                                 "train", cfg, *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env, start_new_session=True)

    proc = torchrun_train()
    wait_for_line(proc, "step 3/200")
    # torchrun passes the signal on to each rank's process group (the rank and its workers).
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    # Each rank exits 75; torchrun itself reports the signal it got (exit status 1).
    assert f"exit status {EXIT_INTERRUPTED}: interrupted, resumable" in err, err[-3000:]
    (step, folder), = list_checkpoints(run)
    assert 3 <= step < 200
    assert {p.name for p in folder.glob("*_rank*.pt")} == {"data_rank0.pt", "data_rank1.pt", "rng_rank0.pt",
                                                           "rng_rank1.pt"}
    proc = torchrun_train("--resume", "-o", f"stop_at={step + 2}")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert [s for s, _ in list_checkpoints(run)] == [step, step + 2]


def test_part_stream_refuses_changed_records_on_resume(tmp_path) -> None:
    from openjanus.errors import UserError
    from openjanus.train.image_data import PartDataStream

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"{i}.png", "caption": f"c{i}"}) + "\n" for i in range(3)))
    stream = PartDataStream("vq", str(manifest), rows=1, image_size=8)
    next(stream)
    state = json.loads(json.dumps(stream.state_dict()))
    PartDataStream("vq", str(manifest), rows=1, image_size=8).load_state_dict(state)  # same records: fine
    manifest.write_text(manifest.read_text().replace("c1", "c7"))
    with pytest.raises(UserError, match="records changed since the checkpoint"):
        PartDataStream("vq", str(manifest), rows=1, image_size=8).load_state_dict(state)
