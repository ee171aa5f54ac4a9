"""`POST /v1/images/edits` (OpenAI's images-edit API) and non-square `size` on generations, with
the official `openai` client and httpx against the real server on the demo model."""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

openai = pytest.importorskip("openai")

from openjanus.canvas import image_to_pixels  # noqa: E402
from openjanus.requests import ImageRequest  # noqa: E402
from openjanus.shapes import render, rng_for, sample_scene  # noqa: E402


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def scene(seed: int = 4) -> Image.Image:
    return render(sample_scene(rng_for(seed), 64))


def mask(size=(64, 64), clear=(0, 32, 64, 64)) -> Image.Image:
    a = np.full((size[1], size[0], 4), 255, dtype=np.uint8)
    if clear is not None:
        x0, y0, x1, y1 = clear
        a[y0:y1, x0:x1, 3] = 0
    return Image.fromarray(a, "RGBA")


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_the_openai_client_edits_with_a_mask(server, demo_pipe):
    c = client(server)
    source = scene()
    res = c.images.edit(model="janus-shapes", image=("in.png", png(source), "image/png"),
                        mask=("mask.png", png(mask()), "image/png"), prompt="a red circle", n=2,
                        response_format="b64_json", extra_body={"seed": 5})
    assert len(res.data) == 2 and res.size == "64x64"
    images = [decoded(d.b64_json) for d in res.data]
    assert all(im.size == (64, 64) for im in images)
    # the kept upper half: the VQ tokens of the result's upper rows are the source's
    same = demo_pipe.generate(ImageRequest("a red circle", n=2, seed=5, image=source, mask=mask()))
    with torch.inference_mode():
        src = demo_pipe.model.gen_tokenizer.encode(image_to_pixels(source)[None].to(demo_pipe.dtype))
    assert torch.equal(same.tokens[:, :32], src[:, :32].expand(2, -1))
    assert [np.asarray(im).tolist() for im in images] == [np.asarray(im).tolist() for im in same.images]
    assert np.array_equal(np.asarray(images[0])[:32], np.asarray(source)[:32])  # the source's own pixels
    # keep_pixels=false (a form field, as the client sends it): the decoder's image everywhere
    whole = c.images.edit(model="janus-shapes", image=("in.png", png(source), "image/png"),
                          mask=("mask.png", png(mask()), "image/png"), prompt="a red circle", n=1,
                          response_format="b64_json", extra_body={"seed": 5, "keep_pixels": "false"})
    vq = demo_pipe.decode_tokens(same.tokens[:1])[0]
    assert np.array_equal(np.asarray(decoded(whole.data[0].b64_json)), np.asarray(vq))


def test_the_image_alpha_is_the_mask_and_streaming_sends_partials(server):
    c = client(server)
    holed = scene().convert("RGBA")
    holed.putalpha(mask(clear=(16, 16, 48, 48)).getchannel("A"))
    stream = c.images.edit(model="janus-shapes", image=("in.png", png(holed), "image/png"), prompt="a blue square",
                           stream=True, partial_images=2, extra_body={"seed": 1})
    events = [e.model_dump() for e in stream]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "image_edit.completed" and 1 <= kinds.count("image_edit.partial_image") <= 2
    final = client(server).images.edit(model="janus-shapes", image=("in.png", png(holed), "image/png"),
                                       prompt="a blue square", response_format="b64_json", extra_body={"seed": 1})
    assert events[-1]["b64_json"] == final.data[0].b64_json  # same seed, streamed or not


def test_sizes_other_than_native(server):
    c = client(server)
    res = c.images.generate(model="janus-shapes", prompt="a red circle to the left of a blue square", size="128x64",
                            response_format="b64_json", extra_body={"seed": 2})
    assert res.size == "128x64" and decoded(res.data[0].b64_json).size == (128, 64)
    res = c.images.edit(model="janus-shapes", image=("in.png", png(scene()), "image/png"), prompt="a star",
                        size="64x128", mask=("m.png", png(mask()), "image/png"), response_format="b64_json")
    assert decoded(res.data[0].b64_json).size == (64, 128)


