"""Post-training on several processes (gloo on CPU): GRPO and DPO on two ranks make the same
samples as on one and end at the same weights; a two-rank checkpoint resumes on one rank; a
step that the ranks cannot share is refused before a model is built."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openjanus.cli import main
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors

REPO = Path(__file__).resolve().parents[2]
LORA = {"rank": 4, "alpha": 8, "targets": "model.language_model.*proj"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _grpo_worker(rank: int, port: int, tmp: str, checkpoint: str, case: str) -> None:
    from openjanus.distributed import destroy
    from openjanus.posttrain.grpo import GRPOTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    finished = False
    try:
        cfg = _grpo_cfg(Path(tmp) / "two", Path(checkpoint), case)
        trainer = GRPOTrainer(cfg, log=lambda _: None, eval_hook=weight_sum,
                              reward_override=[(Recorded(Path(tmp) / f"rewards_rank{rank}.jsonl"), 1.0)])
        from torch.distributed.tensor import DTensor

        blocks = trainer.policy.model.llm.layers
        assert all(isinstance(p, DTensor) for p in blocks.parameters())  # FSDP2 shards, not copies
        assert sum(p.to_local().numel() for p in blocks.parameters()) < sum(p.numel() for p in blocks.parameters())
        trainer.fit()
        trainer.close()
        del trainer
        finished = True
    finally:
        destroy(wait_for_all=finished)


def _records(path: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec.pop("call"), []).append(rec)
    return out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_grpo_two_ranks_match_one(tmp_path, tiny_checkpoint, one_thread, case):
    from openjanus.posttrain.grpo import GRPOTrainer

    mp.spawn(_grpo_worker, args=(_free_port(), str(tmp_path), str(tiny_checkpoint), case), nprocs=2, join=True)
    single = GRPOTrainer(_grpo_cfg(tmp_path / "one", tiny_checkpoint, case), log=lambda _: None, eval_hook=weight_sum,
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
    # Reduce-scatter sums the ranks' gradients in another order than one process's backward:
    # equal up to fp32 rounding, which Adam's normalisation can amplify for an element whose
    # gradient is near zero (as in tests/train/test_fsdp.py); updates are ~1e-3 per step.
    print(case, max(float((a[k] - b[k]).abs().max()) for k in a))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)
    # The logged figures are the whole step's (reduced over the ranks), written once.
    m1, m2 = _lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl")
    assert [x["step"] for x in m2] == [1, 2]
    for x, y in zip(m1, m2, strict=True):
        for k in ("reward", "skipped", "trained_samples", "loss", "kl", "ratio", "grad_norm", "entropy"):
            assert x.get(k) == pytest.approx(y.get(k), rel=1e-5, abs=1e-7), k
    # Rank 0 evaluated on the gathered weights, at steps 0, 1 and 2, and alone wrote the results.
    e1, e2 = _lines(tmp_path / "one" / "eval.jsonl"), _lines(tmp_path / "two" / "eval.jsonl")
    assert [x["step"] for x in e2] == [0, 1, 2]
    for x, y in zip(e1, e2, strict=True):
        assert x["weight_sum"] == pytest.approx(y["weight_sum"], rel=1e-9)
    if case == "lora":
        adapter = list_checkpoints(tmp_path / "two")[-1][1] / "adapter" / "adapter_model.safetensors"
        from safetensors.torch import load_file

        ref = load_file(str(list_checkpoints(tmp_path / "one")[-1][1] / "adapter" / "adapter_model.safetensors"))
        torch.testing.assert_close(load_file(str(adapter)), ref, rtol=1e-5, atol=2e-5)


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
    checkpoints equal a one-process run's at the same steps."""
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
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "openjanus",
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
        # The two ranks' gradients are summed by the reduce-scatter, one process's in one
        # backward: equal up to fp32 rounding (loss, margin and gradient norm agree to 1e-5),
        # which Adam's normalisation amplifies for an element whose gradient is near zero (one
        # of 4096 in gen_head moved 7e-6 apart at step 3, against updates of 3e-3 per step).
        print(step, max(float((a[k] - b[k]).abs().max()) for k in a))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_a_step_the_ranks_cannot_share_is_refused_before_a_model_is_built(tmp_path, tiny_checkpoint, capsys,
                                                                           monkeypatch):
    import openjanus.posttrain.grpo as grpo

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(grpo, "load_policy", no_model)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it (no process group is started before the check)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": str(tiny_checkpoint), "output_dir": str(tmp_path / "run"),
                                "prompts_per_step": 3, "tensorboard": False}))
    assert main(["posttrain", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: prompts_per_step 3 is not a multiple of the 2 processes: each process takes the same "
                   "number of whole prompts (with their groups) per step"]
