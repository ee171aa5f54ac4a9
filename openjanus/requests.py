"""Typed requests and results: what a caller asks the engine for and what it gets back.

Every way of running the model (the Python API, the CLI, the evaluation runners, the HTTP
server) builds these, so each parameter is named, defaulted and validated once, here.
Values are checked where they enter: a request that cannot run raises `UserError` when it
is built, before it reaches the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from torch import Tensor

from openjanus.canvas import DEFAULT_OVERLAP, parse_outpaint, parse_region, parse_size
from openjanus.errors import UserError
from openjanus.images import ImageInput
from openjanus.numbers import check_integer, check_number

__all__ = [
    "SamplingParams", "ImageRequest", "ChatRequest", "Message", "ContentPart", "Cost", "ImageResult",
    "ChatResult", "TextDelta", "ImageProgress", "MAX_SEED", "JACOBI_SAMPLERS",
]

# How sampled speculative Jacobi decoding draws (`ImageRequest.jacobi_sampler`).
JACOBI_SAMPLERS = ("mcsjd", "gumbel", "sjd")

# torch.Generator.manual_seed takes a signed 64-bit value; larger seeds overflow in C++.
MAX_SEED = 2**63 - 1


def _finite(name: str, value: float) -> float:
    return check_number(value, name=name)


def _count(name: str, value: int, low: int, high: int | None = None) -> int:
    return check_integer(value, low=low, high=high, name=name)


def check_text(name: str, text: str) -> str:
    """`text` if it is text: a str that UTF-8 can encode (a lone surrogate such as "\\ud800",
    which JSON escapes and Python strings allow, is not, and no tokenizer takes it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{name} holds a lone surrogate ({text[e.start]!r} at character {e.start}), which is not "
                        "text; encode the text as UTF-8") from None
    return text


def check_seed(seed: int | None) -> int | None:
    """None (a fresh random seed) or an integer in [0, 2**63 - 1]."""
    return None if seed is None else _count("seed", seed, 0, MAX_SEED)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy (argmax); top_k 0/None and top_p 1/None disable those filters."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_number(self.temperature, low=0, name="temperature")
        if self.top_k is not None:
            _count("top_k", self.top_k, 0)
        if self.top_p is not None:
            check_number(self.top_p, low=0, high=1, low_open=True, name="top_p")


