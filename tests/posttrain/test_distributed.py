"""Post-training on several processes (gloo on CPU): GRPO and DPO on two ranks make the same
samples as on one and end at the same weights; a two-rank checkpoint resumes on one rank; a
step that the ranks cannot share is refused before a model is built."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from processes import free_port, gloo_rank

from openjanus.cli import main
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors

REPO = Path(__file__).resolve().parents[2]
LORA = {"rank": 4, "alpha": 8, "targets": "model.language_model.*proj"}


class Recorded:
    """Brightness, NaN for each group's first image, and flat (no policy gradient) for the
    groups of some prompts, so that the ranks train on different numbers of samples; every
    call's (prompt, image digest, reward) goes to a JSONL file."""

    name = "recorded"

    def __init__(self, path: Path) -> None:
        self.path, self.calls = path, 0

    def __call__(self, prompts, images, specs):
        out = []
        for i, (p, im) in enumerate(zip(prompts, images)):
            if i % 3 == 0:
                out.append(float("nan"))
            elif zlib.crc32(p.encode()) % 3 == 0:
                out.append(0.5)
            else:
                out.append(float(np.asarray(im, dtype=np.float64).mean()) / 255)
        with self.path.open("a") as f:
            for p, im, r in zip(prompts, images, out):
                digest = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()[:16]
                f.write(json.dumps({"call": self.calls, "prompt": p, "image": digest, "reward": r}) + "\n")
        self.calls += 1
        return out


CASES = {
    # LoRA: the base frozen (the reference is the adapter switched off), adapters in every LLM block.
    "lora": {"lora": LORA},
    # Full fine-tuning of the default prefixes (the reference a frozen copy in every process),
    # GCPO's critical tokens and two updates per batch (the clipped ratio off 1).
    "full": {"lora": None, "critical_tokens": 0.5, "inner_steps": 2},
    # DPO with self-made pairs (best against worst of each group; a flat group makes none).
    "dpo-self": {"method": "dpo", "lora": LORA},
}


def _grpo_cfg(out: Path, checkpoint: Path, case: str):
    from openjanus.posttrain.config import PostTrainConfig

    return PostTrainConfig.from_dict({
        "model": str(checkpoint), "output_dir": str(out), "prompts_per_step": 4, "group_size": 3, "steps": 2,
        "checkpoint_every": 1, "micro_batch": 2, "lr": 1e-3, "tensorboard": False, "seed": 5, "eval_every": 1,
        **CASES[case]})


def weight_sum(model, step):
    """An evaluation hook: the sum of all weights, which only the gathered (full) weights give."""
    return {"weight_sum": sum(float(p.detach().double().sum()) for p in model.parameters())}


def _trainer_class(case: str):
    from openjanus.posttrain.dpo import DPOTrainer
    from openjanus.posttrain.grpo import GRPOTrainer

    return DPOTrainer if CASES[case].get("method") == "dpo" else GRPOTrainer


def _grpo_worker(rank: int, port: int, tmp: str, checkpoint: str, case: str) -> None:
    with gloo_rank(rank, port):
        cfg = _grpo_cfg(Path(tmp) / "two", Path(checkpoint), case)
        trainer = _trainer_class(case)(cfg, log=lambda _: None, eval_hook=weight_sum,
                              reward_override=[(Recorded(Path(tmp) / f"rewards_rank{rank}.jsonl"), 1.0)])
        from torch.distributed.tensor import DTensor

        blocks = trainer.policy.model.llm.layers
        assert all(isinstance(p, DTensor) for p in blocks.parameters())  # FSDP2 shards, not copies
        assert sum(p.to_local().numel() for p in blocks.parameters()) < sum(p.numel() for p in blocks.parameters())
        trainer.fit()
        trainer.close()
        del trainer


