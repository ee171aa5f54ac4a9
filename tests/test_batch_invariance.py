"""Same request, same seed, same tokens, alone or in any mix, in every weight format (issue 23).

bf16 and int8 as well as fp32: the engine never prefills two requests in one forward pass (the
row count of a prefill's matrix products would then depend on the neighbours, and with some
bf16 kernels the bits do, see bench/bench_batch_invariance.py), and the decode step is per-row
arithmetic. Requests with prompts of the same length, which used to share a prefill, are the
hard case, so every mix here has them. Comparisons are exact.
"""

from __future__ import annotations

import pytest
import torch

from openjanus.inference.engine import EngineConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.inference.runner import BatchRunner
from openjanus.requests import ChatRequest, ImageRequest, Message, SamplingParams

FORMATS = [("float32", None), ("bfloat16", None), ("bfloat16", "int8")]  # int8 runs bf16 activations


def requests() -> list:
    same = ["a red circle", "a blue square", "a green star"]  # equal token counts
    out: list = [ImageRequest(p, n=n, seed=s) for p, n, s in zip(same, (1, 2, 1), (3, 4, 5))]
    out.append(ImageRequest("a red circle", n=1, seed=6, jacobi=3))
    out.append(ImageRequest("a green star", n=2, seed=8, jacobi=4, jacobi_branches=3))
    out.append(ImageRequest("a blue square", n=1, seed=7, sampling=SamplingParams(0.8, top_k=50)))
    out += [ChatRequest([Message("user", m)], max_new_tokens=6, sampling=SamplingParams(1.0), seed=s)
            for m, s in (("hello there", 1), ("hello world", 2))]
    return out


def tokens(result) -> list:
    return result.tokens.tolist() if hasattr(result, "tokens") else result.token_ids


@pytest.mark.parametrize("dtype,quantize", FORMATS, ids=["fp32", "bf16", "int8"])
def test_requests_give_the_same_tokens_alone_and_in_any_mix(dtype, quantize, monkeypatch):
    pipe = JanusPipeline.load(None, device="cpu", dtype=dtype, quantize=quantize)
    pipe.start_engine(EngineConfig(rows=32))
    prompt_lengths = {len(pipe.processor.tokenizer.encode(pipe.processor.t2i_prompt(p)))
                      for p in ("a red circle", "a blue square", "a green star")}
    assert len(prompt_lengths) == 1  # the case that used to share a prefill
    reqs = requests()
    alone = [tokens(pipe.generate(r)) for r in reqs]
    groups: list[int] = []
    prefill = BatchRunner._prefill
    monkeypatch.setattr(BatchRunner, "_prefill", lambda self, state, h, start=0: groups.append(
        h.shape[0] // (state.job.n_rows // state.job.branches)) or prefill(self, state, h, start))  # one branch's rows
    for order in (list(range(len(reqs))), [7, 6, 2, 0, 5, 1, 4, 3], [1, 0, 2]):
        mixed = pipe.run([reqs[i] for i in order])
        assert [tokens(m) for m in mixed] == [alone[i] for i in order], f"{dtype} {quantize} order {order}"
    assert groups and set(groups) == {1}, "requests were prefilled together"
    pipe.engine.close()


def test_a_job_admitted_with_others_is_prefilled_on_its_own(tiny_pipeline):
    from openjanus.inference.runner import image_job

    tok = tiny_pipeline.processor.tokenizer
    ids = tok.encode(tiny_pipeline.processor.t2i_prompt("a red circle"))
    runner = BatchRunner(tiny_pipeline.model, rows=8)
    calls: list[int] = []
    prefill = runner._prefill
    runner._prefill = lambda state, h, start=0: calls.append(h.shape[0]) or prefill(state, h, start)
    jobs = [image_job(ids, tok.pad_id, n, 5.0, SamplingParams(1.0), torch.Generator().manual_seed(n), 4)
            for n in (1, 2)]
    runner.add_all([(jobs[0], 0), (jobs[1], 2)])
    assert calls == [2, 4]  # each job's rows in a pass of their own
