"""The Python API takes each image as a path string, a Path, encoded bytes or a PIL image, and
refuses empty input and bad request values with one clear `UserError`."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from openjanus.errors import UserError
from openjanus.requests import ChatRequest, ImageRequest, Message, SamplingParams


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "teal").save(path)
    return path


def test_every_image_form_gives_the_same_answer(tiny_pipeline, photo):
    forms = [str(photo), photo, photo.read_bytes(), Image.open(photo)]
    answers = tiny_pipeline.answer(["what colour is it?"] * 4, forms, max_new_tokens=4)
    assert len(set(answers)) == 1  # one image, four ways: one answer
    assert tiny_pipeline.answer(["two of them?"], [[str(photo), photo]], max_new_tokens=2)  # a list = several


@pytest.mark.parametrize("image,match", [
    (Image.new("RGB", (0, 0)), "empty"),
    (b"", "empty"),
    ("", "path is empty"),
    (b"not an image at all", "cannot"),
    ("/no/such/file.png", "cannot"),
    (12345, "unsupported|image"),
])
def test_bad_images_are_one_clear_error(tiny_pipeline, image, match):
    with pytest.raises(UserError, match=match):
        tiny_pipeline.answer(["what is it?"], [image])


def test_empty_and_mismatched_questions(tiny_pipeline, photo):
    with pytest.raises(UserError, match="no questions"):
        tiny_pipeline.answer([], [])
    with pytest.raises(UserError, match="1 questions but 2 images"):
        tiny_pipeline.answer(["q"], [photo, photo])
    # The order of ChatRequest.ask(question, images): images first is named as the mistake.
    with pytest.raises(UserError, match=r"come first: answer\(questions, images\)"):
        tiny_pipeline.answer([photo], ["what is it?"])
    with pytest.raises(UserError, match="come first"):
        tiny_pipeline.answer("what is it?", [photo])


@pytest.mark.parametrize("build", [
    lambda: ImageRequest("x", sampling=SamplingParams(temperature=float("nan"))),
    lambda: ImageRequest("x", guidance=float("inf")),
    lambda: ImageRequest("x", seed=2**64),
    lambda: ImageRequest("x", n=0),
    lambda: ImageRequest(None),
    lambda: ChatRequest([Message("user", "x")], max_new_tokens=0),
    lambda: ChatRequest([{"role": "user", "content": "x"}]),
    lambda: Message("robot", "x"),
])
def test_bad_request_values_are_user_errors(build):
    with pytest.raises(UserError):
        build()


@pytest.mark.parametrize("kwargs,message", [
    ({"kv_cache_gib": 0}, "kv_cache_gib must be > 0, got 0"),
    ({"kv_cache_gib": float("nan")}, "kv_cache_gib must be a finite number"),
    ({"kv_cache_gib": "4"}, "kv_cache_gib must be a number, got '4'"),
    ({"rows": True}, "rows must be an integer, got True"),
    ({"rows": 1}, "rows must be >= 2 (an image takes two rows)"),
    ({"queue": 0}, "queue must be >= 1, got 0"),
    ({"max_n": 2.0}, "max_n must be an integer, got 2.0"),
])
def test_bad_engine_settings_are_user_errors(kwargs, message):
    from openjanus.inference.engine import EngineConfig

    with pytest.raises(UserError) as e:
        EngineConfig(**kwargs)
    assert message in str(e.value)
