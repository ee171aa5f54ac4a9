"""OpenAI's API at the server's edge: request bodies to typed requests, results to responses,
stream chunks and usage, errors to OpenAI's error shape. The only place OpenAI's names meet the
project's:

    OpenAI (body)                          project
    max_completion_tokens / max_tokens     ChatRequest.max_new_tokens
    temperature, top_p                     SamplingParams.temperature, top_p
    top_p = 0                              top_k = 1: only the most likely token (chat and images alike)
    seed                                   request seed
    stop                                   ChatRequest.stop
    n (images)                             ImageRequest.n
    size "WxH" / "auto"                    ImageRequest.size (auto: native; edits keep the image's aspect)
    image, mask (edits form)               ImageRequest.image, mask (transparent pixels = regenerate)
    guidance_scale (extension)             ImageRequest.guidance (classifier-free guidance scale)
    top_k, jacobi (extensions)             SamplingParams.top_k, ImageRequest.jacobi (N or "auto")
    jacobi_sampler (extension)             ImageRequest.jacobi_sampler
    jacobi_branches (extension)            ImageRequest.jacobi_branches
    seed_per_image (extension, boolean)    ImageRequest.seed_per_image (each image its own stream)
    keep_pixels (extension, boolean)       ImageRequest.keep_pixels (edits: the source's own pixels where kept)
    usage.prompt_tokens / input_tokens     ChatResult.prompt_tokens / ImageResult.prompt_tokens

`top_p`: OpenAI accepts 0 to 1, and 0 keeps only the most likely token (a nucleus always holds
one token); here it means the same on both endpoints. An omitted temperature, top_p, top_k,
max_tokens or guidance_scale takes the model's default (its generation_config.json, as vLLM
applies a model's generation config; see `openjanus.model_card`), so a request at default
settings gets the answer the CLI and the Python API give (the demo model answers greedily;
without a generation_config.json: greedy answers, images at temperature 1 and guidance 5). An
omitted seed is a fresh random one. `system_fingerprint` names the weights and their format.

Fields, object names and status codes follow OpenAI's API reference; errors are
`{"error": {"message", "type", "param", "code"}}` and never carry a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image

from openjanus.canvas import Geometry, check_size, parse_size
from openjanus.errors import UserError
from openjanus.images import ImageLoadError, has_alpha
from openjanus.inference.engine import Cancelled, ContextTooLong, QueueFull
from openjanus.model_card import GenerationDefaults
from openjanus.numbers import check_integer, check_number
from openjanus.requests import (
    JACOBI_SAMPLERS,
    MAX_SEED,
    ChatRequest,
    ChatResult,
    ImageRequest,
    ImageResult,
    Message,
    SamplingParams,
)
from openjanus.serve.edits import EditForm
from openjanus.serve.errors import APIError

log = logging.getLogger("openjanus.serve")
IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"}


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the server (the engine's own caps bound batch and queue)."""

    model_id: str = "janus"
    api_key: str | None = None
    max_body_bytes: int = 20 * 2**20
    max_image_pixels: int = 16_000_000  # decoded size; refuses decompression bombs
    max_images_per_request: int = 8  # in one chat request
    max_prompt_chars: int = 4000
    max_n: int = 8  # images per generation request
    allow_remote_images: bool = False  # http(s) image URLs are refused unless set (then fetched, bounded)
    max_image_bytes: int = 10 * 2**20  # one image, encoded (a data: URL or a fetched file)
    remote_timeout_s: float = 10.0
    # Checked from the body before any tokenizing or image decoding (issue 23):
    max_messages: int = 1024  # messages in one chat request
    max_text_chars: int = 256 * 1024  # characters of text in one chat request (every message together)
    max_pixels_in_flight: int = 64_000_000  # decoded pixels of the chat images being handled, server-wide
    # Who may call (DNS rebinding, cross-site requests) and how long a client may take to send:
    allowed_hosts: tuple[str, ...] | None = ("localhost", "127.0.0.1", "::1")  # Host header names; None: any
    header_timeout_s: float = 10.0  # from connecting (or the previous answer) to the end of the headers
    body_timeout_s: float = 30.0  # between two pieces of a request body


# --- errors (APIError: openjanus.serve.errors) ------------------------------------------------------


