"""What a model folder says about using it, beside its weights: default generation settings
(`generation_config.json`, read as transformers reads it) and its own example prompts,
questions and vocabulary (`openjanus.json`).

    card = ModelCard.read("path/to/model")
    card.defaults.chat.sampling, card.defaults.image.guidance
    card.examples.prompts[0]            # "a photo of a red circle left of a blue square"
    card.unknown_words("a red fox")     # ["fox"]: words the model never saw in training

Every caller (CLI, Python API, server, web page) takes its defaults from the card, so one
request at default settings gives one answer everywhere. A folder without these files gets
the project's defaults (greedy answers; images at temperature 1, guidance 5) and no examples.

`generation_config.json` (transformers' keys; vLLM reads the same ones):

    {"do_sample": false, "max_new_tokens": 24, "top_p": 1.0, "top_k": 0, "temperature": 1.0,
     "guidance_scale": 5.0,
     "image": {"temperature": 1.0, "top_p": 1.0, "top_k": 0}}

`do_sample` false means greedy answers, whatever `temperature` says (as in transformers);
`guidance_scale` is classifier-free guidance for images (transformers' Janus reads it there);
`image` holds the sampling settings of image generation, which differ from the answers'.

`openjanus.json`:

    {"examples": {"prompts": [...], "questions": [...]}, "vocabulary": [...]}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from openjanus.errors import UserError
from openjanus.requests import ChatRequest, ImageRequest, SamplingParams

__all__ = ["ModelCard", "GenerationDefaults", "ChatDefaults", "ImageDefaults", "Examples", "GENERIC_EXAMPLES",
           "fingerprint", "demo_card", "DEMO_MODEL_DIR"]

GENERATION_CONFIG = "generation_config.json"
CARD_FILE = "openjanus.json"

# Words as the vocabulary check splits them: lower-cased letters and digits (with an apostrophe
# inside, as in "it's"); punctuation and case never make a word unknown.
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class ChatDefaults:
    """Answers: sampling, and the length cap (None: what the context leaves, up to 512)."""

    sampling: SamplingParams = SamplingParams(temperature=0.0)
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class ImageDefaults:
    """Images: sampling and classifier-free guidance (the official demo's settings)."""

    sampling: SamplingParams = SamplingParams(temperature=1.0)
    guidance: float = 5.0


@dataclass(frozen=True)
class GenerationDefaults:
    chat: ChatDefaults = ChatDefaults()
    image: ImageDefaults = ImageDefaults()

    def chat_sampling(self, temperature: float | None = None, top_k: int | None = None,
                      top_p: float | None = None) -> SamplingParams:
        """The answers' sampling with the given fields replaced (None keeps the default)."""
        return _merge(self.chat.sampling, temperature, top_k, top_p)

    def image_sampling(self, temperature: float | None = None, top_k: int | None = None,
                       top_p: float | None = None) -> SamplingParams:
        """The images' sampling with the given fields replaced (None keeps the default)."""
        return _merge(self.image.sampling, temperature, top_k, top_p)

    def apply(self, request: ImageRequest | ChatRequest) -> ImageRequest | ChatRequest:
        """`request` with the settings it left None set to these defaults (the engine does this
        at submission, so every caller gets the model's defaults). A chat's max_new_tokens stays
        None here: the engine caps the default by what the context leaves."""
        if isinstance(request, ImageRequest):
            return replace(request, guidance=self.image.guidance if request.guidance is None else request.guidance,
                           sampling=self.image.sampling if request.sampling is None else request.sampling)
        if isinstance(request, ChatRequest) and request.sampling is None:
            return replace(request, sampling=self.chat.sampling)
        return request

    def to_dict(self) -> dict[str, Any]:
        """What the server's /v1/models and the web page show (the page fills its controls with it)."""
        def sampling(s: SamplingParams) -> dict[str, Any]:
            return {"temperature": s.temperature, "top_k": s.top_k or 0, "top_p": 1.0 if s.top_p is None else s.top_p}

        return {"chat": {**sampling(self.chat.sampling), "max_tokens": self.chat.max_new_tokens},
                "image": {**sampling(self.image.sampling), "guidance": self.image.guidance}}


def _merge(base: SamplingParams, temperature: float | None, top_k: int | None, top_p: float | None) -> SamplingParams:
    return SamplingParams(temperature=base.temperature if temperature is None else temperature,
                          top_k=base.top_k if top_k is None else top_k,
                          top_p=base.top_p if top_p is None else top_p)


@dataclass(frozen=True)
class Examples:
    prompts: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()


# Where a model declares no examples (real Janus-Pro weights know open-domain English).
GENERIC_EXAMPLES = Examples(prompts=("a red fox in the snow, watercolor",),
                            questions=("What is in this picture?",))


@dataclass(frozen=True)
class ModelCard:
    defaults: GenerationDefaults = GenerationDefaults()
    examples: Examples = Examples()
    vocabulary: frozenset[str] | None = None  # None: not declared (no check)
    source: dict[str, str] = field(default_factory=dict)  # file each part came from, for messages

    @classmethod
    def read(cls, folder: str | Path | None) -> ModelCard:
        """The card of a model folder (None: a model without a folder, e.g. a preset)."""
        if folder is None:
            return cls()
        folder = Path(folder)
        gen_path, card_path = folder / GENERATION_CONFIG, folder / CARD_FILE
        defaults = _read_generation_config(gen_path) if gen_path.is_file() else GenerationDefaults()
        examples, vocabulary = Examples(), None
        if card_path.is_file():
            examples, vocabulary = _read_card(card_path)
        return cls(defaults, examples, vocabulary,
                   {k: str(p) for k, p in (("defaults", gen_path), ("examples", card_path)) if p.is_file()})

    @property
    def example_prompts(self) -> tuple[str, ...]:
        """The model's own example prompts, or generic ones where it declares none."""
        return self.examples.prompts or GENERIC_EXAMPLES.prompts

    @property
    def example_questions(self) -> tuple[str, ...]:
        return self.examples.questions or GENERIC_EXAMPLES.questions

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` outside the declared vocabulary, in order, each once ([] when the
        model declares none)."""
        if self.vocabulary is None:
            return []
        seen: list[str] = []
        for w in _WORD.findall(text.lower()):
            if w not in self.vocabulary and w not in seen:
                seen.append(w)
        return seen

    def notice(self, text: str, kind: Literal["prompt", "question"] = "prompt") -> str | None:
        """One line naming the words of `text` the model never saw, with an example of `kind`
        that it knows; None when every word is known. A notice, not a refusal: the request runs."""
        unknown = self.unknown_words(text)
        if not unknown:
            return None
        quoted = ", ".join(repr(w) for w in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        mine = self.examples.prompts if kind == "prompt" else self.examples.questions
        example = (mine or self.examples.prompts or self.examples.questions or ("",))[0]
        hint = f"; it knows phrases like {example!r}" if example else ""
        word = "word" if len(unknown) == 1 else "words"
        return f"note: this model never saw the {word} {quoted} in training, so expect noise{hint}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _sampling(data: dict[str, Any], path: Path, where: str, greedy: bool) -> SamplingParams:
    def get(key: str, kinds: tuple[type, ...]) -> Any:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise UserError(f"{path}: {where}{key} must be a number, got {value!r}")
        return value

    temperature, top_k, top_p = get("temperature", (int, float)), get("top_k", (int,)), get("top_p", (int, float))
    try:
        return SamplingParams(temperature=0.0 if greedy else float(1.0 if temperature is None else temperature),
                              top_k=top_k or None, top_p=None if top_p in (None, 1, 1.0) else float(top_p))
    except UserError as e:
        raise UserError(f"{path}: {where}{e}") from None


def _read_generation_config(path: Path) -> GenerationDefaults:
    data = _read_json(path)
    # transformers: sampling only with do_sample true (its default is false, i.e. greedy).
    chat = _sampling(data, path, "", greedy=not data.get("do_sample", False))
    max_new = data.get("max_new_tokens")
    if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
        raise UserError(f"{path}: max_new_tokens must be a positive integer, got {max_new!r}")
    image = data.get("image", {})
    if not isinstance(image, dict):
        raise UserError(f"{path}: image must be an object of sampling settings, got {image!r}")
    guidance = data.get("guidance_scale", ImageDefaults.guidance)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < float("inf"):
        raise UserError(f"{path}: guidance_scale must be a number >= 0, got {guidance!r}")
    return GenerationDefaults(ChatDefaults(chat, max_new),
                              ImageDefaults(_sampling(image, path, "image.", greedy=False), float(guidance)))


def _strings(value: Any, path: Path, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
        raise UserError(f"{path}: {key} must be a list of non-empty strings")
    return tuple(value)


def _read_card(path: Path) -> tuple[Examples, frozenset[str] | None]:
    data = _read_json(path)
    ex = data.get("examples", {})
    if not isinstance(ex, dict):
        raise UserError(f"{path}: examples must be an object with prompts and questions")
    examples = Examples(_strings(ex.get("prompts"), path, "examples.prompts"),
                        _strings(ex.get("questions"), path, "examples.questions"))
    vocab = data.get("vocabulary")
    vocabulary = None if vocab is None else frozenset(w.lower() for w in _strings(vocab, path, "vocabulary"))
    return examples, vocabulary


# The shipped demo model (see the README); the pipeline loads it when no model is named.
DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "janus-shapes"


@lru_cache(maxsize=1)
def demo_card() -> ModelCard:
    """The demo model's card (--help quotes its defaults; reading it costs two small files)."""
    return ModelCard.read(DEMO_MODEL_DIR) if DEMO_MODEL_DIR.is_dir() else ModelCard()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_SAMPLE = 1 << 20  # bytes read at each end of a weight file


def fingerprint(folder: str | Path | None, weights: str, name: str = "") -> str:
    """"fp_" and 12 hex digits naming these weights in this format, as OpenAI's
    `system_fingerprint` names a backend configuration: a different checkpoint, a different
    dtype or quantization, or another openjanus version gives another one.

    A checkpoint's weight files are identified by their names, sizes and their first and last
    MiB (reading every byte of a 14 GB checkpoint at each start would take minutes); a model
    without a folder (a preset's random weights) by its name.
    """
    from openjanus import __version__

    h = hashlib.sha256(f"openjanus {__version__}|{weights}|{name}".encode())
    if folder is not None:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix not in _WEIGHT_SUFFIXES and path.name != "config.json":
                continue
            size = path.stat().st_size
            h.update(f"|{path.name}:{size}".encode())
            with path.open("rb") as f:
                h.update(f.read(_SAMPLE))
                if size > 2 * _SAMPLE:
                    f.seek(size - _SAMPLE)
                    h.update(f.read(_SAMPLE))
    return "fp_" + h.hexdigest()[:12]
