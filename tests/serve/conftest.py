"""Fixtures: the demo model behind a real server on a free loopback port."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[dev]')")

from openjanus.inference.engine import EngineConfig  # noqa: E402
from openjanus.inference.pipeline import JanusPipeline  # noqa: E402
from openjanus.serve.app import ServeSettings  # noqa: E402
from serve import Server  # noqa: E402


@pytest.fixture(scope="session")
def demo_pipe():
    pipe = JanusPipeline.load(None, device="cpu", dtype="float32")
    pipe.start_engine(EngineConfig(rows=32, queue=64))
    return pipe


@pytest.fixture(scope="module")
def server(demo_pipe):
    with Server(demo_pipe, ServeSettings(model_id="janus-shapes", max_body_bytes=2 * 2**20,
                                         max_image_pixels=1_000_000)) as s:
        yield s
