"""DPO (Rafailov et al. 2023) for image generation and for answers, the reference being the
frozen starting model (with LoRA: the base with the adapter switched off).

Pairs come from a JSONL file (`pairs`), one per line::

    {"prompt": "a red circle", "chosen_image": "good.png", "rejected_image": "bad.png"}
    {"prompt": "a red circle", "chosen_tokens": [12, 7, ...], "rejected_tokens": [...]}      # image tokens
    {"prompt": "Is there a star?", "images": ["scene.png"], "chosen": "yes", "rejected": "no"}  # answers

(image paths relative to the file), or are made by the model itself when `pairs` is not given:
per prompt `group_size` images sampled as GRPO samples them, rewarded, and the best paired
with the worst (no pair where they tie).

Under torchrun each process takes its share of the step's pairs (or of the step's prompts for
self-made pairs); the loss is the mean over all the step's pairs, as with one process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from openjanus.distributed import all_reduce_max, all_reduce_sum
from openjanus.errors import UserError
from openjanus.posttrain.config import PostTrainConfig
from openjanus.posttrain.grpo import GRPOTrainer, combined_rewards
from openjanus.posttrain.sharding import gathered, local_slice
from openjanus.requests import Message
from openjanus.shapes.world import rng_for
from openjanus.train.preference import answer_token_logprobs, dpo_loss, t2i_token_logprobs


@dataclass
class Pair:
    prompt: str
    kind: str  # "image" | "answer"
    chosen: Any  # image tokens [T] (image pairs) or answer text
    rejected: Any
    images: list[Path] | None = None  # the question's images (answer pairs)


def read_pairs(path: str | Path, encode_images: Any) -> list[Pair]:
    """Parse a pairs file; `encode_images(list[PIL]) -> tokens [n, T]` turns image files into
    image tokens once."""
    path = Path(path)
    out: list[Pair] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise UserError(f"{where}: each pair needs a non-empty \"prompt\"")
        if "chosen_image" in rec or "rejected_image" in rec:
            ims = []
            for key in ("chosen_image", "rejected_image"):
                p = path.parent / str(rec.get(key, ""))
                if not p.is_file():
                    raise UserError(f"{where}: {key} {rec.get(key)!r} is not a file")
                with Image.open(p) as im:
                    ims.append(im.convert("RGB"))
            tokens = encode_images(ims)
            out.append(Pair(rec["prompt"], "image", tokens[0], tokens[1]))
        elif "chosen_tokens" in rec or "rejected_tokens" in rec:
            c, r = rec.get("chosen_tokens"), rec.get("rejected_tokens")
            if not (isinstance(c, list) and isinstance(r, list) and c and len(c) == len(r)):
                raise UserError(f"{where}: chosen_tokens and rejected_tokens must be lists of image token ids "
                                f"of the same length")
            out.append(Pair(rec["prompt"], "image", torch.tensor(c), torch.tensor(r)))
        elif "chosen" in rec and "rejected" in rec:
            if not all(isinstance(rec[k], str) and rec[k].strip() for k in ("chosen", "rejected")):
                raise UserError(f"{where}: chosen and rejected answers must be non-empty strings")
            images = [path.parent / str(p) for p in rec.get("images", [])]
            missing = [str(p) for p in images if not p.is_file()]
            if missing:
                raise UserError(f"{where}: image {missing[0]} is not a file")
            out.append(Pair(rec["prompt"], "answer", rec["chosen"], rec["rejected"], images))
        else:
            raise UserError(f"{where}: a pair needs chosen_image/rejected_image, chosen_tokens/rejected_tokens, "
                            f"or chosen/rejected answers")
    if not out:
        raise UserError(f"{path}: holds no preference pairs")
    return out


class DPOTrainer(GRPOTrainer):
    """The GRPO trainer's model, reference, optimiser, checkpoints and logs, with DPO steps."""

    def __init__(self, cfg: PostTrainConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        with gathered(self.policy, self.dist_info):  # the VQ encodes image files
            self.pairs = read_pairs(cfg.pairs, self.pipe.encode_images) if cfg.pairs is not None else None
        T = self.policy.model.cfg.num_gen_tokens
        codebook = self.policy.model.cfg.vq.codebook_size
        for p in self.pairs or []:
            if p.kind == "image" and (p.chosen.numel() != T or int(p.chosen.max()) >= codebook
                                      or int(min(p.chosen.min(), p.rejected.min())) < 0):
                raise UserError(f"pair {p.prompt!r}: image tokens must be {T} ids in [0, {codebook})")

    def _pairs_at(self, step: int) -> tuple[list[Pair], dict[str, float]]:
        if self.pairs is not None:
            rng = rng_for(self.cfg.seed, 979, step)
            idx = rng.choice(len(self.pairs), size=self.cfg.prompts_per_step,
                             replace=len(self.pairs) < self.cfg.prompts_per_step)
            # The whole step's draw, then this process's share.
            idx = idx[local_slice(self.cfg.prompts_per_step, self.dist_info)]
            return [self.pairs[int(i)] for i in idx], {}
        # Self-made: sample a group per prompt, reward, pair the best with the worst.
        prompts, tokens, images, _ = self.sample(step)
        rewards, _ = combined_rewards(self.rewards, prompts, images)
        r = torch.tensor(rewards).view(-1, self.cfg.group_size)
        pairs = []
        for g in range(r.shape[0]):
            row = torch.where(torch.isfinite(r[g]), r[g], float("nan"))
            if torch.isnan(row).all():
                continue
            hi = int(torch.nan_to_num(row, nan=-float("inf")).argmax())
            lo = int(torch.nan_to_num(row, nan=float("inf")).argmin())
            if row[hi] > row[lo]:
                base = g * self.cfg.group_size
                pairs.append(Pair(prompts[base].text, "image", tokens[base + hi], tokens[base + lo]))
        finite = r[torch.isfinite(r)].double()
        return pairs, {"reward/sum": float(finite.sum()), "reward/n": float(finite.numel()),
                       "skipped": float((~torch.isfinite(r)).sum())}

    def _seq_logps(self, model: Any, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        image = [p for p in pairs if p.kind == "image"]
        answer = [p for p in pairs if p.kind == "answer"]
        chosen, rejected = [], []
        tok = self.processor.tokenizer
        if image:
            ids = [tok.encode(self.processor.t2i_prompt(p.prompt)) for p in image]
            both = torch.cat([torch.stack([p.chosen for p in image]), torch.stack([p.rejected for p in image])])
            lp = t2i_token_logprobs(model, ids + ids, both, tok.pad_id, self.cfg.guidance, self.cfg.temperature)
            s = lp.sum(1)
            chosen.append(s[:len(image)])
            rejected.append(s[len(image):])
        if answer:
            samples = [self.processor.encode_chat([Message("user", [*p.images, p.prompt])]) for p in answer]
            prompt_ids = [s.input_ids for s in samples] * 2
            masks = [s.image_mask for s in samples] * 2
            pixels = [s.pixel_values for s in samples if s.num_images] * 2
            answers = [tok.encode(p.chosen, bos=False) + [tok.eos_id] for p in answer]
            answers += [tok.encode(p.rejected, bos=False) + [tok.eos_id] for p in answer]
            lp, real = answer_token_logprobs(model, prompt_ids, answers, tok.pad_id,
                                             torch.cat(pixels) if pixels else None, masks)
            s = (lp * real).sum(1)
            chosen.append(s[:len(answer)])
            rejected.append(s[len(answer):])
        return torch.cat(chosen), torch.cat(rejected)

    def _stand_ins(self, pairs: list[Pair]) -> list[Pair]:
        """Pairs of weight 0 for the kinds (image, answer) other processes train on and this one
        has none of this step: each kind is one forward of the LLM blocks, a collective."""
        kinds = ("image", "answer")
        mine = [float(any(p.kind == k for p in pairs)) for k in kinds]
        anyone = all_reduce_max(mine, self.device)
        T = self.policy.model.cfg.num_gen_tokens
        blank = torch.zeros(T, dtype=torch.long)
        made = {"image": Pair("a", "image", blank, blank), "answer": Pair("a", "answer", "a", "b", [])}
        return [made[k] for k, have, need in zip(kinds, mine, anyone) if need and not have]

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        with gathered(self.policy, self.dist_info):
            pairs, found = self._pairs_at(self.state.step)
            self.policy.model.train()
            n_real = len(pairs)
            pairs = pairs + self._stand_ins(pairs)
            if pairs:
                with torch.no_grad():
                    if self.lora is not None:
                        from openjanus.train.lora import adapters_disabled

                        with adapters_disabled(self.policy.model):
                            ref_c, ref_r = self._seq_logps(self.policy.model, pairs)
                    else:
                        ref_c, ref_r = self._seq_logps(self.reference, pairs)
        n_all = int(all_reduce_sum([float(n_real)], self.device)[0])
        world = self.dist_info.world_size
        metrics: dict[str, float] = {}
        sums: dict[str, float] = {}
        if n_all:
            pol_c, pol_r = self.policy(self._seq_logps, pairs)
            # `_seq_logps` puts image pairs first: where the real ones (not stand-ins) are now.
            order = ([i for i, p in enumerate(pairs) if p.kind == "image"]
                     + [i for i, p in enumerate(pairs) if p.kind == "answer"])
            real = torch.tensor([j for j, i in enumerate(order) if i < n_real], dtype=torch.long)
            # Stand-ins join the graph with weight 0, so that this process's backward runs too.
            loss = (pol_c.sum() + pol_r.sum()) * 0.0
            if n_real:
                mean, extra = dpo_loss(pol_c[real], pol_r[real], ref_c[real], ref_r[real], beta=cfg.dpo_beta)
                # The mean over all processes' pairs; FSDP2 averages the gradients, hence x world.
                share = n_real / n_all
                loss = loss + mean * (share * world)
                sums = {"loss": float(mean.detach()) * share, **{k: float(v) * share for k, v in extra.items()}}
            loss.backward()
            metrics["grad_norm"] = self._clip_and_step()
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step += 1
        dt = time.perf_counter() - t0
        # Over all processes: the means of the pair figures, and the rewards of self-made pairs.
        keys = ["loss", "reward/accuracy", "reward/chosen", "reward/margin", "reward/rejected"] if n_all else []
        counts = [sums.get(k, 0.0) for k in keys] + [found.get("reward/sum", 0.0), found.get("reward/n", 0.0),
                                                     found.get("skipped", 0.0)]
        total = all_reduce_sum(counts, self.device)
        metrics.update(dict(zip(keys, total)))
        reward_sum, reward_n, skipped = total[len(keys):]
        metrics["pairs"] = float(n_all)
        metrics["seconds/step"] = dt
        metrics["reward"] = reward_sum / reward_n if reward_n else float("nan")
        metrics["skipped"] = skipped
        self.skipped_total += int(skipped)
        metrics["skipped_total"] = float(self.skipped_total)
        metrics["trained_samples"] = 2.0 * n_all
        metrics["samples_per_s"] = (cfg.prompts_per_step * (cfg.group_size if self.pairs is None else 2)
                                    / metrics["seconds/step"])
        return metrics