SHUTTING_DOWN = "the request was cancelled: the server is shutting down"


def api_error(e: Exception) -> APIError:
    """What a client is told about `e` (no internals): the engine's refusals and bad values
    become OpenAI's 429 / 503 / 400, anything else a 500 (logged here)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, QueueFull):
        return APIError(429, str(e), code="queue_full", kind="rate_limit_error", headers={"Retry-After": "1"})
    if isinstance(e, Cancelled):  # the server is shutting down (or the client left)
        return APIError(503, SHUTTING_DOWN, code="server_shutting_down", kind="server_error")
    if isinstance(e, ContextTooLong):
        return APIError(400, str(e), code="context_length_exceeded")
    if isinstance(e, UserError):
        return APIError(400, str(e))
    log.error("a request failed", exc_info=e)
    return APIError(500, "internal server error", kind="server_error")


# --- body fields ----------------------------------------------------------------------------------


def _field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:
        raise APIError(400, f"'{name}' must be of type {_names(kinds)}, got a boolean", param=name)
    if not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be of type {_names(kinds)}, got {type(value).__name__}", param=name)
    return value


def _jacobi_sampler(body: dict) -> str | None:
    value = _field(body, "jacobi_sampler", str, None)
    if value is not None and value not in JACOBI_SAMPLERS:
        raise APIError(400, f"'jacobi_sampler' must be one of {', '.join(JACOBI_SAMPLERS)}, got {value!r}",
                       param="jacobi_sampler")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join({int: "integer", float: "number", str: "string", bool: "boolean", list: "array",
                        dict: "object"}.get(k, k.__name__) for k in kinds)


def _number(body: dict, name: str, low: float, high: float, default: float | None) -> float | None:
    value = _field(body, name, (int, float), default)
    if value is None:
        return None
    try:
        return check_number(value, low=low, high=high, name=f"'{name}'")
    except UserError as e:
        raise APIError(400, str(e), param=name) from None


def _integer(body: dict, name: str, low: int, high: int | None, default: int | None) -> int | None:
    value = _field(body, name, int, default)
    if value is None:
        return None
    try:
        return check_integer(value, low=low, high=high, name=f"'{name}'")
    except UserError as e:
        raise APIError(400, str(e), param=name) from None


# OpenAI's chat default is temperature 1 (sampling); a Python ChatRequest defaults to greedy.


def _sampling(body: dict, default: SamplingParams) -> SamplingParams | None:
    """temperature, top_p and top_k (an extension) over `default` (the model's); None when the
    body sets none of them (the engine then applies the model's defaults whole). top_p 0 keeps
    the most likely token only."""
    if all(body.get(name) is None for name in ("temperature", "top_p", "top_k")):
        return None
    temperature = _number(body, "temperature", 0, 2, default.temperature)
    top_p = _number(body, "top_p", 0, 1, default.top_p)
    top_k = _integer(body, "top_k", 0, None, default.top_k)
    if top_p == 0:
        top_p, top_k = None, 1
    return SamplingParams(temperature, top_k=top_k, top_p=top_p)


def _seed(body: dict) -> int | None:
    return _integer(body, "seed", 0, MAX_SEED, None)


def wants_stream(body: dict) -> bool:
    return _field(body, "stream", bool, False)


def check_model(body: dict, settings: ServeSettings) -> None:
    """A request naming a model this server does not serve is OpenAI's 404 (leaving it out is fine)."""
    model = _field(body, "model", str)
    if model is not None and model != settings.model_id:
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{settings.model_id}'",
                       param="model", code="model_not_found")


def parse_json(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON") from None
    except RecursionError:
        raise APIError(400, "the request body nests too deeply") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise APIError(400, f"the request body holds a value that cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


# --- images in messages -----------------------------------------------------------------------------


def _image_bytes(url: str, settings: ServeSettings, param: str) -> bytes:
    """The encoded image an image_url part refers to (a data: URL, or fetched when allowed)."""
    if url.startswith(("http://", "https://")):
        if not settings.allow_remote_images:
            raise APIError(400, "image URLs over http(s) are not fetched by this server; send the image inline "
                                "as a data: URL (data:image/png;base64,...)", param=param, code="remote_image_refused")
        return _fetch_image(url, settings, param)
    if not url.startswith("data:") or ";base64," not in url:
        raise APIError(400, "an image must be a data: URL with base64 content (data:image/png;base64,...)",
                       param=param, code="invalid_image_url")
    mime = url[5:url.index(";")].lower()
    if mime not in IMAGE_TYPES:
        raise APIError(400, f"image type {mime!r} is not supported; send PNG, JPEG, WebP or GIF", param=param,
                       code="invalid_image_format")
    data = url[url.index(";base64,") + 8:]
    if len(data) > settings.max_image_bytes * 4 // 3 + 4:
        raise APIError(413, f"the image is over this server's limit of {settings.max_image_bytes:,} bytes",
                       param=param, code="image_too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "the image's base64 data is corrupt", param=param, code="invalid_image") from None
    found = _sniff(raw)
    if found is not None and found != _TYPE_NAMES[mime]:
        raise APIError(400, f"the data URL says {mime} but the bytes are {found}", param=param,
                       code="invalid_image_format")
    return raw


_TYPE_NAMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WebP", "image/gif": "GIF"}


def _sniff(raw: bytes) -> str | None:
    """The image format the bytes start with, or None when they are none of the four."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WebP"
    return None


def _fetch_image(url: str, settings: ServeSettings, param: str) -> bytes:
    """An http(s) image, read up to the size limit (runs on a worker thread, never the event loop)."""
    try:
        with urllib.request.urlopen(url, timeout=settings.remote_timeout_s) as response:  # noqa: S310 (http(s) only)
            raw = response.read(settings.max_image_bytes + 1)
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise APIError(400, f"the image at {url} could not be fetched: {reason}", param=param,
                       code="invalid_image_url") from None
    if len(raw) > settings.max_image_bytes:
        raise APIError(413, f"the image at {url} is over this server's limit of {settings.max_image_bytes:,} bytes",
                       param=param, code="image_too_large")
    return raw


def _image_size(raw: bytes, settings: ServeSettings, param: str) -> tuple[int, int]:
    """Width and height from the image's header (nothing is decoded), within the pixel limit."""
    try:
        with Image.open(io.BytesIO(raw)) as probe:  # reads the header only
            w, h = probe.size
    except Image.DecompressionBombError as e:  # PIL's own ceiling, far above ours: a bomb
        raise APIError(413, f"the image is too large to decode ({e}); this server's limit is "
                            f"{settings.max_image_pixels:,} pixels", param=param, code="image_too_large") from None
    except Exception:
        raise APIError(400, "the image cannot be read (corrupt or not an image)", param=param,
                       code="invalid_image") from None
    if w * h > settings.max_image_pixels:
        raise APIError(413, f"the image is {w} x {h} pixels, above this server's limit of "
                            f"{settings.max_image_pixels:,}", param=param, code="image_too_large")
    return w, h


def _open(raw: bytes, param: str, keep_alpha: bool = False) -> Image.Image:
    try:
        from openjanus import images

        return images.open_image(raw, keep_alpha=keep_alpha)
    except ImageLoadError as e:
        raise APIError(400, str(e), param=param, code="invalid_image") from None


def form_pixels(edit: EditForm, settings: ServeSettings) -> int:
    """Decoded pixels an edits form's image and mask will take, from their headers."""
    sizes = [_image_size(edit.image, settings, "image")]
    if edit.mask is not None:
        sizes.append(_image_size(edit.mask, settings, "mask"))
    return sum(w * h for w, h in sizes)


def _image_from_bytes(raw: bytes, settings: ServeSettings, param: str, keep_alpha: bool = False) -> Image.Image:
    """An uploaded image (the edits form's), its size checked from the header before decoding."""
    _image_size(raw, settings, param)
    return _open(raw, param, keep_alpha)


@dataclass
class _ImagePart:
    """An image of a chat body: its encoded bytes and header size, decoded later."""

    raw: bytes
    pixels: int
    param: str


@dataclass
class ChatBody:
    """A chat body checked for everything but its images' pixel data: the messages as
    (role, parts) with images still encoded, and the decoded pixels their images will take."""

    messages: list[tuple[str, str | list]]
    images: list[_ImagePart]
    body: dict

    @property
    def pixels(self) -> int:
        return sum(im.pixels for im in self.images)


def _text(text: str, param: str, used: int, settings: ServeSettings) -> int:
    """Characters of text so far, with `text`; over the cap is OpenAI's string_above_max_length."""
    if len(text) > settings.max_text_chars or used + len(text) > settings.max_text_chars:
        what = f"'{param}' is {len(text):,} characters" if len(text) > settings.max_text_chars else \
            f"the messages hold more than {settings.max_text_chars:,} characters of text"
        raise APIError(400, f"{what}; this server's limit is {settings.max_text_chars:,} characters per request",
                       param=param if len(text) > settings.max_text_chars else "messages",
                       code="string_above_max_length")
    return used + len(text)


def _content(content: list, where: str, settings: ServeSettings, images: list[_ImagePart],
             chars: int) -> tuple[list[Any], int]:
    """A message's content parts (text, and images as indices into `images`, in order) and the
    characters of text so far."""
    parts: list[Any] = []
    for k, part in enumerate(content):
        p = f"{where}.content[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            chars = _text(part["text"], f"{p}.text", chars, settings)
            parts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise APIError(400, f"{p}.image_url.url must be a string", param=f"{p}.image_url")
            if len(images) >= settings.max_images_per_request:
                raise APIError(400, f"at most {settings.max_images_per_request} images per request", param=p)
            images.append(_ImagePart(url.encode(), 0, f"{p}.image_url"))  # the URL; read in read_images
            parts.append(len(images) - 1)
        else:
            raise APIError(400, f"{p} must be a text part or an image_url part", param=p)
    return parts, chars


def check_chat(body: dict, settings: ServeSettings) -> ChatBody:
    """Everything about a chat body that needs no image data, at a cost bounded by the body's
    size: fields, message count and text length come first (before anything is tokenized)."""
    for name, off in _UNSUPPORTED_CHAT.items():
        if name in body and body[name] not in off:
            raise APIError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
    check_model(body, settings)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    if len(raw) > settings.max_messages:
        raise APIError(400, f"'messages' holds {len(raw):,} messages; this server's limit is {settings.max_messages:,}",
                       param="messages", code="array_above_max_length")
    messages: list[tuple[str, str | list]] = []
    images: list[_ImagePart] = []
    chars = 0
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role must be system, developer, user or assistant, got {role!r}",
                           param=f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            chars = _text(content, f"{where}.content", chars, settings)
            messages.append((role, content))
            continue
        if not isinstance(content, list):
            raise APIError(400, f"{where}.content must be a string or an array of content parts",
                           param=f"{where}.content")
        parts, chars = _content(content, where, settings, images, chars)
        messages.append((role, parts))
    _chat_options(body)
    return ChatBody(messages, images, body)


def read_images(chat: ChatBody, settings: ServeSettings) -> ChatBody:
    """Each image's bytes (base64-decoded, or fetched) and its size from its header: what
    admission needs before anything is decoded. Runs on a worker thread."""
    for im in chat.images:
        im.raw = _image_bytes(im.raw.decode(), settings, im.param)
        w, h = _image_size(im.raw, settings, im.param)
        im.pixels = w * h
    return chat


def chat_from(chat: ChatBody, defaults: GenerationDefaults = GenerationDefaults()) -> ChatRequest:
    """The typed request, images decoded (run it on a worker thread); fields left out take
    `defaults` (the model's)."""
    decoded = [_open(im.raw, im.param) for im in chat.images]
    messages = [Message(role, content if isinstance(content, str) else
                        [decoded[p] if isinstance(p, int) else p for p in content]) for role, content in chat.messages]
    return ChatRequest(messages, **_chat_options(chat.body, defaults))


# --- bodies -> typed requests -------------------------------------------------------------------------

# OpenAI options this server cannot honour. Refused when set to anything but "off", so a client
# never gets an answer that silently ignored what it asked for.
_UNSUPPORTED_CHAT = {"tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"),
                     "function_call": (None, "none"), "logprobs": (None, False), "top_logprobs": (None, 0),
                     "logit_bias": (None, {}), "frequency_penalty": (None, 0, 0.0),
                     "presence_penalty": (None, 0, 0.0), "audio": (None,), "prediction": (None,),
                     "modalities": (None, ["text"]), "response_format": (None, {"type": "text"})}


def _chat_options(body: dict, defaults: GenerationDefaults = GenerationDefaults()) -> dict:
    """ChatRequest's arguments but the messages; fields left out take `defaults` (the model's)."""
    if _field(body, "n", int, 1) != 1:
        raise APIError(400, "only n = 1 is supported", param="n")
    _field(body, "user", str)
    _field(body, "stream_options", dict)
    wants_stream(body)
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):  # the first one given counts, 0 included
        if body.get(name) is not None:
            max_tokens = _integer(body, name, 1, None, None)
            break
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a string or an array of up to 4 non-empty strings", param="stop")
    return {"max_new_tokens": max_tokens, "sampling": _sampling(body, defaults.chat.sampling), "seed": _seed(body),
            "stop": tuple(stop or ())}


def chat_request(body: dict, settings: ServeSettings,
                 defaults: GenerationDefaults = GenerationDefaults()) -> ChatRequest:
    """The typed request of a chat-completions body (decodes its images: run it on a worker
    thread); fields left out take `defaults` (the model's)."""
    return chat_from(read_images(check_chat(body, settings), settings), defaults)


def image_request(body: dict, geometry: Geometry, settings: ServeSettings, edit: EditForm | None = None,
                  defaults: GenerationDefaults = GenerationDefaults()) -> ImageRequest:
    """The typed request of an images-generations body, or of an edits form (`edit`: its image and
    mask; `body`: its text fields), for a model of `geometry`. `size` is "auto" or WxH: any multiple
    of the image token size from the native side up to the cap (a sliding window above native).
    Fields left out take `defaults` (the model's)."""
    check_model(body, settings)
    if edit is None:  # (a form's fields are text; the edits route reads them)
        wants_stream(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise APIError(400, "'prompt' must be a non-empty string", param="prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise APIError(400, f"'prompt' is {len(prompt)} characters; the limit is {settings.max_prompt_chars}",
                       param="prompt", code="prompt_too_long")
    n = _field(body, "n", int, ImageRequest.n)
    if not 1 <= n <= settings.max_n:
        raise APIError(400, f"'n' must be between 1 and {settings.max_n}, got {n}", param="n")
    size = _field(body, "size", str, "auto")
    wh = None
    if size != "auto":
        try:
            wh = check_size(*parse_size(size), geometry)
        except UserError as e:
            raise APIError(400, f"size {size!r} is not supported: {e}", param="size", code="unsupported_size") from None
    extra: dict[str, Any] = {}
    if edit is not None:
        extra["image"] = _image_from_bytes(edit.image, settings, "image", keep_alpha=True)
        if edit.mask is not None:
            extra["mask"] = _image_from_bytes(edit.mask, settings, "mask", keep_alpha=True)
            if not has_alpha(extra["mask"]):
                raise APIError(400, "the mask has no alpha channel: send a PNG whose transparent pixels mark the "
                                    "area to edit", param="mask", code="invalid_image")
        elif not has_alpha(extra["image"]):
            raise APIError(400, "no mask given and the image has no transparent pixels: send a mask (a PNG whose "
                                "transparent pixels mark the area to edit)", param="mask")
    if _field(body, "response_format", str, "b64_json") != "b64_json":
        raise APIError(400, "only response_format 'b64_json' is supported (the server keeps no files)",
                       param="response_format")
    if _field(body, "output_format", str, "png") != "png":
        raise APIError(400, "only output_format 'png' is supported", param="output_format")
    return ImageRequest(prompt, n=n, guidance=_number(body, "guidance_scale", 0, 100, None),
                        sampling=_sampling(body, defaults.image.sampling), seed=_seed(body),
                        jacobi=_field(body, "jacobi", (int, str), ImageRequest.jacobi),
                        jacobi_sampler=_jacobi_sampler(body),
                        jacobi_branches=_integer(body, "jacobi_branches", 1, 64, ImageRequest.jacobi_branches), size=wh,
                        seed_per_image=_field(body, "seed_per_image", bool, False),
                        keep_pixels=_field(body, "keep_pixels", bool, ImageRequest.keep_pixels), **extra)


def best_of(body: dict) -> int:
    """Candidates sampled per image returned, the ones the model rates highest kept (1: off).
    Not with streaming: the choice is made once every candidate is finished."""
    n = _integer(body, "best_of", 1, 16, 1)
    if n > 1 and wants_stream(body):
        raise APIError(400, "'best_of' cannot be combined with 'stream' (images are chosen once all are done)",
                       param="best_of")
    return n


def partial_images(body: dict) -> int:
    """How many partial images a streamed generation sends (OpenAI: 0 to 3)."""
    return _integer(body, "partial_images", 0, 3, 0)


def usage_wanted(body: dict) -> bool:
    """A streamed chat ends with a usage chunk when stream_options.include_usage is set."""
    options = _field(body, "stream_options", dict) or {}
    return bool(options.get("include_usage"))


# --- results -> responses -----------------------------------------------------------------------------


def sse(data: dict | str, event: str | None = None) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


def png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def chat_usage(result: ChatResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def chat_completion(result: ChatResult, cid: str, created: int, model_id: str, fingerprint: str) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model_id,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "refusal": None,
                                             "annotations": []},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": chat_usage(result),
    }


class ChatChunks:
    """The `chat.completion.chunk` events of one streamed answer: the role first, then the text
    (leading whitespace of the answer dropped, as the non-streamed answer), the finish reason,
    the usage chunk when asked for, and [DONE]."""

    def __init__(self, cid: str, created: int, model_id: str, usage_wanted: bool, fingerprint: str) -> None:
        self.cid, self.created, self.model_id, self.usage_wanted = cid, created, model_id, usage_wanted
        self.fingerprint = fingerprint
        self.started = False

    def _chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None,
               choices: bool = True) -> bytes:
        body = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "system_fingerprint": self.fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                if choices else []}
        if self.usage_wanted:
            body["usage"] = usage
        return sse(body)

    def first(self) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def text(self, piece: str) -> bytes | None:
        """The chunk for a new piece of text, or None while the answer has not started."""
        text = piece if self.started else piece.lstrip()
        self.started = self.started or bool(text)
        return self._chunk({"content": text}) if text else None

    def end(self, result: ChatResult) -> list[bytes]:
        out = [self._chunk({}, result.finish_reason)]
        if self.usage_wanted:
            out.append(self._chunk({}, usage=chat_usage(result), choices=False))
        return out + [sse("[DONE]")]

    @staticmethod
    def error(e: Exception) -> bytes:
        """The event that ends a stream after its headers went out, in OpenAI's error shape."""
        return sse(api_error(e).body())


