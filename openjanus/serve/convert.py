"""Between OpenAI's wire format and the engine's typed requests: images in data URLs, chat
messages, PNGs out, and partial images of an image request still being sampled."""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.request
import warnings
from dataclasses import dataclass

import torch
from PIL import Image

from openjanus.images import ensure_rgb
from openjanus.requests import Message
from openjanus.serve.schemas import ApiError, ChatMessage, ImagePart

__all__ = ["ImageLimits", "decode_image", "to_messages", "png_b64", "partial_image_tokens"]

# What a chat image may be, by the decoder that recognises the bytes (the declared type is
# only checked against this list too).
IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)",
                       re.DOTALL)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    max_images: int = 8  # per chat request
    allow_remote: bool = False  # fetch http(s) image URLs
    remote_timeout: float = 10.0


def _fetch(url: str, limits: ImageLimits, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=limits.remote_timeout) as resp:  # noqa: S310 (scheme checked)
            data = resp.read(limits.max_bytes + 1)
    except Exception as e:
        raise ApiError(400, f"could not fetch the image at {url}: {e}", param=param, code="invalid_image_url") from None
    if len(data) > limits.max_bytes:
        raise ApiError(413, f"the image at {url} is over {limits.max_bytes} bytes", param=param, code="image_too_large")
    return data


def image_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """The encoded bytes of an image_url: a base64 `data:` URL, or (when allowed) an http(s) URL."""
    if url.startswith(("http://", "https://")):
        if not limits.allow_remote:
            raise ApiError(400, "image URLs on the web are not fetched by this server; send the image inline as a "
                                "data URL (data:image/png;base64,...) or start it with --allow-remote-images",
                           param=param, code="invalid_image_url")
        return _fetch(url, limits, param)
    m = _DATA_URL.fullmatch(url)
    if m is None or not m["b64"]:
        raise ApiError(400, "an image_url must be a base64 data URL (data:image/png;base64,...)", param=param,
                       code="invalid_image_url")
    if m["mime"] and m["mime"].lower() not in (*IMAGE_FORMATS.values(), "image/jpg"):
        raise ApiError(400, f"unsupported image type {m['mime']}; send PNG, JPEG, WebP or GIF", param=param,
                       code="invalid_image_format")
    if len(m["data"]) > limits.max_bytes * 4 // 3 + 4:
        raise ApiError(413, f"the image is over {limits.max_bytes} bytes", param=param, code="image_too_large")
    try:
        return base64.b64decode(re.sub(r"\s+", "", m["data"]), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the image data URL is not valid base64", param=param, code="invalid_image_url") from None


def decode_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Encoded bytes -> an RGB image, refusing other formats and too many pixels before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in IMAGE_FORMATS:
                raise ApiError(400, f"unsupported image format {img.format or 'unknown'}; send PNG, JPEG, WebP or GIF",
                               param=param, code="invalid_image_format")
            w, h = img.size
            if w * h > limits.max_pixels:  # checked from the header, before any pixel is decoded
                raise ApiError(413, f"the image is {w}x{h} = {w * h} pixels; this server takes up to "
                                    f"{limits.max_pixels}", param=param, code="image_too_large")
            img.seek(0)  # an animated GIF or WebP: its first frame
            img.load()
            return ensure_rgb(img).copy()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # PIL's own, larger bound
        raise ApiError(413, f"the image has too many pixels ({e}); this server takes up to {limits.max_pixels}",
                       param=param, code="image_too_large") from None
    except Exception as e:  # PIL raises many types on corrupt data
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ApiError(400, f"the image could not be decoded: {reason}", param=param, code="invalid_image") from None


def to_messages(messages: list[ChatMessage], limits: ImageLimits) -> list[Message]:
    """OpenAI chat messages -> engine messages, images decoded in place (blocking: run in a thread)."""
    out: list[Message] = []
    images = 0
    for i, msg in enumerate(messages):
        role = "system" if msg.role in ("system", "developer") else msg.role
        if msg.content is None:
            raise ApiError(400, f"messages[{i}] has no content", param=f"messages.[{i}].content")
        if isinstance(msg.content, str):
            out.append(Message(role, msg.content))
            continue
        parts: list = []
        for j, part in enumerate(msg.content):
            if not isinstance(part, ImagePart):
                parts.append(part.text)
                continue
            param = f"messages.[{i}].content.[{j}].image_url"
            if role != "user":
                raise ApiError(400, f"images are only allowed in user messages (messages[{i}] is {msg.role})",
                               param=param)
            images += 1
            if images > limits.max_images:
                raise ApiError(400, f"more than {limits.max_images} images in one request", param=param,
                               code="too_many_images")
            parts.append(decode_image(image_bytes(part.image_url.url, limits, param), limits, param))
        out.append(Message(role, parts))
    return out


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def partial_image_tokens(tokens: torch.Tensor, total: int) -> tuple[torch.Tensor, float]:
    """Image tokens sampled so far [n, steps] -> a full grid [n, total] to decode, and the
    fraction of the image's height that is real.

    Only complete rows of the raster-ordered token grid count; the rest are filled with the
    last complete row repeated (the caller blanks that part after decoding).
    """
    side = int(round(total ** 0.5))  # the token grid is side x side, raster order
    n, steps = tokens.shape
    rows = min(steps // side, side)
    grid = torch.zeros(n, side, side, dtype=torch.long)
    if rows:
        grid[:, :rows] = tokens[:, :rows * side].reshape(n, rows, side)
        grid[:, rows:] = grid[:, rows - 1:rows]
    return grid.reshape(n, total), rows / side


def blank_below(image: Image.Image, fraction: float, colour=(128, 128, 128)) -> Image.Image:
    """Grey out the part of `image` below `fraction` of its height (rows not yet generated)."""
    top = int(round(image.height * fraction))
    if top < image.height:
        image = image.copy()
        image.paste(colour, (0, top, image.width, image.height))
    return image
