"""`openjanus.serve.protocol` without a server: OpenAI's names to the project's, defaults from the
typed requests, top_p = 0 alike on both endpoints, errors in OpenAI's shape; and the app's
request registry, which a shutdown cannot miss."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[dev]')")

from openjanus.canvas import Geometry  # noqa: E402
from openjanus.inference.engine import Cancelled, ContextTooLong, QueueFull  # noqa: E402
from openjanus.model_card import ChatDefaults, GenerationDefaults, ImageDefaults  # noqa: E402
from openjanus.requests import ImageRequest, SamplingParams  # noqa: E402
from openjanus.serve import protocol  # noqa: E402
from openjanus.serve.app import Requests  # noqa: E402
from openjanus.serve.protocol import APIError, ServeSettings  # noqa: E402

SETTINGS = ServeSettings()
DEMO = Geometry(native=8, patch=8)  # the demo model's 64 px images
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_omitted_fields_are_left_to_the_models_defaults():
    """Omitted sampling, guidance and length stay None in the typed request, as in the Python
    API, so the engine applies the model's generation_config.json (as vLLM does): a request at
    default settings gets the answer the CLI and Python give. Set fields go over the model's."""
    image = protocol.image_request({"prompt": "a red circle"}, DEMO, SETTINGS)
    assert image == ImageRequest("a red circle", seed=None) and (image.guidance, image.sampling) == (None, None)
    chat = protocol.chat_request(CHAT, SETTINGS)
    assert (chat.sampling, chat.max_new_tokens, chat.stop) == (None, None, ())
    model = GenerationDefaults(ChatDefaults(SamplingParams(0.6, top_k=40)), ImageDefaults(SamplingParams(0.9), 3.0))
    chat = protocol.chat_request({**CHAT, "top_p": 0.5}, SETTINGS, model)
    assert chat.sampling == SamplingParams(0.6, top_k=40, top_p=0.5)
    image = protocol.image_request({"prompt": "x", "temperature": 0.2}, DEMO, SETTINGS, None, model)
    assert image.sampling == SamplingParams(0.2) and image.guidance is None


def test_openai_names_map_to_the_projects():
    image = protocol.image_request({"prompt": "x", "n": 3, "guidance_scale": 7.5, "temperature": 0.5, "top_k": 20,
                                    "top_p": 0.9, "seed": 4, "jacobi": 8, "jacobi_sampler": "mcsjd",
                                    "seed_per_image": True}, DEMO, SETTINGS)
    assert image == ImageRequest("x", n=3, guidance=7.5, sampling=SamplingParams(0.5, top_k=20, top_p=0.9), seed=4,
                                 jacobi=8, jacobi_sampler="mcsjd", seed_per_image=True)
    branched = protocol.image_request({"prompt": "x", "jacobi": 8, "jacobi_branches": 4}, DEMO, SETTINGS)
    assert (branched.jacobi, branched.jacobi_sampler, branched.jacobi_branches) == (8, "gumbel", 4)
    chat = protocol.chat_request({**CHAT, "max_completion_tokens": 7, "temperature": 0.3, "top_p": 0.5,
                                  "stop": "zz", "seed": 2}, SETTINGS)
    assert (chat.max_new_tokens, chat.sampling, chat.stop, chat.seed) == (
        7, SamplingParams(0.3, top_p=0.5), ("zz",), 2)


def test_top_p_zero_keeps_only_the_most_likely_token_on_both_endpoints():
    image = protocol.image_request({"prompt": "x", "top_p": 0}, DEMO, SETTINGS)
    chat = protocol.chat_request({**CHAT, "top_p": 0}, SETTINGS)
    # Over the defaults (here the project's: images at temperature 1, answers greedy).
    assert image.sampling == SamplingParams(1.0, top_k=1) and chat.sampling == SamplingParams(0.0, top_k=1)


@pytest.mark.parametrize("body,param", [
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"temperature": 2.5}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"seed": -1}, "seed"), ({"guidance_scale": "high"}, "guidance_scale"),
    ({"guidance_scale": 101}, "guidance_scale"), ({"top_p": True}, "top_p"),
    ({"seed_per_image": "yes"}, "seed_per_image"), ({"jacobi_sampler": "fast"}, "jacobi_sampler"),
    ({"jacobi_sampler": 1}, "jacobi_sampler"), ({"jacobi": 4, "jacobi_branches": 0}, "jacobi_branches"),
    ({"jacobi": 4, "jacobi_branches": "2"}, "jacobi_branches"),
    ({"jacobi": 4, "jacobi_branches": 65}, "jacobi_branches"),
])
def test_bad_fields_name_the_field(body, param):
    with pytest.raises(APIError) as info:
        protocol.image_request({"prompt": "x", **body}, DEMO, SETTINGS)
    assert info.value.status == 400 and info.value.param == param


def test_errors_in_openai_shape():
    cases = [(QueueFull("full"), 429, "rate_limit_error", "queue_full"),
             (Cancelled("gone"), 503, "server_error", "server_shutting_down"),
             (ContextTooLong("too long"), 400, "invalid_request_error", "context_length_exceeded"),
             (RuntimeError("secret internals"), 500, "server_error", None)]
    for e, status, kind, code in cases:
        err = protocol.api_error(e)
        assert (err.status, err.kind, err.code) == (status, kind, code)
        assert set(err.body()["error"]) == {"message", "type", "param", "code"}
    assert "secret" not in protocol.api_error(RuntimeError("secret internals")).message


class _Handle:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def done(self) -> bool:
        return False


class _SlowEngine:
    """Admits a request (the batch runs it) a while before `submit` returns its handle: the
    window in which a registry that adds handles after submitting misses them."""

    def __init__(self) -> None:
        self.admitted = threading.Event()

    def submit(self, request):
        handle = _Handle()
        self.admitted.set()
        time.sleep(0.3)
        return handle


class _Pipe:
    def __init__(self) -> None:
        self.engine = _SlowEngine()


def test_a_shutdown_cancels_a_request_the_engine_runs_before_submit_returned():
    requests = Requests(_Pipe())
    got: list = []
    worker = threading.Thread(target=lambda: got.append(requests._submit(ImageRequest("x"))))
    worker.start()
    requests.pipe.engine.admitted.wait(5)
    requests.cancel_running()  # the grace ran out while the request was being submitted
    worker.join(5)
    assert got and got[0].cancelled.is_set()


def test_a_request_submitted_after_the_shutdown_began_is_cancelled_at_once():
    requests = Requests(_Pipe())
    requests.cancel_running()
    assert requests._submit(ImageRequest("x")).cancelled.is_set()