def error(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "Traceback" not in response.text
    return err


@pytest.mark.parametrize("files,data,param,fragment", [
    ({"mask": ("m.png", png(mask()), "image/png")}, {"prompt": "x"}, "image", "image file is required"),
    ({"image": ("in.png", b"not a png", "image/png")}, {"prompt": "x"}, "image", "cannot be read"),
    ({"image": ("in.png", png(scene()), "image/png")}, {"prompt": "x"}, "mask", "no transparent pixels"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(scene()), "image/png")},
     {"prompt": "x"}, "mask", "no alpha channel"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask(clear=None)), "image/png")},
     {"prompt": "x"}, None, "nothing to regenerate"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask((64, 32))), "image/png")},
     {"prompt": "x"}, None, "the mask is 64x32 but the image is 64x64"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask()), "image/png")},
     {"prompt": "x", "size": "100x64"}, "size", "not a multiple of 8"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask()), "image/png")},
     {"prompt": "x", "size": "1024x1024"}, "size", "outside 64..256"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask()), "image/png")},
     {"prompt": "x", "n": "two"}, "n", "must be an integer"),
    ({"image": ("in.png", png(scene()), "image/png"), "mask": ("m.png", png(mask()), "image/png")},
     {"prompt": ""}, "prompt", "non-empty"),
])
def test_bad_edits_are_400_in_openai_shape(server, files, data, param, fragment):
    err = error(httpx.post(server.url + "/v1/images/edits", files=files, data=data, timeout=60))
    assert err["param"] == param and fragment in err["message"] and err["type"] == "invalid_request_error"


def test_the_openai_client_raises_on_a_bad_edit(server):
    with pytest.raises(openai.BadRequestError):
        client(server).images.edit(model="janus-shapes", image=("in.png", png(scene()), "image/png"), prompt="x")
    err = error(httpx.post(server.url + "/v1/images/edits", json={"prompt": "x"}, timeout=10))
    assert "multipart/form-data" in err["message"]


def _wait_for(condition, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_streamed_edit_holds_its_pixels_until_the_stream_ends_or_the_client_leaves(server, monkeypatch):
    """The edit's image and mask count in the server's pixel budget for as long as its stream
    runs, not only until the stream has started; a client that leaves mid-stream gives them back
    too. The stream is held at its first partial image (the preview's decoding waits on an
    event), so no timing decides where it is when the budget is read."""
    import openjanus.serve.app as app_module

    budget = server.server.config.app.state.budget
    at_partial, release = threading.Event(), threading.Event()
    decode = app_module.decode_canvas

    def held_decode(*a, **k):
        at_partial.set()
        release.wait(60)
        return decode(*a, **k)

    monkeypatch.setattr(app_module, "decode_canvas", held_decode)
    files = {"image": ("in.png", png(scene()), "image/png"), "mask": ("mask.png", png(mask()), "image/png")}
    form = {"prompt": "a blue square", "stream": "true", "partial_images": "1", "seed": "1"}
    assert _wait_for(lambda: budget.used == 0)  # nothing else of this module's is in flight

    # 1. read whole: held while it streams, given back when it ends
    events: list[str] = []

    def read_all() -> None:
        with httpx.stream("POST", server.url + "/v1/images/edits", files=files, data=form, timeout=120) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data: "))

    reader = threading.Thread(target=read_all)
    reader.start()
    try:
        assert at_partial.wait(60), "no partial image was decoded"
        assert budget.used == 2 * 64 * 64  # image and mask, mid-stream
    finally:
        release.set()
        reader.join(120)
    assert any('"image_edit.completed"' in e for e in events), events[-1:]
    assert _wait_for(lambda: budget.used == 0), budget.used

    # 2. the client leaves mid-stream: given back all the same
    at_partial.clear()
    release.clear()
    try:
        with httpx.stream("POST", server.url + "/v1/images/edits", files=files, data=form, timeout=120) as r:
            assert r.status_code == 200
            assert at_partial.wait(60), "no partial image was decoded"
            assert budget.used == 2 * 64 * 64
        # (leaving the block closes the connection with the stream unread)
    finally:
        release.set()
    assert _wait_for(lambda: budget.used == 0), budget.used


def test_a_streamed_chat_about_an_image_gives_its_pixels_back_when_the_client_leaves(server, monkeypatch):
    """The same budget for a streamed chat about an image: held while the answer streams, given
    back when the client leaves mid-answer (the engine's next answer step is held on an event, so
    the client reads the first chunk and leaves while the request is still running)."""
    import openjanus.inference.runner as runner_module

    budget = server.server.config.app.state.budget
    at_step, release = threading.Event(), threading.Event()
    sample = runner_module.TextDecoder.sample

    def held_sample(self, runner, states):
        at_step.set()
        release.wait(60)
        return sample(self, runner, states)

    monkeypatch.setattr(runner_module.TextDecoder, "sample", held_sample)
    url = "data:image/png;base64," + base64.b64encode(png(scene())).decode()
    body = {"model": "janus-shapes", "stream": True, "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "what is this?"}]}]}
    assert _wait_for(lambda: budget.used == 0)
    try:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()).startswith("data: ")  # the first chunk (the assistant's role)
            assert at_step.wait(60), "the answer never started decoding"
            assert budget.used == 64 * 64  # the image, mid-answer
        # (leaving the block closes the connection with the answer unread)
    finally:
        release.set()
    assert _wait_for(lambda: budget.used == 0), budget.used
