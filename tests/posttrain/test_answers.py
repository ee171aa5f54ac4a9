"""GRPO on answers (samples: answers): groups of sampled answers to shapes-world questions,
rewarded, and an update on their tokens; the questions of a step depend on (seed, step) only."""

from __future__ import annotations

import torch

from openjanus.posttrain.answers import AnswerGRPOTrainer, shapes_questions
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.rewards import exact_answer_reward


def test_questions_are_a_function_of_seed_and_step():
    a = shapes_questions(3, 7, 4, 32)
    b = shapes_questions(3, 7, 4, 32)
    assert [(q.text, q.truth) for q in a] == [(q.text, q.truth) for q in b]
    assert [q.text for q in shapes_questions(3, 8, 4, 32)] != [q.text for q in a]


def test_exact_answer_reward():
    assert exact_answer_reward(["Yes.", "3", "two", "the red one"], ["yes", "three", "three", "red"]) == \
        [1.0, 1.0, 0.0, 0.0]


def test_answer_grpo_step_trains_on_the_sampled_answers(tmp_path, tiny_checkpoint, one_thread):
    cfg = PostTrainConfig.from_dict({
        "samples": "answers", "model": str(tiny_checkpoint), "output_dir": str(tmp_path / "run"),
        "prompts_per_step": 2, "group_size": 3, "steps": 1, "lr": 1e-3, "tensorboard": False, "seed": 2})
    # A reward that varies within each group (the tiny random model never answers right): answer length.
    trainer = AnswerGRPOTrainer(cfg, log=lambda _: None, reward_override=lambda qs, answers: [float(len(a))
                                                                                          for a in answers])
    before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
    m = trainer.step()
    trainer.close()
    assert m["trained_samples"] > 0 and m["skipped"] == 0 and torch.isfinite(torch.tensor(m["loss"]))
    changed = [k for k, v in trainer.policy.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith(("llm", "gen_")) for k in changed)
