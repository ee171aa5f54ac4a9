"""Fixtures for the server's tests: a tiny random-weight pipeline, the app on a real socket
(uvicorn in a thread, loopback, a free port) and the official `openai` client pointed at it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("openai", reason="the dev extra (openai client) is not installed")

from openjanus.engine import EngineConfig  # noqa: E402
from openjanus.pipeline import JanusPipeline  # noqa: E402
from openjanus.serve import ServeConfig, create_app  # noqa: E402
from serve_helpers import running  # noqa: E402


@pytest.fixture(scope="session")
def pipe() -> JanusPipeline:
    p = JanusPipeline.load("tiny")
    p.start_engine(EngineConfig(max_rows=8, max_queue=64))
    yield p
    p.engine.close()


@pytest.fixture(scope="session")
def base_url(pipe):
    with running(create_app(pipe, ServeConfig(max_images_per_request=64))) as url:
        yield url


@pytest.fixture()
def client(base_url):
    import openai

    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)
