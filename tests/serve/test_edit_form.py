"""The edits endpoint's multipart form (`openjanus.serve.edits`), read by a bare Starlette app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from openjanus.serve.edits import FormError, read_edit_form, typed_fields


async def echo(request):
    try:
        form = await read_edit_form(request, max_bytes=4096)
    except FormError as e:
        return JSONResponse({"error": str(e), "param": e.param}, status_code=400)
    return JSONResponse({"body": form.body, "image": form.image.decode(), "mask": form.mask and form.mask.decode()})


@pytest.fixture(scope="module")
def client():
    return TestClient(Starlette(routes=[Route("/edit", echo, methods=["POST"])]))


def test_fields_are_typed_as_the_json_bodies(client):
    r = client.post("/edit", data={"prompt": "a red circle", "n": "2", "stream": "true", "guidance_scale": "3.5",
                                   "size": "128x64", "user": ""},
                    files={"image": ("in.png", b"IMG", "image/png"), "mask": ("m.png", b"MASK", "image/png")})
    assert r.status_code == 200, r.text
    assert r.json() == {"body": {"prompt": "a red circle", "n": 2, "stream": True, "guidance_scale": 3.5,
                                 "size": "128x64"}, "image": "IMG", "mask": "MASK"}
    r = client.post("/edit", data={"prompt": "p"}, files={"image[]": ("in.png", b"IMG", "image/png")})
    assert r.json()["image"] == "IMG" and r.json()["mask"] is None


@pytest.mark.parametrize("data,files,fragment,param", [
    ({"prompt": "p"}, {}, "multipart/form-data", None),
    ({"prompt": "p", "n": "two"}, {"image": ("a.png", b"I", "image/png")}, "'n' must be an integer", "n"),
    ({"prompt": "p", "stream": "maybe"}, {"image": ("a.png", b"I", "image/png")}, "true or false", "stream"),
    ({"prompt": "p", "image": "text"}, {"mask": ("m.png", b"M", "image/png")}, "file part", "image"),
    ({"prompt": "p"}, {"mask": ("m.png", b"M", "image/png")}, "an image file is required", "image"),
    ({"prompt": "p"}, [("image[]", ("a.png", b"I", "image/png")), ("image[]", ("b.png", b"J", "image/png"))],
     "edits one image", "image"),
    ({"prompt": "p"}, {"image": ("a.png", b"", "image/png")}, "image file is empty", "image"),
    ({"prompt": "p"}, {"image": ("a.png", b"I", "image/png"), "other": ("x", b"X", "image/png")},
     "unexpected file field", "other"),
    ({"prompt": "p" * 5000}, {"image": ("a.png", b"I", "image/png")}, "over the limit of 4,096 bytes", None),
])
def test_bad_forms_are_one_clear_error(client, data, files, fragment, param):
    if not files:
        r = client.post("/edit", data=data)
    else:
        r = client.post("/edit", data=data, files=files)
    assert r.status_code == 400
    assert fragment in r.json()["error"] and r.json()["param"] == param


def test_typed_fields_directly():
    assert typed_fields({"seed": " 7 ", "top_p": "0.5", "stream": "0", "response_format": "b64_json"}) == {
        "seed": 7, "top_p": 0.5, "stream": False, "response_format": "b64_json"}
