"""DPO on the tiny checkpoint: pairs from a file (image files, image tokens, answers) and
self-made pairs. At the first step the policy is the reference, so the loss is exactly log 2
(margin 0); a few steps on the pairs make the policy prefer the chosen side."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from openjanus.errors import UserError
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.dpo import DPOTrainer, read_pairs


def _cfg(tmp_path, checkpoint, **kw):
    return PostTrainConfig.from_dict({
        "method": "dpo", "model": str(checkpoint), "output_dir": str(tmp_path / "run"), "prompts_per_step": 3,
        "group_size": 3, "steps": 4, "checkpoint_every": 0, "lr": 3e-3, "dpo_beta": 0.5, "tensorboard": False,
        "seed": 1, "rewards": {"self": 1.0}, **kw})


def _pairs_file(tmp_path, cfg_tokens: int) -> str:
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "q.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    lines = [
        {"prompt": "a red circle", "chosen_image": "a.png", "rejected_image": "b.png"},
        {"prompt": "two blue squares", "chosen_tokens": rng.integers(0, 64, cfg_tokens).tolist(),
         "rejected_tokens": rng.integers(0, 64, cfg_tokens).tolist()},
        {"prompt": "Is there a star?", "images": ["q.png"], "chosen": "yes", "rejected": "no"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_dpo_from_a_pairs_file_starts_at_log2_and_learns_the_preference(tmp_path, tiny_checkpoint, one_thread):
    from openjanus.checkpoints import load_model

    tokens = load_model(tiny_checkpoint).cfg.num_gen_tokens
    cfg = _cfg(tmp_path, tiny_checkpoint, pairs=_pairs_file(tmp_path, tokens))
    trainer = DPOTrainer(cfg, log=lambda _: None)
    kinds = sorted(p.kind for p in trainer.pairs)
    assert kinds == ["answer", "image", "image"]
    first = trainer.step()
    assert abs(first["loss"] - math.log(2)) < 1e-6 and first["pairs"] == 3
    for _ in range(3):
        last = trainer.step()
    trainer.close()
    assert last["loss"] < math.log(2) - 0.05 and last["reward/margin"] > 0


def test_self_made_pairs_pair_best_with_worst(tmp_path, tiny_checkpoint, one_thread):
    trainer = DPOTrainer(_cfg(tmp_path, tiny_checkpoint), log=lambda _: None)
    m = trainer.step()
    trainer.close()
    assert 1 <= m["pairs"] <= 3 and abs(m["loss"] - math.log(2)) < 1e-6 and 0 < m["reward"] < 1


@pytest.mark.parametrize("line, message", [
    ({"prompt": "x", "chosen_image": "nope.png", "rejected_image": "nope.png"}, "is not a file"),
    ({"prompt": "x", "chosen_tokens": [1, 2], "rejected_tokens": [1]}, "same length"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "non-empty \"prompt\""),
    ({"prompt": "x", "chosen": "a"}, "a pair needs"),
])
def test_bad_pairs_are_one_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text("\n" + json.dumps(line) + "\n")
    with pytest.raises(UserError, match=message) as e:
        read_pairs(path, lambda ims: None)
    assert f"{path}:2" in str(e.value)