def image_usage(result: ImageResult) -> dict:
    """OpenAI's image usage for one image: the prompt's tokens in, the image's tokens out."""
    prompt, image = result.prompt_tokens, result.tokens.shape[1]
    return {"input_tokens": prompt, "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt},
            "output_tokens": image, "total_tokens": prompt + image}


def images_response(result: ImageResult, size: str) -> dict:
    return {"created": int(time.time()), "data": [{"b64_json": png(im), "revised_prompt": None}
                                                  for im in result.images],
            "output_format": "png", "size": size}


class ImageEvents:
    """The events of one streamed image generation (`kind` "image_generation") or edit
    ("image_edit"): partial images, then one completed event per image (with its usage), or an
    error event."""

    def __init__(self, size: str, kind: str = "image_generation") -> None:
        self.size, self.kind = size, kind

    def _event(self, kind: str, payload: dict) -> bytes:
        body = {"type": kind, "created_at": int(time.time()), "size": self.size, "quality": "auto",
                "background": "opaque", "output_format": "png", **payload}
        return sse(body, event=kind)

    def partial(self, image: Image.Image, index: int) -> bytes:
        return self._event(f"{self.kind}.partial_image", {"b64_json": png(image), "partial_image_index": index})

    def completed(self, result: ImageResult) -> list[bytes]:
        usage = image_usage(result)
        return [self._event(f"{self.kind}.completed", {"b64_json": png(im), "usage": usage})
                for im in result.images]

    @staticmethod
    def error(e: Exception) -> bytes:
        return sse({"type": "error", **api_error(e).body()}, event="error")
