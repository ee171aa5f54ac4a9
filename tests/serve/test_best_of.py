"""`best_of` on the images endpoint: N candidates per image, the ones the model itself rates
highest returned (the same images as the Python API's best_of); refused with streaming."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from openjanus.inference.engine import EngineConfig
from openjanus.serve.app import ServeSettings
from serve import Server


@pytest.fixture(scope="module")
def tiny_server(tiny_checkpoint):
    from openjanus.inference.pipeline import JanusPipeline

    pipe = JanusPipeline.load(str(tiny_checkpoint), dtype="float32")
    pipe.start_engine(EngineConfig(rows=16, queue=16))
    with Server(pipe, ServeSettings(model_id="tiny")) as s:
        yield s, pipe
    pipe.close()


def _pixels(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))


def test_best_of_returns_the_self_rated_best(tiny_server):
    from openjanus.posttrain.best_of import best_of
    from openjanus.requests import ImageRequest

    s, pipe = tiny_server
    r = httpx.post(s.url + "/v1/images/generations", json={"prompt": "a red circle", "n": 2, "best_of": 3, "seed": 7},
                   timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    kept, _ = best_of(pipe, [ImageRequest("a red circle", n=2, seed=7)], 3)
    assert len(data) == 2
    for item, im in zip(data, kept[0].images):
        assert np.array_equal(_pixels(item), np.asarray(im.convert("RGB")))


@pytest.mark.parametrize("body, message", [
    ({"prompt": "x", "best_of": 2, "stream": True}, "cannot be combined with 'stream'"),
    ({"prompt": "x", "best_of": 0}, "best_of"),
])
def test_bad_best_of_is_a_400_in_openai_shape(tiny_server, body, message):
    s, _ = tiny_server
    r = httpx.post(s.url + "/v1/images/generations", json=body, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert message in err["message"] and err["param"] == "best_of"
