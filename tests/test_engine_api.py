"""The engine's Python API under careless callers (issue 23): a handle iterated twice or from two
threads, a script that exits while the engine is busy, wrong request objects, strings that are not
text, and a submitter blocked on a full queue when the engine closes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from openjanus.errors import UserError
from openjanus.inference.engine import EngineConfig
from openjanus.inference.scheduler import QueueFull
from openjanus.requests import ChatRequest, ImageProgress, ImageRequest, Message


@pytest.fixture
def engine(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig(rows=4))
    yield engine
    engine.close()


def test_a_handle_iterated_twice_replays_its_events(engine):
    handle = engine.submit(ImageRequest("a red circle", seed=1))
    first = list(handle)
    second = list(handle)  # used to block forever: the first loop had taken every event
    assert first == second and len(first) == 64
    assert all(isinstance(e, ImageProgress) for e in first) and first[-1].steps == first[-1].total


def test_two_threads_iterating_one_handle_both_see_every_event(engine):
    handle = engine.submit(ImageRequest("a blue square", seed=2))
    seen: list[list] = [[], []]
    threads = [threading.Thread(target=lambda k=k: seen[k].extend(handle)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an iterator blocked forever"
    assert seen[0] == seen[1] and len(seen[0]) == 64
    handle.result()


def test_wrong_request_objects_and_lone_surrogates_are_user_errors(engine):
    with pytest.raises(UserError, match="ImageRequest or a ChatRequest"):
        engine.submit({"prompt": "a red circle"})
    with pytest.raises(UserError, match="ImageRequest or a ChatRequest"):
        engine.submit("a red circle")
    with pytest.raises(UserError, match="surrogate"):
        engine.submit(ImageRequest("a red \ud800 circle"))
    with pytest.raises(UserError, match="surrogate"):
        engine.submit(ChatRequest([Message("user", "hi \udfff")], max_new_tokens=2))
    assert engine.submit(ImageRequest("a red circle", seed=1)).result()  # still serving


def test_a_submitter_waiting_for_room_learns_the_engine_shut_down(tiny_pipeline):
    engine = tiny_pipeline.start_engine(EngineConfig(rows=2, queue=1))
    gate = threading.Event()
    step = engine.core.runner.step
    engine.core.runner.step = lambda: gate.wait(60) and step()  # the running request holds its rows
    first = engine.submit(ImageRequest("a"))
    while not engine.core.scheduler.running:  # admitted: the worker waits at the gate
        time.sleep(0.01)
    engine.submit(ImageRequest("b"))  # fills the queue
    box: dict = {}

    def blocked():
        try:
            engine.submit(ImageRequest("c"), wait=True)
        except Exception as e:  # noqa: BLE001 (the test inspects it)
            box["e"] = e

    t = threading.Thread(target=blocked)
    t.start()
    t.join(timeout=1.0)
    assert t.is_alive()  # waiting for room
    closing = threading.Thread(target=engine.close, kwargs={"cancel": True})
    closing.start()
    t.join(timeout=30)
    gate.set()
    closing.join(timeout=60)
    assert not isinstance(box["e"], QueueFull) and isinstance(box["e"], UserError)
    assert "shut down" in str(box["e"])
    assert first.done()


def test_a_script_that_exits_while_the_engine_is_busy_exits_cleanly(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(
        "import sys\n"
        "from openjanus.inference.pipeline import JanusPipeline\n"
        "from openjanus.requests import ImageRequest\n"
        "pipe = JanusPipeline.load('tiny')\n"
        "handle = pipe.submit(ImageRequest('a red circle', n=8, seed=1))\n"
        "next(iter(handle))\n"
        "print('busy', flush=True)\n"
        "sys.exit(0)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "busy" in proc.stdout
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "terminate called" not in proc.stderr
