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
    answers = tiny_pipeline.answer(forms, ["what colour is it?"] * 4, max_new_tokens=4)
    assert len(set(answers)) == 1  # one image, four ways: one answer
    assert tiny_pipeline.answer([[str(photo), photo]], ["two of them?"], max_new_tokens=2)  # a list = several


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
        tiny_pipeline.answer([image], ["what is it?"])


def test_empty_and_mismatched_questions(tiny_pipeline, photo):
    with pytest.raises(UserError, match="no questions"):
        tiny_pipeline.answer([], [])
    with pytest.raises(UserError, match="2 images but 1 questions"):
        tiny_pipeline.answer([photo, photo], ["q"])


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
