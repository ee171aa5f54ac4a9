"""Who owns what: a pipeline owns its engine, an engine its threads and KV cache. Closing a
pipeline stops its threads and lets go of its model; a closed pipeline stays closed."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from openjanus.errors import UserError
from openjanus.inference.engine import Engine, EngineConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import ChatRequest, ImageRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)


def _engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("openjanus")]


def test_three_closed_pipelines_leave_no_thread_engine_or_model(tiny_checkpoint):
    gc.collect()
    already = set(_engine_threads())  # other tests' session pipelines
    refs = []
    for seed in range(3):
        pipe = JanusPipeline.load(str(tiny_checkpoint), device="cpu", dtype="float32")
        engine = pipe.engine
        image = pipe.generate(ImageRequest("a red circle", seed=seed, sampling=GREEDY))  # worker + VQ thread
        answer = pipe.generate(ChatRequest.ask("what is this?", max_new_tokens=2))
        assert image.tokens.shape[0] == 1 and answer.completion_tokens >= 1
        assert len(set(_engine_threads()) - already) == 2  # this engine's worker and its VQ decoder
        refs += [weakref.ref(pipe), weakref.ref(engine), weakref.ref(pipe.model), weakref.ref(engine.core.runner)]
        pipe.close()
        del pipe, engine, image, answer
    gc.collect()
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert alive == [], f"still alive after close and gc: {alive}"
    assert set(_engine_threads()) - already == set()


def test_a_closed_pipeline_stays_closed(tiny_checkpoint):
    with JanusPipeline.load(str(tiny_checkpoint), device="cpu", dtype="float32") as pipe:
        pipe.generate(ChatRequest.ask("hi", max_new_tokens=1))
        engine = pipe.engine
    assert pipe.closed and engine.closed and not engine._thread.is_alive()
    for use in (lambda: pipe.generate(ChatRequest.ask("hi", max_new_tokens=1)), lambda: pipe.engine,
                lambda: pipe.start_engine(EngineConfig())):
        with pytest.raises(UserError, match="closed"):
            use()


def test_an_engine_starts_and_closes_explicitly(tiny_pipeline):
    engine = Engine(tiny_pipeline.model, tiny_pipeline.processor, EngineConfig(rows=4))
    assert not engine.started
    with pytest.raises(UserError, match="not started"):
        engine.submit(ChatRequest.ask("hi", max_new_tokens=1))
    with engine:
        assert engine.submit(ChatRequest.ask("hi", max_new_tokens=1)).result().completion_tokens == 1
        worker = engine._thread
    assert engine.closed and not worker.is_alive() and engine.core.runner.cache is None
    with pytest.raises(UserError, match="closed"):
        engine.start()
    with pytest.raises(UserError, match="shut down"):
        engine.submit(ChatRequest.ask("hi", max_new_tokens=1))


def test_the_engine_does_not_know_the_pipeline(tiny_pipeline):
    """Nothing below the pipeline holds it: the engine is made of the model and the processor."""
    engine = tiny_pipeline.engine
    held = [name for name, value in vars(engine).items() if isinstance(value, JanusPipeline)]
    assert held == [] and engine.model is tiny_pipeline.model and engine.processor is tiny_pipeline.processor