def assert_weights_match(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two runs' weights equal up to the order of floating-point sums. The ranks' gradients are
    summed by FSDP2's reduce-scatter, one process's in one backward: equal up to fp32 rounding
    (the logged loss, KL and gradient norm agree to 1e-5). Adam divides each gradient by its
    own running size, so for an element whose gradient is a near-zero sum of cancelling terms
    (about Adam's eps, 1e-8) that rounding becomes a visible part of the update: with LoRA, one
    element of 8192 moved 8.6e-5 apart at step 2 in a run without any kill (lr 1e-3). So: every
    element within 2e-5 (+1e-5 relative), except at most 1 in 1000, and those within 1e-4, a
    tenth of one update at lr 1e-3."""
    assert a.keys() == b.keys() and a
    total = outliers = 0
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        assert float(diff.max()) <= 1e-4, (k, float(diff.max()))
        outliers += int((diff > 2e-5 + 1e-5 * b[k].double().abs()).sum())
        total += diff.numel()
    assert outliers <= max(1, total // 1000), (outliers, total)


def _records(path: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec.pop("call"), []).append(rec)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_sample_and_train_as_one(tmp_path, tiny_checkpoint, one_thread, case):
    mp.spawn(_grpo_worker, args=(free_port(), str(tmp_path), str(tiny_checkpoint), case), nprocs=2, join=True)
    single = _trainer_class(case)(_grpo_cfg(tmp_path / "one", tiny_checkpoint, case), log=lambda _: None,
                                  eval_hook=weight_sum,
                                  reward_override=[(Recorded(tmp_path / "rewards_single.jsonl"), 1.0)])
    single.fit()
    single.close()

    one = _records(tmp_path / "rewards_single.jsonl")
    ranks = [_records(tmp_path / f"rewards_rank{r}.jsonl") for r in (0, 1)]
    assert sorted(one) == [0, 1]
    uneven = False
    for call, recs in one.items():
        # Rank 0 took the step's first two prompts (with their groups), rank 1 the last two:
        # the same prompts, images (bit for bit) and rewards as one process.
        assert ranks[0][call] + ranks[1][call] == recs
        trained = [sum(1 for x in r[call] if x["reward"] == x["reward"] and x["reward"] != 0.5) for r in ranks]
        uneven |= trained[0] != trained[1]
    assert uneven  # the ranks trained on different numbers of samples at some step (stand-in micro-batches)

    a = read_model_tensors(list_checkpoints(tmp_path / "two")[-1][1])
    b = read_model_tensors(list_checkpoints(tmp_path / "one")[-1][1])
    assert a.keys() == b.keys()
    start = read_model_tensors(list_checkpoints(tmp_path / "one")[0][1])
    assert sum(not torch.equal(start[k], b[k]) for k in b) >= 4  # it trained between the two checkpoints
    assert_weights_match(a, b)
    # The logged figures are the whole step's (reduced over the ranks), written once.
    m1, m2 = _lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl")
    assert [x["step"] for x in m2] == [1, 2]
    for x, y in zip(m1, m2, strict=True):
        for k in ("reward", "skipped", "trained_samples", "loss", "kl", "ratio", "grad_norm", "entropy", "pairs",
                  "reward/accuracy"):
            assert (k in x) == (k in y), k
            if k in x:  # (pytest >= 9.2 refuses approx(None))
                assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k
        # DPO's implicit rewards are beta x differences of sequence log-probabilities (sums of
        # 64 tokens, ~ -270, whose fp32 spacing is 3e-5) of batches of other sizes: to 1e-5.
        assert ("reward/margin" in x) == ("reward/margin" in y)
        if "reward/margin" in x:
            assert x["reward/margin"] == pytest.approx(y["reward/margin"], abs=1e-5)
    # Rank 0 evaluated on the gathered weights, at steps 0, 1 and 2, and alone wrote the results.
    e1, e2 = _lines(tmp_path / "one" / "eval.jsonl"), _lines(tmp_path / "two" / "eval.jsonl")
    assert [x["step"] for x in e2] == [0, 1, 2]
    for x, y in zip(e1, e2, strict=True):
        assert x["weight_sum"] == pytest.approx(y["weight_sum"], rel=1e-9)
    if case != "full":
        adapter = list_checkpoints(tmp_path / "two")[-1][1] / "adapter" / "adapter_model.safetensors"
        from safetensors.torch import load_file

        ref = load_file(str(list_checkpoints(tmp_path / "one")[-1][1] / "adapter" / "adapter_model.safetensors"))
        assert_weights_match(load_file(str(adapter)), ref)


def _dpo_config(tmp: Path, checkpoint: Path, out: Path, tokens: int, **kw) -> Path:
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp / "q.png")
    lines = [{"prompt": f"{n} blue squares", "chosen_tokens": rng.integers(0, 64, tokens).tolist(),
              "rejected_tokens": rng.integers(0, 64, tokens).tolist()} for n in ("two", "three")]
    lines.append({"prompt": "Is there a star?", "images": ["q.png"], "chosen": "yes", "rejected": "no"})
    (tmp / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = {"method": "dpo", "model": str(checkpoint), "output_dir": str(out), "pairs": str(tmp / "pairs.jsonl"),
           "prompts_per_step": 2, "steps": 3, "checkpoint_every": 1, "lr": 3e-3, "dpo_beta": 0.5,
           "tensorboard": False, "seed": 0, **kw}
    path = tmp / f"{out.name}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_dpo_torchrun_two_ranks_match_one_and_resume_on_one(tmp_path, tiny_checkpoint, one_thread):
    """`torchrun --nproc_per_node 2 -m openjanus posttrain` (DPO, full fine-tuning of the default
    prefixes, pairs from a file) for 2 steps; then `--resume` on one process to step 3. Both
    checkpoints equal a one-process run's at the same steps, and that run's step 2 resumed by
    two processes reaches its step 3."""
    from openjanus.checkpoints import load_model

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    from openjanus.shapes.world import rng_for

    tokens = load_model(tiny_checkpoint).cfg.num_gen_tokens
    # Seed 0 draws pairs 0 (image) and 2 (answer) at step 0: each rank runs a stand-in pair of
    # the kind only the other has.
    assert rng_for(0, 979, 0).choice(3, size=2, replace=False).tolist() == [0, 2]
    one = _dpo_config(tmp_path, tiny_checkpoint, tmp_path / "one", tokens)
    two = _dpo_config(tmp_path, tiny_checkpoint, tmp_path / "two", tokens)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "openjanus",
                           "posttrain", str(two), "-o", "steps=2"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x 1 prompts (FSDP2)" in proc.stderr
    ckpt = list_checkpoints(tmp_path / "two")[-1][1]
    assert json.loads((ckpt / "train_state.json").read_text())["world_size"] == 2
    assert main(["posttrain", str(two), "--resume"]) == 0  # one process from the two-process checkpoint
    assert main(["posttrain", str(one)]) == 0

    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in m2] == [1, 2, 3]
    for x, y in zip(m1, m2, strict=True):
        for k in ("loss", "pairs", "reward/margin", "grad_norm"):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), (x["step"], k)
    for step in (2, 3):
        a = read_model_tensors(tmp_path / "one" / "checkpoints" / f"step_{step:08d}")
        b = read_model_tensors(tmp_path / "two" / "checkpoints" / f"step_{step:08d}")
        assert_weights_match(a, b)  # (reduction order only; see there)

    # And the other way: the one-process run's step-2 checkpoint resumed by two processes.
    mixed = _dpo_config(tmp_path, tiny_checkpoint, tmp_path / "mixed", tokens)
    step2 = Path("checkpoints") / "step_00000002"
    shutil.copytree(tmp_path / "one" / step2, tmp_path / "mixed" / step2)
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "openjanus",
                           "posttrain", str(mixed), "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_weights_match(read_model_tensors(tmp_path / "mixed" / "checkpoints" / "step_00000003"),
                         read_model_tensors(tmp_path / "one" / "checkpoints" / "step_00000003"))


@pytest.mark.parametrize("override, message", [
    ("prompts_per_step=3", "error: prompts_per_step 3 is not a multiple of the 2 processes: each process takes the "
                           "same number of whole prompts (with their groups) per step"),
    ("samples=answers", "error: samples: answers runs on one process; start it without torchrun"),
])
def test_what_two_ranks_cannot_share_is_refused_before_a_model_is_built(tmp_path, tiny_checkpoint, capsys,
                                                                        monkeypatch, override, message):
    import openjanus.posttrain.grpo as grpo

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(grpo, "load_policy", no_model)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it (no process group is started before the check)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": str(tiny_checkpoint), "output_dir": str(tmp_path / "run"),
                                "prompts_per_step": 2, "tensorboard": False}))
    assert main(["posttrain", str(path), "-o", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [message]


def test_killed_two_rank_lora_grpo_run_resumes_to_the_one_rank_weights(tmp_path, tiny_checkpoint, one_thread):
    """Two processes (LoRA, the self-reward on the gathered weights) killed with SIGKILL after
    their step-2 or step-3 checkpoint, resumed by torchrun with two processes: the final weights
    equal an uninterrupted one-process run's, and so do the rewards of every step."""
    import signal
    import time

    from openjanus.posttrain.config import PostTrainConfig
    from openjanus.posttrain.grpo import GRPOTrainer

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    cfg = {"model": str(tiny_checkpoint), "output_dir": str(tmp_path / "two"), "prompts_per_step": 2,
           "group_size": 3, "steps": 5, "checkpoint_every": 1, "micro_batch": 4, "lr": 1e-3, "tensorboard": False,
           "seed": 5, "rewards": {"self": 1.0}, "lora": LORA}
    path = tmp_path / "two.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    # The killed run's two ranks are started as torchrun starts them (its environment variables),
    # but by the test: torchrun puts each rank in a session of its own, out of reach of a
    # SIGKILL to torchrun's process group, so that they would live on after it.
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, "-m", "openjanus", "posttrain", str(path)],
                              stderr=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, text=True, start_new_session=True,
                              env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                                   "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}) for rank in (0, 1)]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = ranks[0].stderr.readline()
        if not line or "step 3/5" in line:
            break
    # Step 3 is logged, then checkpointed: killed during that checkpoint or just after it (the
    # step-2 checkpoint is complete, since step 3 started after it).
    for proc in ranks:
        os.killpg(proc.pid, signal.SIGKILL)
    for proc in ranks:
        proc.wait(timeout=60)
    killed_at = list_checkpoints(tmp_path / "two")[-1][0]
    assert 2 <= killed_at < 5
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "openjanus",
                           "posttrain", str(path), "--resume"], capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr
    assert proc.returncode == 0, err[-3000:]
    assert f"at step {killed_at}" in err

    single = GRPOTrainer(PostTrainConfig.from_dict({**cfg, "output_dir": str(tmp_path / "one")}), log=lambda _: None)
    single.fit()
    single.close()
    a = read_model_tensors(list_checkpoints(tmp_path / "two")[-1][1])
    b = read_model_tensors(list_checkpoints(tmp_path / "one")[-1][1])
    assert list_checkpoints(tmp_path / "two")[-1][0] == 5 and a.keys() == b.keys()
    assert any(float(v.abs().max()) > 0 for k, v in b.items() if "lora_B" in k)  # the adapter trained
    assert_weights_match(a, b)  # (reduction order only; see there)
    rewards = {}
    for run in ("one", "two"):  # the killed step is logged twice in the resumed run: the last one counts
        rewards[run] = {x["step"]: x["reward"] for x in _lines(tmp_path / run / "metrics.jsonl")}
    assert sorted(rewards["two"]) == [1, 2, 3, 4, 5]
    for step, r in rewards["one"].items():
        assert rewards["two"][step] == pytest.approx(r, rel=1e-6), step


