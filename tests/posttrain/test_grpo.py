"""Online GRPO end to end on the tiny checkpoint: NaN rewards are skipped and counted, bad
configs are refused before a model is built, and a run killed with SIGKILL resumes on the same
prompt and sample stream (its final weights equal an uninterrupted run's, bit for bit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openjanus.cli import main
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.grpo import GRPOTrainer
from openjanus.train.checkpoint import list_checkpoints, read_model_tensors

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, checkpoint: Path, **kw) -> dict:
    return {"model": str(checkpoint), "output_dir": str(tmp_path / "run"), "prompts_per_step": 2, "group_size": 3,
            "steps": 2, "checkpoint_every": 1, "micro_batch": 4, "lr": 1e-3, "tensorboard": False, "seed": 5,
            "rewards": {"self": 1.0}, **kw}


class HalfNaN:
    """A reward that cannot decide every third image (NaN) and scores the rest by brightness."""

    name = "test"

    def __call__(self, prompts, images, specs):
        out = []
        for i, im in enumerate(images):
            out.append(float("nan") if i % 3 == 0 else float(np.asarray(im, dtype=np.float64).mean()))
        return out


def test_nan_rewards_skip_their_samples_and_are_counted(tmp_path, tiny_checkpoint, one_thread):
    cfg = PostTrainConfig.from_dict(_cfg(tmp_path, tiny_checkpoint))
    trainer = GRPOTrainer(cfg, log=lambda _: None, reward_override=[(HalfNaN(), 1.0)])
    before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    m = trainer.step()
    trainer.close()
    # 2 prompts x 3 images: images 0 and 3 are NaN -> skipped; each group keeps 2 finite rewards.
    assert m["skipped"] == 2 and m["skipped_total"] == 2 and m["trained_samples"] == 4
    changed = [k for k, v in trainer.policy.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(not k.startswith(("und_encoder", "gen_tokenizer")) for k in changed)


def test_gcpo_step_trains_on_the_critical_tokens(tmp_path, tiny_checkpoint, one_thread):
    cfg = PostTrainConfig.from_dict(_cfg(tmp_path, tiny_checkpoint, critical_tokens=0.3))
    trainer = GRPOTrainer(cfg, log=lambda _: None, reward_override=[(HalfNaN(), 1.0)])
    before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    m = trainer.step()
    trainer.close()
    assert m["trained_samples"] == 4 and m["entropy"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in trainer.policy.model.state_dict().items())


def test_self_reward_is_a_probability(tiny_pipeline, one_thread):
    from openjanus.posttrain.rewards import SelfReward
    from openjanus.requests import ImageRequest

    images = tiny_pipeline.generate(ImageRequest("a red circle", n=2, seed=3)).images
    r = SelfReward(tiny_pipeline.model, tiny_pipeline.processor)(["a red circle"] * 2, images)
    assert len(r) == 2 and all(0.0 < v < 1.0 for v in r) and r[0] != r[1]


@pytest.mark.parametrize("override, message", [
    ("group_size=1", "group_size must be at least 2"),
    ("lora={\"rank\": 0}", "lora.rank must be a positive integer"),
    ("lora={\"alpha\": -2}", "lora.alpha must be positive"),
    ("lora={\"targets\": [\"nothing_like_this\"]}", "matches no linear layer"),
    ("method=dpo", "holds no preference pairs"),
    ("rewards={\"clip\": 1}", "rewards: weights per reward"),
    # numbers go through openjanus.numbers (one family of checks): bounds, kinds, finiteness
    ("steps=0", "steps must be >= 1, got 0"),
    ("micro_batch=2.0", "micro_batch must be an integer, got 2.0"),
    ("lr=Infinity", "lr must be a finite number, got inf"),
    ("kl_beta=-0.1", "kl_beta must be >= 0, got -0.1"),
    ("temperature=0", "temperature must be > 0, got 0: GRPO needs"),
    ("tags={\"single_object\": -1}", "tags.single_object must be >= 0, got -1"),
    ("rewards={\"shapes\": \"high\"}", "rewards.shapes must be a number, got 'high'"),
    ("critical_tokens=0", "critical_tokens must be in (0, 1], got 0"),
    ("critical_tokens=1.5", "critical_tokens must be in (0, 1], got 1.5"),
    ("warmup_steps=-1", "warmup_steps must be >= 0, got -1"),
    ("eval_n=0", "eval_n must be >= 1, got 0"),
    ("grad_clip=-1", "grad_clip must be >= 0, got -1"),
])
def test_bad_configs_are_refused_before_a_model_is_built(tmp_path, tiny_checkpoint, capsys, monkeypatch,
                                                         override, message):
    import openjanus.posttrain.grpo as grpo

    def no_model(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(grpo, "load_policy", no_model)
    (tmp_path / "pairs.jsonl").write_text("\n\n")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_cfg(tmp_path, tiny_checkpoint, pairs=str(tmp_path / "pairs.jsonl"))))
    assert main(["posttrain", str(path), "-o", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def _start(cfg: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "openjanus.cli", "posttrain", str(cfg), *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)


def test_killed_grpo_run_resumes_on_the_same_prompt_and_sample_stream(tmp_path, tiny_checkpoint):
    steps = 6
    ref_cfg = tmp_path / "ref.json"
    ref_cfg.write_text(json.dumps(_cfg(tmp_path / "ref", tiny_checkpoint, steps=steps)))
    proc = _start(ref_cfg)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(_cfg(tmp_path, tiny_checkpoint, steps=steps)))
    proc = _start(cfg)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line or f"step 3/{steps}" in line:
            break
    time.sleep(0.3)  # somewhere inside step 4 (sampling, rewarding or updating) or its checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = list_checkpoints(tmp_path / "run")[-1][0]
    assert 3 <= killed_at < steps
    proc = _start(cfg, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in err and f"at step {killed_at}" in err
    a = read_model_tensors(list_checkpoints(tmp_path / "run")[-1][1])
    b = read_model_tensors(list_checkpoints(tmp_path / "ref" / "run")[-1][1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The same prompts and rewards at every step, before and after the kill.
    def lines(run: Path) -> list[dict]:
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    ref_lines = lines(tmp_path / "ref" / "run")
    run_lines = {r["step"]: r for r in lines(tmp_path / "run")}
    for r in ref_lines:
        assert run_lines[r["step"]]["reward"] == r["reward"]


def test_lora_grpo_run_exports_adapter_and_merged_weights(tmp_path, tiny_checkpoint, one_thread):
    from openjanus.checkpoints import load_model
    from openjanus.train.lora import load_adapter

    cfg = _cfg(tmp_path, tiny_checkpoint, lora={"rank": 4, "alpha": 8, "targets": "model.language_model.*proj"})
    path = tmp_path / "lora.json"
    path.write_text(json.dumps(cfg))
    assert main(["posttrain", str(path)]) == 0
    last = list_checkpoints(tmp_path / "run")[-1][1]
    assert (last / "adapter" / "adapter_model.safetensors").is_file()
    assert main(["train", "export", str(tmp_path / "run"), "--out", str(tmp_path / "adapter")]) == 0
    assert main(["train", "export", str(tmp_path / "run"), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    base = load_model(tiny_checkpoint).eval()
    trained = read_model_tensors(last)
    # Only the adapter trained: every base weight in the checkpoint is the starting one.
    for k, v in trained.items():
        if "lora_" not in k:
            assert torch.equal(v, base.state_dict()[k.replace(".base_layer", "")]), k
    unmerged = load_model(tiny_checkpoint).eval()
    load_adapter(unmerged, tmp_path / "adapter")
    merged = load_model(tmp_path / "merged").eval()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        a = merged.text_logits(merged.llm(merged.embed_text(ids), pos))
        b = unmerged.text_logits(unmerged.llm(unmerged.embed_text(ids), pos))
        c = base.text_logits(base.llm(base.embed_text(ids), pos))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fp32: merging only reorders the products
    assert (a - c).abs().max() > 1e-4  # and the adapter learned something


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "posttrain").glob("demo-*.json")))
def test_demo_grpo_configs_load_and_train_on_the_training_split_only(name):
    cfg = PostTrainConfig.load(REPO / "configs" / "posttrain" / name)
    assert cfg.method == "grpo" and cfg.split == "train" and cfg.rewards == {"shapes": 1.0}
