"""GRPO on answers: per question about an image, a group of answers sampled through the engine,
rewarded by exact match (`rewards.exact_answer_reward`: yes/no, counts, colours), normalised
within the group, and the same clipped-ratio + KL update as for images, on the answer tokens.

Questions come from the shapes world's training split (`samples: "answers"` in the config):
step k's scenes, questions and sampling seeds are a function of (seed, k) only, like the
image prompts, so a resumed run asks the same questions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from openjanus.posttrain.grpo import GRPOTrainer
from openjanus.posttrain.rewards import exact_answer_reward, finite
from openjanus.requests import ChatRequest, Message, SamplingParams
from openjanus.shapes.tasks import sample_scene_in_split
from openjanus.shapes.text import color_questions, count_questions, pope_questions
from openjanus.shapes.world import render, rng_for
from openjanus.train.lora import adapters_disabled
from openjanus.train.preference import answer_token_logprobs, group_advantages, grpo_loss

MAX_ANSWER_TOKENS = 8


@dataclass(frozen=True)
class Question:
    image: Image.Image
    text: str
    truth: str
    kind: str


def shapes_questions(seed: int, step: int, n: int, image_size: int, split: str = "train") -> list[Question]:
    """`n` questions of step `step`: counting, colour and presence (POPE) questions about fresh
    scenes of `split`."""
    rng = rng_for(seed, 981, step)
    out = []
    for _ in range(n):
        scene = sample_scene_in_split(rng, split if split != "any" else "train", image_size)
        qas = count_questions(scene, rng) + color_questions(scene) + pope_questions(scene, rng, "random")
        qa = qas[int(rng.integers(len(qas)))]
        out.append(Question(render(scene), qa.question, qa.answer, qa.kind))
    return out


class AnswerGRPOTrainer(GRPOTrainer):
    """GRPO on answers; model, reference, optimiser, checkpoints and logs as for images."""

    def __init__(self, cfg: Any, reward_override: Any = None, **kw: Any) -> None:
        super().__init__(cfg, reward_override=[], **kw)
        # (questions, answers) -> rewards; default: exact match with each question's truth
        self.answer_reward = reward_override or (
            lambda qs, answers: exact_answer_reward(answers, [q.truth for q in qs]))

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        step = self.state.step
        questions = shapes_questions(cfg.seed, step, cfg.prompts_per_step, self.policy.model.cfg.vision.image_size,
                                     cfg.split)
        seeds = self.prompts.seeds(step)
        requests = [ChatRequest.ask(q.text, [q.image], max_new_tokens=MAX_ANSWER_TOKENS,
                                    sampling=SamplingParams(temperature=cfg.temperature), seed=s + g)
                    for q, s in zip(questions, seeds) for g in range(cfg.group_size)]
        self.policy.model.eval()
        results = self.pipe.run(requests)
        t_sample = time.perf_counter() - t0
        flat = [q for q in questions for _ in range(cfg.group_size)]
        rewards = finite(self.answer_reward(flat, [r.text for r in results]))
        r = torch.tensor(rewards, dtype=torch.float32)
        skipped = int((~torch.isfinite(r)).sum())
        self.skipped_total += skipped
        adv = group_advantages(r, cfg.group_size)
        keep = torch.isfinite(r) & (adv != 0) if cfg.skip_flat_groups else torch.isfinite(r)
        # The sampled answer as the policy produced it: its tokens, then EOS when it ended there
        # (ChatResult leaves EOS out; these requests have no stop strings).
        eos = self.processor.tokenizer.eos_id
        answers = [list(res.token_ids) + ([eos] if res.finish_reason == "stop" else []) for res in results]
        idx = keep.nonzero().flatten().tolist()
        metrics: dict[str, float] = {}
        self.policy.model.train()
        if idx:
            samples = [self.processor.encode_chat([Message("user", [flat[i].image, flat[i].text])]) for i in idx]
            ids = [s.input_ids for s in samples]
            masks = [s.image_mask for s in samples]
            pixels = torch.cat([s.pixel_values for s in samples])
            sel = [answers[i] for i in idx]

            def logps(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
                return answer_token_logprobs(model, ids, sel, self.pad_id, pixels, masks)

            ref = None
            if cfg.kl_beta:
                with torch.no_grad():
                    if self.lora is not None:
                        with adapters_disabled(self.policy.model):
                            ref, _ = logps(self.policy.model)
                    else:
                        ref, _ = logps(self.reference)
            lp, real = logps(self.policy.model)
            out = grpo_loss(lp, lp.detach(), ref, adv[idx], mask=real, clip_eps=cfg.clip_eps, kl_beta=cfg.kl_beta)
            out.loss.backward()
            params = [p for p in self.policy.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            metrics.update({"loss": float(out.loss.detach()), "kl": float(out.kl), "grad_norm": float(norm)})
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step += 1
        dt = time.perf_counter() - t0
        finite_r = r[torch.isfinite(r)]
        metrics.update({"reward": float(finite_r.mean()) if finite_r.numel() else float("nan"),
                        "correct": float((finite_r == 1.0).float().mean()) if finite_r.numel() else float("nan"),
                        "skipped": float(skipped), "skipped_total": float(self.skipped_total),
                        "trained_samples": float(len(idx)), "samples_per_s": len(results) / dt,
                        "seconds/sample": t_sample, "seconds/step": dt})
        return metrics
