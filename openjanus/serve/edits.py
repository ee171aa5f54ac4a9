"""The multipart form of `POST /v1/images/edits` (OpenAI's images-edit API): its text fields
typed as the JSON endpoints' bodies are, and its `image` and `mask` files as bytes.

OpenAI's clients send every field as text (`n=2`, `stream=true`) and the files as parts named
`image` (or `image[]` for a list; this model edits one image) and `mask`. Reading is bounded:
the body by the server's byte limit, the fields and files by count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from openjanus.errors import UserError

__all__ = ["EditForm", "FormError", "read_edit_form", "typed_fields"]

# Text fields that the JSON bodies carry as numbers or booleans.
INT_FIELDS = frozenset({"n", "partial_images", "seed", "top_k", "jacobi", "jacobi_branches", "output_compression"})
FLOAT_FIELDS = frozenset({"temperature", "top_p", "guidance_scale", "overlap"})
BOOL_FIELDS = frozenset({"stream", "seed_per_image", "keep_pixels"})
FILE_FIELDS = ("image", "image[]", "mask")
MAX_FIELDS = 64


class FormError(UserError):
    """A bad edits form: HTTP 400 naming the field (`param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class EditForm:
    body: dict[str, Any]  # the text fields, typed as a JSON body would be
    image: bytes
    mask: bytes | None = None
    image_name: str = "image"
    files: dict[str, str] = field(default_factory=dict)  # part name -> file name, for messages


def typed_fields(fields: dict[str, str]) -> dict[str, Any]:
    """Form text -> JSON types: integers, numbers and booleans where the JSON bodies have them;
    OpenAI's client sends `None` as an absent field, so an empty value is absent too."""
    out: dict[str, Any] = {}
    for name, text in fields.items():
        text = text.strip()
        if text == "":
            continue
        if name in INT_FIELDS:
            try:
                out[name] = int(text)
            except ValueError:
                raise FormError(f"'{name}' must be an integer, got {text!r}", name) from None
        elif name in FLOAT_FIELDS:
            try:
                out[name] = float(text)
            except ValueError:
                raise FormError(f"'{name}' must be a number, got {text!r}", name) from None
        elif name in BOOL_FIELDS:
            if text.lower() not in ("true", "false", "1", "0"):
                raise FormError(f"'{name}' must be true or false, got {text!r}", name)
            out[name] = text.lower() in ("true", "1")
        else:
            out[name] = text
    return out


async def read_edit_form(request: Request, max_bytes: int) -> EditForm:
    """Read and check the multipart form of an edits request (at most `max_bytes` in all)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise FormError("the edits endpoint takes a multipart/form-data body (fields 'image', 'mask', 'prompt', ...)")
    body = b""
    async for chunk in request.stream():  # bounded even without a Content-Length
        body += chunk
        if len(body) > max_bytes:
            raise FormError(f"the request body is over the limit of {max_bytes:,} bytes")
    request._body = body  # starlette's form parser reads the cached body
    try:
        form = await request.form(max_files=len(FILE_FIELDS), max_fields=MAX_FIELDS, max_part_size=max_bytes)
    except Exception as e:  # starlette/python-multipart: malformed parts, too many fields or files
        reason = " ".join(str(getattr(e, "detail", e)).split()) or type(e).__name__
        raise FormError(f"cannot read the multipart form: {reason}") from None
    texts: dict[str, str] = {}
    files: dict[str, list[UploadFile]] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(value)
        elif name in texts:
            raise FormError(f"the field '{name}' is given twice", name)
        else:
            texts[name] = value
    unknown = set(files) - set(FILE_FIELDS)
    if unknown:
        raise FormError(f"unexpected file field '{sorted(unknown)[0]}' (files are 'image' and 'mask')",
                        sorted(unknown)[0])
    images = files.get("image", []) + files.get("image[]", [])
    if not images:
        if "image" in texts:
            raise FormError("'image' must be a file part (an uploaded PNG, JPEG or WebP), not text", "image")
        raise FormError("an image file is required (form field 'image')", "image")
    if len(images) > 1:
        raise FormError(f"{len(images)} images given; this model edits one image per request", "image")
    if len(files.get("mask", [])) > 1:
        raise FormError("more than one mask given", "mask")
    if "mask" in texts:
        raise FormError("'mask' must be a file part (a PNG with transparent pixels), not text", "mask")
    image = await images[0].read()
    mask = await files["mask"][0].read() if files.get("mask") else None
    if not image:
        raise FormError("the image file is empty", "image")
    if mask is not None and not mask:
        raise FormError("the mask file is empty", "mask")
    await form.close()
    return EditForm(typed_fields(texts), image, mask, images[0].filename or "image",
                    {k: (v[0].filename or k) for k, v in files.items()})