@dataclass(frozen=True)
class ImageRequest:
    """Text-to-image: `n` images of one prompt, sampled with classifier-free guidance; or, with
    a source `image`, image-conditioned: the tokens of the source that the `mask` (transparent
    pixels, or a bool tensor at the token grid), the `region` (x0, y0, x1, y1 pixels of the
    source) or the image's own transparency leave are kept, the rest is regenerated; `outpaint`
    ({"right": 128, ...} pixels) extends the source instead.

    `size` (width, height) in pixels, or "WxH", makes an image of another size than the model's
    native square by a sliding window of its token grid (windows overlapping by `overlap` of
    their side); without it, an edit keeps the source's aspect. `openjanus.canvas` states every
    rule (fitting, mask rounding, limits).
    `keep_pixels` (default): the result shows the source's own pixels wherever its tokens were
    kept, fading into the regenerated area over half a patch (`canvas.keep_source_pixels`);
    False: the whole image is the VQ decoder's, whose reconstruction of the kept tokens is
    slightly blurred and shifted in colour. The tokens are the same either way.

    The same request with the same seed gives the same tokens, alone or batched with others.
    Random streams: by default the `n` images share the request's one stream, one draw over all
    of them per step, as the official sampler does (`--dtype float32` reproduces its images for
    any `n` under the same seed); `seed_per_image=True` gives image i a stream of its own, seeded
    `ImageResult.seeds[i]`, so `n=1` with that seed gives image i alone, pixel for pixel (Jacobi
    windows and canvases always draw per image). `guidance` and `sampling` left
    None take the model's defaults (its generation_config.json; without one, guidance 5 and
    temperature 1, the official settings). `guidance` is u + g (c - u) over the unconditional
    and conditional logits: 1 is no guidance, 0 the unconditional image; it must be >= 0.
    `jacobi` > 0 drafts that many tokens per forward pass (speculative Jacobi decoding; the
    output distribution is that of plain sampling, and greedy output is plain decoding's);
    "auto" lets the engine pick the window, or plain decoding, from what it measures.
    `jacobi_sampler` says how a sampled Jacobi image draws: "mcsjd" / "sjd" (speculative
    sampling with coupled / independent redraws: the tokens depend on the window, so a seed
    reproduces them only with the same window) or "gumbel" (fixed Gumbel noise per image
    position: the tokens are a function of the seed alone, the same for every window, and for
    "auto" whatever it picks). None: "mcsjd" with a window (the most tokens per pass measured),
    "gumbel" with "auto" (its images then do not depend on what it measured) or with branches.
    Either way the images follow plain sampling's distribution, but they are other draws than
    plain decoding's for the same seed. `jacobi_branches` > 1 (with a window) verifies each
    image's window on that many rows at once, each with another candidate for its first draft:
    fewer forward passes for `jacobi_branches` times the rows. Greedy and "gumbel" (the default
    with branches) keep the row the model agrees with longest and give the very same tokens as
    one row; "mcsjd" / "sjd" draw the candidates without replacement and keep one by recursive
    rejection sampling (lossless, other draws).
    """

    prompt: str
    n: int = 1
    guidance: float | None = None
    sampling: SamplingParams | None = None
    seed: int | None = 0
    jacobi: int | Literal["auto"] = 0
    jacobi_sampler: Literal["gumbel", "mcsjd", "sjd"] | None = None
    jacobi_branches: int = 1
    size: tuple[int, int] | str | None = None
    image: ImageInput | None = None
    mask: ImageInput | Tensor | None = None
    region: tuple[int, int, int, int] | str | None = None
    outpaint: dict[str, int] | str | None = None
    overlap: float = DEFAULT_OVERLAP
    seed_per_image: bool = False
    keep_pixels: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise UserError(f"the prompt must be a string, got {type(self.prompt).__name__}")
        check_text("the prompt", self.prompt)
        _count("n (images per prompt)", self.n, 1)
        if not isinstance(self.seed_per_image, bool):
            raise UserError(f"seed_per_image must be true or false, got {self.seed_per_image!r}")
        if not isinstance(self.keep_pixels, bool):
            raise UserError(f"keep_pixels must be true or false, got {self.keep_pixels!r}")
        if self.guidance is not None and _finite("guidance", self.guidance) < 0:
            raise UserError(f"guidance must be >= 0 (1: no guidance, 0: the unconditional image), got {self.guidance}")
        if self.sampling is not None and not isinstance(self.sampling, SamplingParams):
            raise UserError(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        check_seed(self.seed)
        if isinstance(self.jacobi, str) and self.jacobi != "auto":
            raise UserError(f"jacobi must be an integer in [0, 64] or 'auto', got {self.jacobi!r}")
        if self.jacobi != "auto":
            _count("jacobi", self.jacobi, 0, 64)
        _count("jacobi_branches", self.jacobi_branches, 1, 64)
        branched = self.jacobi_branches > 1
        if branched and (self.jacobi == "auto" or not self.jacobi):
            raise UserError(f"jacobi_branches={self.jacobi_branches} verifies a fixed window's drafts on several rows: "
                            "give a window (jacobi=N, --jacobi N)")
        if self.jacobi_sampler is None:
            object.__setattr__(self, "jacobi_sampler", "gumbel" if self.jacobi == "auto" or branched else "mcsjd")
        if self.jacobi_sampler not in JACOBI_SAMPLERS:
            raise UserError(f"jacobi_sampler must be one of {', '.join(JACOBI_SAMPLERS)}, got {self.jacobi_sampler!r}")
        if isinstance(self.size, str):
            object.__setattr__(self, "size", parse_size(self.size))
        elif self.size is not None:
            if not isinstance(self.size, (tuple, list)) or len(self.size) != 2:
                raise UserError(f"size must be (width, height) or 'WxH', got {self.size!r}")
            object.__setattr__(self, "size", (_count("width", self.size[0], 1), _count("height", self.size[1], 1)))
        if isinstance(self.region, str):
            object.__setattr__(self, "region", parse_region(self.region))
        elif self.region is not None:
            if not isinstance(self.region, (tuple, list)) or len(self.region) != 4:
                raise UserError(f"region must be (x0, y0, x1, y1) or 'x0,y0,x1,y1', got {self.region!r}")
            object.__setattr__(self, "region", tuple(_count("region", v, 0) for v in self.region))
        if isinstance(self.outpaint, str):
            object.__setattr__(self, "outpaint", parse_outpaint(self.outpaint))
        elif self.outpaint is not None:
            if not isinstance(self.outpaint, dict):
                raise UserError(f"outpaint must be {{side: pixels}} or 'right=128,...', got {self.outpaint!r}")
            object.__setattr__(self, "outpaint", parse_outpaint(",".join(f"{k}={v}" for k, v in self.outpaint.items())))
        if not 0 <= _finite("overlap", self.overlap) < 1:
            raise UserError(f"overlap must be in [0, 1) of the window side, got {self.overlap}")
        if self.image is None and (self.mask is not None or self.region is not None or self.outpaint):
            raise UserError("a mask, a region or an outpainting needs a source image")
        if sum(x is not None for x in (self.mask, self.region, self.outpaint)) > 1:
            raise UserError("give one of a mask, a region or an outpainting, not several")

    @property
    def conditioned(self) -> bool:
        """Whether the request decodes a canvas (a source image, or another size than native)."""
        return self.image is not None or self.size is not None


# A message's content: plain text, or parts in order where each part is text (a str) or an
# image (a PIL image, a pathlib.Path or encoded bytes; a str is always text here). Images go
# exactly where they stand in the text.
ContentPart = str | ImageInput


@dataclass(frozen=True)
class Message:
    role: Literal["user", "assistant", "system"]
    content: str | Sequence[ContentPart] = ""

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant", "system"):
            raise UserError(f"message role must be user, assistant or system, got {self.role!r}")
        if not isinstance(self.content, (str, list, tuple)):
            raise UserError(f"message content must be a string or a list of parts, got {type(self.content).__name__}")
        for part in self.parts:
            if isinstance(part, str):
                check_text("a message", part)

    @property
    def parts(self) -> list[ContentPart]:
        return [self.content] if isinstance(self.content, str) else list(self.content)

    @property
    def images(self) -> list[ImageInput]:
        return [p for p in self.parts if not isinstance(p, str)]


@dataclass(frozen=True)
class ChatRequest:
    """Answer the last user message of a conversation.

    `max_new_tokens` and `sampling` left None take the model's defaults (its
    generation_config.json; without one: greedy, and what the context leaves up to 512 tokens).
    Generation ends at EOS (unless `stop_at_eos` is False), at any of the `stop` strings (not
    included in the text), or after `max_new_tokens`.
    """

    messages: Sequence[Message]
    max_new_tokens: int | None = None
    sampling: SamplingParams | None = None
    seed: int | None = 0
    stop_at_eos: bool = True
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise UserError("a chat request needs at least one message")
        for m in self.messages:
            if not isinstance(m, Message):
                raise UserError(f"messages must be openjanus.Message objects, got {type(m).__name__}")
        if self.max_new_tokens is not None:
            _count("max_new_tokens", self.max_new_tokens, 1)
        if self.sampling is not None and not isinstance(self.sampling, SamplingParams):
            raise UserError(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        check_seed(self.seed)
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError("stop must be a list of non-empty strings")
        for text in self.stop:
            check_text("a stop string", text)
        if self.system_prompt is not None:
            check_text("the system prompt", self.system_prompt)

    @classmethod
    def ask(cls, question: str, images: Sequence[ImageInput] = (), **kwargs) -> ChatRequest:
        """One user turn: the images first, then the question (the official layout). Here each
        image may also be a path string."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            raise UserError("images must be a list (of paths, bytes or PIL images)")
        parts: list[ContentPart] = []
        for im in images:
            if isinstance(im, str):
                if not im:
                    raise UserError("an image path is empty")
                im = Path(im)
            parts.append(im)
        if not isinstance(question, str):
            raise UserError(f"the question must be a string, got {type(question).__name__}")
        return cls([Message("user", [*parts, question])], **kwargs)

    @property
    def images(self) -> list[ImageInput]:
        return [im for m in self.messages for im in m.images]


@dataclass
class Cost:
    """What a request cost: wall-clock from submission, time waiting in the queue, and the
    model forward passes it took part in (a prefill counts one), and the prompt positions whose
    keys and values came from the prefix cache instead of being computed."""

    seconds: float = 0.0
    queued_seconds: float = 0.0
    forward_passes: int = 0
    cached_tokens: int = 0


@dataclass
class ImageResult:
    request: ImageRequest
    images: list[Image.Image]
    tokens: Tensor  # [n, rows * columns] int64 image tokens, raster order, on the CPU (native: num_gen_tokens)
    seed: int  # the request's seed (drawn at random when the request left it None)
    # Each image's own seed where images draw from streams of their own (seed_per_image, Jacobi,
    # canvases): ImageRequest(prompt, n=1, seed=seeds[i], ...) gives image i alone. None where
    # the n images shared the request's stream (the default, the official sampler's way).
    seeds: list[int] | None
    prompt_tokens: int  # tokens of the prompt (as the conditional row of each image holds it)
    cost: Cost = field(default_factory=Cost)
    grid: tuple[int, int] | None = None  # (rows, columns) of `tokens` when not the native square

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images."""
        return self.images[0].size if self.images else (0, 0)


@dataclass
class ChatResult:
    request: ChatRequest
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]
    seed: int
    cost: Cost = field(default_factory=Cost)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class TextDelta:
    """New text of a chat request (may be empty while a multi-byte character is incomplete)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class ImageProgress:
    """`steps` of `total` image tokens are sampled for every image of the request."""

    steps: int
    total: int