def _bf16_worker(rank: int, port: int, tmp: str, checkpoint: str) -> None:
    import openjanus.posttrain.grpo as grpo

    grpo.gathered_dtype = lambda device, info: torch.bfloat16  # what a GPU run uses, here on CPU
    with gloo_rank(rank, port):
        cfg = _grpo_cfg(Path(tmp) / "bf16", Path(checkpoint), "full")
        cfg.inner_steps, cfg.critical_tokens = 1, 1.0  # one update per batch: step 1's KL is at the start
        trainer = grpo.GRPOTrainer(cfg, log=lambda _: None,
                                   reward_override=[(Recorded(Path(tmp) / f"rewards_rank{rank}.jsonl"), 1.0)])
        assert trainer.reference is not None and trainer.reference.gen_head.proj.weight.dtype == torch.bfloat16
        trainer.fit()
        trainer.close()
        del trainer


def test_bf16_gathered_weights_as_on_gpus(tmp_path, tiny_checkpoint, one_thread):
    """The mixed precision of a multi-GPU run (weights gathered in bf16, fp32 masters), on CPU:
    sampling, rewards and updates run; the frozen reference computes in the same dtype, so the
    KL of the first step is exactly 0; the checkpoints hold fp32 weights."""
    mp.spawn(_bf16_worker, args=(free_port(), str(tmp_path), str(tiny_checkpoint)), nprocs=2, join=True)
    m = _lines(tmp_path / "bf16" / "metrics.jsonl")
    assert [x["step"] for x in m] == [1, 2]
    assert m[0]["kl"] == 0.0 and m[1]["kl"] > 0 and all(np.isfinite(x["loss"]) for x in m)
    last = read_model_tensors(list_checkpoints(tmp_path / "bf16")[-1][1])
    first = read_model_tensors(list_checkpoints(tmp_path / "bf16")[0][1])
    assert all(v.dtype == torch.float32 for v in last.values() if v.is_floating_point())
    assert any(not torch.equal(first[k], last[k]) for k in last)
