"""Which guess for the positions a Gumbel Jacobi window has not reached keeps most tokens per pass.

    python bench/study_gumbel_drafts.py --threads 1

Any guess is lossless with the Gumbel sampler (a draft is kept iff it equals the noisy argmax),
so the guess only decides how soon the exact tokens are found. Positions inside the last window
always take that pass's own tokens (Jacobi's update); this compares what the positions past it
start as, on the demo model at the default settings (temperature 1, guidance 5), one image:

- left: the token before it again (what `sampling.gumbel_drafts` ships);
- above: the token one row up in the image grid (the left one on the first row);
- oracle: the image's final token there (from a run without speculation): an upper bound, not a
  method.

The tokens are the same for every guess (checked); only the passes differ. Then, for the shipped
guess and for MC-SJD, the share of passes that keep no draft at all.
"""

from __future__ import annotations

import argparse

import torch

import openjanus.inference.runner as runner_mod
from openjanus.inference.engine import run_jobs
from openjanus.inference.pipeline import JanusPipeline
from openjanus.inference.runner import BatchRunner, JacobiDecoder, image_job
from openjanus.requests import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = JanusPipeline.load(None, device="cpu", dtype="float32")
    tok, steps, width = pipe.processor.tokenizer, pipe.model.cfg.num_gen_tokens, pipe.model.cfg.vq.grid
    prompts = ["a red circle", "two blue squares left of a green star", "three yellow triangles"]
    ids = [tok.encode(pipe.processor.t2i_prompt(p)) for p in prompts]
    sampling = SamplingParams(1.0)
    shipped, next_window = runner_mod.gumbel_drafts, JacobiDecoder._next_window
    current: dict = {}

    def guess(outputs, accepted, n_drafts, newest):
        drafts = shipped(outputs, accepted, n_drafts, newest).tolist()
        s, how = current["state"], current["how"]
        own = max(0, min(n_drafts, len(outputs) - accepted - 1))  # the pass's own tokens
        for i in range(own, n_drafts):
            p = s.done_steps + i
            if how == "above" and p >= width:
                q = p - width
                drafts[i] = int(s.tokens[0, q]) if q < s.done_steps else drafts[q - s.done_steps]
            elif how == "oracle":
                drafts[i] = current["final"][p]
        return torch.tensor(drafts, dtype=torch.long, device=outputs.device)

    def tracked(s, logits):
        current["state"] = s
        return next_window(s, logits)

    kept: list[int] = []  # drafts each verified window kept
    verify = runner_mod.verify_window

    def counted(*a, **kw):
        tokens, accepted = verify(*a, **kw)
        if len(a[2]):  # a window with drafts (the first, after the prefill, has none)
            kept.append(accepted)
        return tokens, accepted

    runner_mod.gumbel_drafts = guess
    runner_mod.verify_window = counted
    JacobiDecoder._next_window = staticmethod(tracked)

    def decode(prompt, seed, window, how, final=None, sampler="gumbel"):
        current.update(how=how, final=final)
        runner = BatchRunner(pipe.model, rows=2)
        job = image_job(prompt, tok.pad_id, 1, 5.0, sampling, torch.Generator().manual_seed(seed), steps,
                        jacobi=window, jacobi_sampler=sampler)
        state, = run_jobs(runner, [job])
        return state.tokens[0], runner.passes

    print(f"{'guess':<8}{'window':>7}{'passes':>8}{'tokens/pass':>12}")
    for window in args.windows:
        for how in ("left", "above", "oracle"):
            passes = 0
            for seed in range(args.seeds):
                for k, prompt in enumerate(ids):
                    final, _ = decode(prompt, 1000 * seed + 100 * k, 1, "left")
                    tokens, p = decode(prompt, 1000 * seed + 100 * k, window, how, final.tolist())
                    assert torch.equal(tokens, final), "a guess changed the image"
                    passes += p
            per = passes / (args.seeds * len(ids))
            print(f"{how:<8}{window:>7}{per:>8.1f}{steps / per:>12.2f}", flush=True)
    print(f"{'sampler':<8}{'window':>7}{'passes keeping no draft':>25}")
    for window in args.windows:
        for sampler in ("gumbel", "mcsjd"):
            kept.clear()
            for seed in range(args.seeds):
                for k, prompt in enumerate(ids):
                    decode(prompt, 1000 * seed + 100 * k, window, "left", sampler=sampler)
            none = sum(a == 0 for a in kept)
            print(f"{sampler:<8}{window:>7}{none:>12} of {len(kept):<5} ({none / len(kept):.0%})", flush=True)


if __name__ == "__main__":
    main()
