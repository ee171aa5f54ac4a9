"""The OpenAI-compatible request bodies, and the error every endpoint answers with.

Field names, types and defaults follow OpenAI's API reference for chat completions and
image generations. Fields that would change what the client gets back but that this model
cannot do (tools, several chat choices, audio) are refused by name instead of being dropped
silently; fields that only tune OpenAI's own service (user, store, metadata, ...) are accepted
and ignored, so off-the-shelf clients work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ApiError", "ChatCompletionRequest", "ChatMessage", "ImageGenerationRequest", "ImageURL",
    "StreamOptions", "TextPart", "ImagePart", "parse_body",
]


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
             500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class _Body(BaseModel):
    # Unknown fields are kept (clients send many OpenAI-only options) and checked by name below.
    model_config = ConfigDict(extra="allow", strict=True)


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    url: str
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None
    name: Optional[str] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: Optional[bool] = None


# OpenAI options this server cannot honour: refused when set to anything but their default.
_UNSUPPORTED_CHAT = {"tools": (None, []), "functions": (None, []), "tool_choice": (None, "none"),
                      "function_call": (None, "none"), "logprobs": (None, False), "top_logprobs": (None, 0),
                      "audio": (None,), "prediction": (None,), "logit_bias": (None, {}),
                      "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0)}


class ChatCompletionRequest(_Body):
    messages: list[ChatMessage] = Field(min_length=1)
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    stop: Union[str, list[str], None] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = None

    def check(self) -> None:
        extra = self.model_extra or {}
        for name, allowed in _UNSUPPORTED_CHAT.items():
            if name in extra and extra[name] not in allowed:
                raise ApiError(400, f"'{name}' is not supported by this server", param=name, code="unsupported_parameter")
        if self.n not in (None, 1):
            raise ApiError(400, f"n must be 1 (this server returns one choice), got {self.n}", param="n")
        fmt = extra.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise ApiError(400, "only response_format {\"type\": \"text\"} is supported", param="response_format",
                           code="unsupported_parameter")
        modalities = extra.get("modalities")
        if modalities is not None and modalities != ["text"]:
            raise ApiError(400, "only the 'text' output modality is supported", param="modalities",
                           code="unsupported_parameter")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop must be up to 4 non-empty strings", param="stop")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ImageGenerationRequest(_Body):
    prompt: str
    model: Optional[str] = None
    n: Optional[int] = 1
    size: Optional[str] = "auto"
    response_format: Optional[Literal["b64_json", "url"]] = None
    output_format: Optional[Literal["png", "jpeg", "webp"]] = None
    background: Optional[Literal["transparent", "opaque", "auto"]] = None
    quality: Optional[str] = None
    style: Optional[str] = None
    stream: Optional[bool] = False
    partial_images: Optional[int] = Field(default=None, ge=0, le=3)
    # Extensions (not in OpenAI's API): the model's own sampling knobs.
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    guidance_scale: Optional[float] = Field(default=None, ge=0, le=100)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_k: Optional[int] = Field(default=None, ge=0)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)

    def check(self) -> None:
        if not self.prompt.strip():
            raise ApiError(400, "prompt must not be empty", param="prompt")
        if self.response_format == "url":
            raise ApiError(400, "response_format 'url' is not supported (this server keeps no files); "
                                "use 'b64_json'", param="response_format", code="unsupported_parameter")
        if self.output_format not in (None, "png"):
            raise ApiError(400, f"output_format must be 'png', got {self.output_format!r}", param="output_format")
        if self.background == "transparent":
            raise ApiError(400, "transparent backgrounds are not supported", param="background")
        if self.partial_images and not self.stream:
            raise ApiError(400, "partial_images needs stream: true", param="partial_images")


def parse_body(model: type[BaseModel], raw: bytes):
    """Validate a JSON body into `model`; a 400 naming the first bad field otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        # The deepest error is the most specific one (a union reports one error per member).
        err = max(e.errors(include_url=False), key=lambda x: len(x["loc"]))
        param = _param(err["loc"])
        if err["type"] in ("json_invalid", "model_type", "model_attributes_type"):
            raise ApiError(400, f"the body is not a valid JSON object: {err['msg']}", param=None) from None
        where = f"'{param}': " if param else ""
        raise ApiError(400, f"{where}{err['msg']}", param=param) from None


def _param(loc: tuple) -> str | None:
    """A pydantic error location as OpenAI writes `param`, e.g. "messages.[0].content"."""
    out: list[str] = []
    skip_tag = False
    for x in loc:
        if isinstance(x, str) and ("[" in x or x == "str"):
            continue  # the label pydantic gives a union member: the client never sent it
        if skip_tag:
            skip_tag = False
            continue  # the tag of a content part (text / image_url)
        skip_tag = isinstance(x, int) and out[-1:] == ["content"]
        out.append(f"[{x}]" if isinstance(x, int) else str(x))
    return ".".join(out) or None
