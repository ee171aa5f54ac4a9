"""The engine: requests from many callers share batches, and a request's output depends only on
the request (CPU, fp32).

Comparisons are exact (`torch.equal` / list equality), with no near-tie allowance: every
request has its own random stream and its own prefill, and the shared decode step is per-row
arithmetic; the one batch-dependent part, the row count of the matrix products, gives identical
rows for these models and mixes (if a kernel change ever breaks that, a failure here must be
shown to be a near-tie of two logits before any tolerance is added).
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny
from torch.testing import assert_close

from openjanus.errors import UserError
from openjanus.inference.engine import Cancelled, ContextTooLong, EngineConfig, QueueFull, run_jobs
from openjanus.inference.runner import BatchRunner, NonFiniteLogits, image_job
from openjanus.requests import ChatRequest, ImageProgress, ImageRequest, Message, SamplingParams, TextDelta

GREEDY = SamplingParams(temperature=0.0)


def image_requests() -> list[ImageRequest]:
    return [
        ImageRequest("a red circle", n=2, seed=1),
        ImageRequest("two blue squares to the left of a green star", n=1, guidance=3.0, seed=2,
                     sampling=SamplingParams(temperature=0.7, top_k=20)),
        ImageRequest("a star", n=3, seed=3, sampling=SamplingParams(temperature=1.0, top_p=0.9)),
        ImageRequest("a yellow triangle", n=1, sampling=GREEDY, seed=4),
    ]


def chat_requests(images) -> list[ChatRequest]:
    return [
        ChatRequest.ask("what is this?", images[:1], max_new_tokens=7),
        ChatRequest.ask("how many shapes are there in this picture?", images[1:3], max_new_tokens=5,
                        sampling=SamplingParams(temperature=0.9), seed=11),
        ChatRequest([Message("user", "hello there")], max_new_tokens=9, sampling=SamplingParams(1.0, top_k=5), seed=5),
    ]


def colour_images(size: int):
    from PIL import Image

    return [Image.new("RGB", (size, size), c) for c in ("red", "navy", "yellow")]


def outputs(results) -> list:
    return [r.tokens.tolist() if hasattr(r, "tokens") else r.token_ids for r in results]


def test_requests_give_the_same_tokens_alone_and_in_any_mix(pipe):
    requests = image_requests() + chat_requests(colour_images(pipe.und_image_size))
    alone = outputs([pipe.generate(r) for r in requests])
    assert outputs([pipe.generate(r) for r in requests]) == alone  # twice: same tokens
    for order in (list(range(len(requests))), [6, 0, 5, 1, 4, 2, 3], [3, 2, 1, 0]):
        mixed = pipe.run([requests[i] for i in order])
        assert outputs(mixed) == [alone[i] for i in order], f"order {order}"


def test_demo_model_mixes_equal_alone():
    from openjanus.inference.pipeline import JanusPipeline

    demo = JanusPipeline.load(None, device="cpu", dtype="float32")
    requests = [ImageRequest("a red circle", n=2, seed=1), ImageRequest("two blue squares", n=1, seed=2),
                ImageRequest("a green star above a yellow triangle", n=3, seed=3, sampling=GREEDY),
                *chat_requests(colour_images(demo.und_image_size))[:2]]
    alone = outputs([demo.generate(r) for r in requests])
    assert outputs(demo.run(requests)) == alone
    assert outputs(demo.run(requests[::-1])) == alone[::-1]
    demo.engine.close()


def test_requests_joining_mid_batch_give_the_same_tokens(pipe):
    first, *later = image_requests()
    chat = chat_requests(colour_images(pipe.und_image_size))
    alone = outputs([pipe.generate(r) for r in [first, *later, *chat]])
    handle = pipe.submit(first)
    joined = []
    for event in handle:  # submit the others at different steps of the first one
        if isinstance(event, ImageProgress) and event.steps in (3, 10, 20, 30, 40, 50):
            joined.append(pipe.submit(([*later, *chat])[len(joined)]))
    rest = [h.result() for h in joined]
    assert len(rest) == 6
    assert outputs([handle.result(), *rest]) == alone


def test_a_short_request_does_not_wait_for_a_running_batch(pipe):
    long = pipe.submit(ImageRequest("a big green circle", n=4, seed=0))
    for event in long:
        if event.steps == 5:
            break
    short = pipe.submit(ChatRequest([Message("user", "hi")], max_new_tokens=2))
    result = short.result()
    assert not long.done(), "the short request should finish while the long one is still running"
    assert result.cost.queued_seconds < long.result().cost.seconds
    assert long.result().cost.forward_passes == pipe.model.cfg.num_gen_tokens  # prefill + steps - 1


def test_cancelled_and_failing_requests_leave_the_others_untouched(pipe, monkeypatch):
    keep = [ImageRequest("a red circle", n=2, seed=1), ChatRequest([Message("user", "hello")], max_new_tokens=6)]
    alone = outputs([pipe.generate(r) for r in keep])

    victim = pipe.submit(ImageRequest("a star", n=2, seed=9))
    handles = [pipe.submit(r) for r in keep]
    for event in victim:
        if event.steps == 4:
            victim.cancel()
    with pytest.raises(Cancelled):
        victim.result()
    assert outputs([h.result() for h in handles]) == alone

    # Failures caught at submission, for that caller alone.
    with pytest.raises(UserError, match="tokens"):
        pipe.submit(ImageRequest("word " * 600))
    with pytest.raises(UserError, match="max_new_tokens"):
        pipe.submit(ChatRequest([Message("user", "hi")], max_new_tokens=10_000))
    with pytest.raises(UserError):
        pipe.submit(ChatRequest([Message("user", [b"not an image", "what is it?"])]))

    # A failure inside the worker (here: this request's image encoder) ends that request only.
    real = pipe.model.encode_und_images

    def flaky(pixels):
        if (pixels[:, 0] > 0.9).all() and (pixels[:, 1] < -0.9).all():  # the magenta image
            raise RuntimeError("encoder exploded")
        return real(pixels)

    monkeypatch.setattr(pipe.model, "encode_und_images", flaky)
    from PIL import Image

    magenta = Image.new("RGB", (pipe.und_image_size,) * 2, (255, 0, 255))
    bad = pipe.submit(ChatRequest.ask("three images", [*colour_images(pipe.und_image_size)[:2], magenta],
                                      max_new_tokens=4))
    handles = [pipe.submit(r) for r in keep]
    with pytest.raises(RuntimeError, match="encoder exploded"):
        bad.result()
    assert outputs([h.result() for h in handles]) == alone


def test_chat_stream_stop_strings_and_finish_reasons(pipe):
    plain = pipe.generate(ChatRequest([Message("user", "hello")], max_new_tokens=12, stop_at_eos=False))
    assert plain.finish_reason == "length" and plain.completion_tokens == 12
    text = plain.text
    assert len(text) > 4
    stop = text[2:4]
    cut = pipe.generate(ChatRequest([Message("user", "hello")], max_new_tokens=12, stop_at_eos=False, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.text == text[:text.find(stop)].strip()
    handle = pipe.submit(ChatRequest([Message("user", "hello")], max_new_tokens=12, stop_at_eos=False, stop=(stop,)))
    streamed = "".join(e.text for e in handle if isinstance(e, TextDelta))
    assert stop not in streamed and streamed.strip() == cut.text


def test_large_requests_run_in_chunks_that_fit(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig(rows=4))  # 2 images per chunk
    try:
        request = ImageRequest("a red circle", n=5, seed=3)
        result = tiny_pipeline.generate(request)
        assert result.tokens.shape == (5, tiny_pipeline.model.cfg.num_gen_tokens) and len(result.images) == 5
        assert torch.equal(tiny_pipeline.generate(request).tokens, result.tokens)
        # Chunks are sequential: a chat sent meanwhile still gets the free rows.
        handle = tiny_pipeline.submit(request)
        chat = tiny_pipeline.submit(ChatRequest([Message("user", "hi")], max_new_tokens=3))
        chat.result()
        assert torch.equal(handle.result().tokens, result.tokens)
        with pytest.raises(UserError, match="allows up to"):
            tiny_pipeline.submit(ImageRequest("x", n=100_000))
    finally:
        engine.close()


def test_each_image_of_a_request_is_its_own_request_with_its_seed(tiny_pipeline):
    """With `seed_per_image`, image i of `n=N, seed=S` draws from its own stream, seeded
    `result.seeds[i]`: a one-image request with that seed gives it exactly, tokens and pixels,
    whether the N images ran in one batch or in chunks, plain or speculative."""
    sampling = SamplingParams(temperature=1.0, top_k=50)
    together = tiny_pipeline.generate(ImageRequest("a red circle", n=4, seed=7, sampling=sampling,
                                                   seed_per_image=True))
    assert together.seeds[0] == 7 and len(set(together.seeds)) == 4
    for i, seed in enumerate(together.seeds):
        alone = tiny_pipeline.generate(ImageRequest("a red circle", n=1, seed=seed, sampling=sampling,
                                                    seed_per_image=True))
        assert alone.seeds == [seed] and torch.equal(alone.tokens[0], together.tokens[i])
        assert alone.images[0].tobytes() == together.images[i].tobytes()
    engine = tiny_pipeline.start_engine(EngineConfig(rows=4))  # 2 images per chunk
    try:
        chunked = tiny_pipeline.generate(ImageRequest("a red circle", n=4, seed=7, sampling=sampling,
                                                      seed_per_image=True))
    finally:
        engine.close()
        tiny_pipeline.start_engine(EngineConfig())  # the shared fixture's engine as other tests expect it
    assert torch.equal(chunked.tokens, together.tokens) and chunked.seeds == together.seeds
    # Speculative Jacobi images use the same seeds (their draws differ, their distribution does not).
    jacobi = tiny_pipeline.generate(ImageRequest("a red circle", n=2, seed=7, sampling=sampling, jacobi=4))
    assert jacobi.seeds == together.seeds[:2]


def test_by_default_the_images_of_a_request_share_the_official_stream(tiny_pipeline):
    """Without `seed_per_image` the N images draw from the request's one stream, one multinomial
    over all of them per step (the official sampler, which `generate_image_tokens` restates
    literally) when they run in one batch; no per-image seeds are claimed."""
    from openjanus.inference.engine import generate_image_tokens

    sampling = SamplingParams(temperature=1.0, top_k=50)
    tiny_pipeline.start_engine(EngineConfig())  # rows for all four at once (an earlier test may have left fewer)
    shared = tiny_pipeline.generate(ImageRequest("a red circle", n=4, seed=7, sampling=sampling, guidance=5.0))
    assert shared.seeds is None
    ids = tiny_pipeline.processor.tokenizer.encode(tiny_pipeline.processor.t2i_prompt("a red circle"))
    g = torch.Generator().manual_seed(7)
    official = generate_image_tokens(tiny_pipeline.model, ids, tiny_pipeline.processor.tokenizer.pad_id, n=4,
                                     guidance=5.0, sampling=sampling, generator=g)
    assert torch.equal(shared.tokens, official.cpu())
    per_image = tiny_pipeline.generate(ImageRequest("a red circle", n=4, seed=7, sampling=sampling, guidance=5.0,
                                                    seed_per_image=True))
    assert torch.equal(per_image.tokens[0, :1], shared.tokens[0, :1])  # the first draw of image 0 is shared
    assert not torch.equal(per_image.tokens, shared.tokens)


def test_queue_and_row_caps(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig(rows=2, queue=2))
    try:
        first = engine.submit(ImageRequest("a", n=1))  # takes both rows
        for e in first:
            if e.steps == 2:
                break
        waiting = [engine.submit(ImageRequest("b", n=1)), engine.submit(ImageRequest("c", n=1))]
        with pytest.raises(QueueFull):
            engine.submit(ImageRequest("d", n=1))
        results = [h.result() for h in [first, *waiting]]
        # In arrival order: each waited for the one before it to leave the rows.
        assert results[1].cost.queued_seconds > 0 and results[2].cost.queued_seconds > results[1].cost.queued_seconds
    finally:
        engine.close()


def test_non_finite_logits_fail_the_request_clearly(tiny_pipeline, monkeypatch):
    engine = tiny_pipeline.start_engine(EngineConfig())
    try:
        monkeypatch.setattr(tiny_pipeline.model, "image_logits",
                            lambda h: torch.full((h.shape[0], tiny_pipeline.model.cfg.vq.codebook_size), float("nan")))
        for sampling in (SamplingParams(1.0), GREEDY):
            with pytest.raises(NonFiniteLogits, match="non-finite"):
                tiny_pipeline.generate(ImageRequest("x", sampling=sampling))
    finally:
        engine.close()


def test_requests_validate_their_fields():
    for bad in (dict(n=0), dict(n=1.5), dict(guidance=float("nan")), dict(guidance=float("inf")),
                dict(seed=2**63), dict(seed=-1), dict(jacobi=-1)):
        with pytest.raises(UserError):
            ImageRequest("x", **bad)
    for kwargs in (dict(temperature=float("nan")), dict(temperature=-1), dict(top_p=0), dict(top_k=-1)):
        with pytest.raises(UserError):
            SamplingParams(**kwargs)
    with pytest.raises(UserError, match="at least one message"):
        ChatRequest([])
    with pytest.raises(UserError, match="stop"):
        ChatRequest([Message("user", "x")], stop="abc")


def test_compiled_step_compiles_once_per_bucket_not_per_prompt_length():
    model = build_tiny(seed=2)
    compiles = []

    def counting_backend(gm, example_inputs):
        compiles.append(len(example_inputs))
        return gm.forward

    torch._dynamo.reset()
    runner = BatchRunner(model, rows=2, length_bucket=128, compile=True, compile_backend=counting_backend)
    eager = BatchRunner(model, rows=2, length_bucket=128)
    counts = []
    for length in (5, 9, 17, 30):  # every prompt + 64 image tokens fits the first 128-slot bucket
        prompt = [1, *range(10, 10 + length - 2), 2]
        jobs = [image_job(prompt, 3, 1, 5.0, GREEDY, None, model.cfg.num_gen_tokens) for _ in range(2)]
        compiled, = run_jobs(runner, [jobs[0]])
        plain, = run_jobs(eager, [jobs[1]])
        assert torch.equal(compiled.tokens, plain.tokens)
        counts.append(len(compiles))
    assert counts[0] >= 1 and counts == [counts[0]] * 4, counts
    long_prompt = [1, *range(10, 90), 2]  # 82 + 64 > 128: the next bucket, compiled once more
    run_jobs(runner, [image_job(long_prompt, 3, 1, 5.0, GREEDY, None, model.cfg.num_gen_tokens)])
    assert len(compiles) > counts[-1]
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_on_cuda_mixes_equal_alone():
    from openjanus.inference.pipeline import JanusPipeline

    pipe = JanusPipeline.load(None, device="cuda", dtype="float32")
    requests = [ImageRequest("a red circle", n=2, seed=1, sampling=GREEDY), ImageRequest("a star", n=1, seed=2),
                ImageRequest("two squares", n=1, seed=3, jacobi=4, sampling=GREEDY),
                ImageRequest("a green star", n=2, seed=4, jacobi=8, jacobi_branches=4),
                ChatRequest([Message("user", "hello")], max_new_tokens=5)]
    alone = outputs([pipe.generate(r) for r in requests])
    assert outputs(pipe.run(requests)) == alone
    pipe.engine.close()


def test_a_chunked_request_does_not_starve_later_ones(tiny_pipeline):
    """One image per chunk: a 4-image request's next chunk queues behind a request that
    arrived while its first chunk ran, so the later request ends first."""
    engine = tiny_pipeline.start_engine(EngineConfig(rows=2))
    try:
        big = engine.submit(ImageRequest("a red circle", n=4, seed=1))
        next(iter(big))  # its first chunk is decoding
        small = engine.submit(ImageRequest("a blue square", n=1, seed=2))
        small.result()
        assert not big.done()
        assert big.result().tokens.shape[0] == 4
    finally:
        engine.close()


def test_close_with_cancel_ends_a_chunked_request(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig(rows=2))
    big = engine.submit(ImageRequest("a red circle", n=6, seed=1))
    next(iter(big))
    engine.close(cancel=True)
    with pytest.raises(Cancelled):
        big.result(timeout=60)
    assert engine.closed and not engine._thread.is_alive()


def test_too_long_a_chat_is_context_too_long(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig())
    try:
        with pytest.raises(ContextTooLong, match="context"):
            engine.submit(ChatRequest([Message("user", "hi")], max_new_tokens=100_000))
    finally:
        engine.close()


@pytest.mark.parametrize("streams", ["shared", "per image"])
def test_image_decode_steps_never_wait_for_the_device(tiny_pipeline, monkeypatch, streams):
    """No `.item()`, `bool()`, `int()`, `.tolist()` on a tensor during image steps: on a GPU
    each would stall the host until the device catches up (and break CUDA-graph replay). Both
    with one random stream for the job and with one per image (what the engine gives)."""
    tok = tiny_pipeline.processor.tokenizer
    ids = tok.encode(tiny_pipeline.processor.t2i_prompt("a red circle"))
    generator = torch.Generator().manual_seed(0) if streams == "shared" else \
        [torch.Generator().manual_seed(s) for s in (0, 1)]
    job = image_job(ids, tok.pad_id, 2, 5.0, SamplingParams(top_k=50, top_p=0.9), generator,
                    tiny_pipeline.model.cfg.num_gen_tokens)
    runner = BatchRunner(tiny_pipeline.model, rows=4)
    state = runner.add(job)
    syncs = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            syncs.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for _ in range(job.steps - 1):  # the last step checks the finite flag once, by design
        assert runner.step() == []
    assert syncs == []
    monkeypatch.undo()
    assert runner.step() == [state] and state.error is None


def _compiled_vs_eager(device: str, dtype: torch.dtype, steps: int = 4) -> tuple[list, list]:
    """The same greedy image job through an eager and a compiled runner (on CUDA the compiled
    step is also a CUDA graph): hidden states after each step, and the tokens."""
    torch.manual_seed(0)
    model = build_tiny(seed=1).to(device=device, dtype=dtype).eval()
    ids = list(range(3, 12))
    out = []
    for compiled in (False, True):
        job = image_job(ids, 0, 2, 5.0, GREEDY, None, model.cfg.num_gen_tokens)
        runner = BatchRunner(model, rows=4, compile=compiled)
        state = runner.add(job)
        hidden = []
        for _ in range(steps):
            runner.step()
            hidden.append(runner.hidden[:4].float().cpu())
        out.append((hidden, state.tokens[:, :steps].cpu()))
    return out[0], out[1]


def test_compiled_step_writes_the_cache_in_place_and_equals_eager():
    """The compiled step (inductor) writes its cache rows by index into whole per-layer tensors;
    it must give the eager step's hidden states (fp32: a fused kernel may sum in another order,
    so a few ulps) and the same greedy tokens."""
    (eager_h, eager_t), (comp_h, comp_t) = _compiled_vs_eager("cpu", torch.float32)
    for a, b in zip(comp_h, eager_h):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(comp_t, eager_t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_step_equals_eager_step(dtype):
    (eager_h, eager_t), (comp_h, comp_t) = _compiled_vs_eager("cuda", dtype)
    tol = 1e-4 if dtype == torch.float32 else 3e-2  # bf16: a few roundings of 2**-8
    for a, b in zip(comp_h, eager_h):
        assert_close(a, b, rtol=tol, atol=tol)
    assert torch.equal(comp_t, eager_t)
