"""The edge of the model: tokenizer, chat template and batching (images: `openjanus.images`).

Everything here reproduces the official Janus processor (SPEC sections 3 and 5) exactly,
because reference outputs of the official code are compared against ours: the "deepseek" chat
template string for string, BOS via the tokenizer, each `<image_placeholder>` expanded to
BOI + N placeholders + EOI, left padding. Special-token ids are always looked up from the
tokenizer by their strings, never hard-coded.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .config import ConfigError, JanusConfig
from .images import (
    CLIP_MEAN,
    CLIP_STD,
    ImageInput,
    ImageLoadError,
    ImageProcessorConfig,
    ensure_rgb,
    load_image,
    open_image,
    preprocess_gen_image,
    preprocess_und_images,
)
from .requests import Message

__all__ = [
    "standin_processor",
    "BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "IMAGE_TOKEN", "BOI_TOKEN", "EOI_TOKEN",
    "DEFAULT_SYSTEM_PROMPT", "CLIP_MEAN", "CLIP_STD",
    "SpecialTokens", "JanusTokenizer", "StreamDecoder", "train_tokenizer", "save_tokenizer_dir",
    # re-exported from openjanus.images so the whole edge of the model imports from one place
    "ImageInput", "ImageLoadError", "ImageProcessorConfig", "load_image", "ensure_rgb", "open_image",
    "preprocess_und_images", "preprocess_gen_image",
    "ChatRoles", "ROLE_PRESETS", "Turn", "format_conversation", "format_t2i_prompt", "unconditional_prompt",
    "expand_image_placeholders",
    "ChatSample", "JanusProcessor",
]

# Full-width vertical bars (U+FF5C) and U+2581 lower blocks, exactly as in the DeepSeek vocabulary.
BOS_TOKEN = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
EOS_TOKEN = "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD_TOKEN = "<\uff5c\u2581pad\u2581\uff5c>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"

# The official VLChatProcessor's fixed system prompt (data, reproduced verbatim).
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using "
    "natural language."
)

# transformers' `clean_up_tokenization_spaces` rewrites, applied only when a tokenizer_config asks.
_CLEANUP_REWRITES = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


# ----------------------------------------------------------------------------- tokenizer


@dataclass(frozen=True)
class SpecialTokens:
    """The strings the processor resolves to ids; overridable from a checkpoint's json files."""

    bos: str = BOS_TOKEN
    eos: str = EOS_TOKEN
    pad: str = PAD_TOKEN
    image: str = IMAGE_TOKEN
    boi: str = BOI_TOKEN
    eoi: str = EOI_TOKEN


def _token_string(value: Any) -> str | None:
    # transformers serialises special tokens either as plain strings or as AddedToken dicts.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(f"cannot parse {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


class JanusTokenizer:
    """A `tokenizers.Tokenizer` plus the Janus special ids, all resolved by string."""

    def __init__(
        self, tokenizer: Tokenizer, specials: SpecialTokens = SpecialTokens(), clean_up_spaces: bool = False
    ) -> None:
        if tokenizer.token_to_id(specials.image) is None:
            # The official processor adds a missing placeholder as a special token (next free id).
            # Work on a copy so the caller's tokenizer is left untouched.
            tokenizer = Tokenizer.from_str(tokenizer.to_str())
            tokenizer.add_special_tokens([AddedToken(specials.image, special=True, normalized=False)])
        self.tokenizer = tokenizer
        self.specials = specials
        self.clean_up_spaces = clean_up_spaces
        self.bos_id = self._require(specials.bos, "bos")
        self.eos_id = self._require(specials.eos, "eos")
        self.pad_id = self._require(specials.pad, "pad")
        self.image_id = self._require(specials.image, "image placeholder")
        self.boi_id = self._require(specials.boi, "begin-of-image")
        self.eoi_id = self._require(specials.eoi, "end-of-image")

    def _require(self, token: str, what: str) -> int:
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise ConfigError(f"the tokenizer has no {what} token {token!r}")
        return idx

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> JanusTokenizer:
        """Load `tokenizer.json` from a checkpoint folder.

        The bos/eos strings come from tokenizer_config.json, else special_tokens_map.json, else
        the DeepSeek defaults; the pad, placeholder, BOI and EOI strings from processor_config.json's
        tags (the official processor uses `pad_tag`, not the tokenizer's pad_token), else defaults.
        """
        root = Path(path)
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise ConfigError(f"no tokenizer.json in {root}")
        tok_cfg = _read_json(root / "tokenizer_config.json")
        tok_map = _read_json(root / "special_tokens_map.json")
        proc_cfg = _read_json(root / "processor_config.json")

        def pick(key: str, default: str) -> str:
            for source in (tok_cfg, tok_map):
                s = _token_string(source.get(key))
                if s:
                    return s
            return default

        def tag(key: str, default: str) -> str:
            value = proc_cfg.get(key, default)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{root / 'processor_config.json'}: {key} must be a token string, got {value!r}")
            return value

        specials = SpecialTokens(
            bos=pick("bos_token", BOS_TOKEN),
            eos=pick("eos_token", EOS_TOKEN),
            pad=tag("pad_tag", PAD_TOKEN),
            image=tag("image_tag", IMAGE_TOKEN),
            boi=tag("image_start_tag", BOI_TOKEN),
            eoi=tag("image_end_tag", EOI_TOKEN),
        )
        # LlamaTokenizerFast (the official class) defaults this to False.
        clean_up = bool(tok_cfg.get("clean_up_tokenization_spaces", False))
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # the tokenizers library raises a bare Exception ("EOF while parsing ...")
            raise ConfigError(f"{tok_file}: cannot read the tokenizer ({e})") from None
        return cls(tokenizer, specials, clean_up)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of one token string, or None."""
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids of `text`, with BOS prepended once (the tokenizer's own post-processor is
        bypassed, so this is right whether or not tokenizer.json adds BOS itself)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; special tokens dropped unless `skip_special` is False."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)
        if self.clean_up_spaces:
            for old, new in _CLEANUP_REWRITES:
                text = text.replace(old, new)
        return text

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """A fresh incremental detokenizer over this tokenizer."""
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Incremental detokenizer: `put` ids one at a time, get back only newly completed text.

    A token may end inside a multi-byte UTF-8 character (byte-level BPE); such text decodes to a
    trailing U+FFFD, so it is held back until a later token completes it. Text is decoded over a
    short window starting one emitted chunk back, so decoders that depend on the previous token
    (leading-space handling) see their context. `flush` returns whatever is still held.
    """

    def __init__(self, tokenizer: JanusTokenizer, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids up to here have been emitted
        self.text = ""

    def put(self, token_id: int) -> str:
        """Feed one id; return the text it completes ("" if nothing is complete yet)."""
        self._ids.append(int(token_id))
        emitted = self._tok.decode(self._ids[self._prefix : self._read], self._skip)
        full = self._tok.decode(self._ids[self._prefix :], self._skip)
        if len(full) <= len(emitted) or full.endswith("\ufffd"):
            return ""
        delta = full[len(emitted) :]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Return held-back text (possibly ending in U+FFFD) at the end of a stream."""
        emitted = self._tok.decode(self._ids[self._prefix : self._read], self._skip)
        full = self._tok.decode(self._ids[self._prefix :], self._skip)
        delta = full[len(emitted) :]
        self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta


_TRAINED_SPECIALS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, "<|User|>", "<|Assistant|>")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a small byte-level BPE tokenizer with the Janus special tokens (for tests and small
    models; no real Janus tokenizer is needed). Its post-processor prepends BOS, like the real one."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    smallest = len(byte_alphabet) + len(_TRAINED_SPECIALS)
    if vocab_size < smallest:
        raise ConfigError(f"vocab_size {vocab_size} is below the byte alphabet plus specials ({smallest})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(_TRAINED_SPECIALS),
        initial_alphabet=byte_alphabet,  # every byte stays encodable, so no text is ever lost
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return tok


def save_tokenizer_dir(tokenizer: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `path`."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(root / "tokenizer.json"))
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizerFast",
        **specials,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
    }
    (root / "tokenizer_config.json").write_text(json.dumps(tok_cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    (root / "special_tokens_map.json").write_text(json.dumps(specials, ensure_ascii=False, indent=2), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------- chat template


@dataclass(frozen=True)
class ChatRoles:
    """The role strings written into the prompt for the generic roles "user" and "assistant"."""

    user: str
    assistant: str

    @classmethod
    def preset(cls, name: str) -> ChatRoles:
        """"pro" (<|User|>/<|Assistant|>, Janus-Pro) or "legacy" (User/Assistant, Janus-1.3B)."""
        if name not in ROLE_PRESETS:
            raise ConfigError(f"unknown role preset {name!r}; choose one of {', '.join(ROLE_PRESETS)}")
        return ROLE_PRESETS[name]

    def resolve(self, role: str) -> str:
        """Map "user"/"assistant" to this preset; any other role string is used verbatim."""
        return {"user": self.user, "assistant": self.assistant}.get(role, role)


ROLE_PRESETS: dict[str, ChatRoles] = {
    "pro": ChatRoles("<|User|>", "<|Assistant|>"),
    "legacy": ChatRoles("User", "Assistant"),
}


class Turn(TypedDict):
    """One turn of the chat template: `role` ("user", "assistant" or a literal role string) and
    its text, with an `<image_placeholder>` wherever an image goes."""

    role: str
    content: str


def _roles(roles: ChatRoles | str) -> ChatRoles:
    return ChatRoles.preset(roles) if isinstance(roles, str) else roles


def format_conversation(
    messages: Sequence[Turn],
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    roles: ChatRoles | str = "pro",
    eos_token: str = EOS_TOKEN,
) -> str:
    """The "deepseek" template: system + "\\n\\n", then per turn i `role: content` followed by
    "\\n\\n" (even i) or the EOS string (odd i), or just `role:` for empty content; contents and
    the result are stripped. A conversation ending in an empty assistant turn asks for a reply."""
    preset = _roles(roles)
    seps = ("\n\n", eos_token)
    out = system_prompt + seps[0] if system_prompt else ""
    for i, msg in enumerate(messages):
        role = preset.resolve(msg["role"])
        content = msg.get("content", "").strip()
        out += f"{role}: {content}{seps[i % 2]}" if content else f"{role}:"
    return out.strip()


def format_t2i_prompt(prompt: str, roles: ChatRoles | str = "pro", boi_token: str = BOI_TOKEN) -> str:
    """Text-to-image prompt: empty system, the user prompt, an empty assistant turn, then BOI."""
    turns: list[Turn] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
    return format_conversation(turns, system_prompt="", roles=roles) + boi_token


def unconditional_prompt(prompt_ids: Sequence[int], pad_id: int) -> list[int]:
    """The CFG-unconditional row of a text-to-image prompt: BOS and the final BOI kept,
    everything between them pad (the official `tokens[i, 1:-1] = pad_id`). The sampler and
    the training sequences both use this one definition."""
    if len(prompt_ids) < 2:
        raise ValueError("a text-to-image prompt needs at least BOS and <begin_of_image>")
    return [prompt_ids[0], *[pad_id] * (len(prompt_ids) - 2), prompt_ids[-1]]


def expand_image_placeholders(
    ids: Sequence[int], tokenizer: JanusTokenizer, num_und_tokens: int, n_images: int
) -> tuple[list[int], list[bool], list[int]]:
    """Each `<image_placeholder>` id -> BOI + placeholder x num_und_tokens + EOI (the official
    expansion; inference and training sequences both use this one definition).

    Returns the expanded ids, the mask of positions the image features fill, and for each
    expanded position the index of the id it came from (-1 for the inserted image tokens).
    """
    n_ph = list(ids).count(tokenizer.image_id)
    if n_ph != n_images:
        raise ValueError(f"the text has {n_ph} image placeholders but {n_images} images were given")
    out: list[int] = []
    mask: list[bool] = []
    source: list[int] = []
    for i, t in enumerate(ids):
        if t == tokenizer.image_id:
            out += [tokenizer.boi_id, *[tokenizer.image_id] * num_und_tokens, tokenizer.eoi_id]
            mask += [False, *[True] * num_und_tokens, False]
            source += [-1] * (num_und_tokens + 2)
        else:
            out.append(t)
            mask.append(False)
            source.append(i)
    return out, mask, source


# ----------------------------------------------------------------------------- processor


@dataclass
class ChatSample:
    """One encoded conversation: ids with images expanded, and its preprocessed images."""

    input_ids: list[int]
    image_mask: list[bool]  # True exactly at the placeholder positions the image features replace
    pixel_values: torch.Tensor  # float32 [n_images, 3, S, S]
    prompt: str = ""

    @property
    def num_images(self) -> int:
        return self.pixel_values.shape[0]


class JanusProcessor:
    """Turns conversations and images into model inputs, and ids back into text."""

    def __init__(
        self,
        tokenizer: JanusTokenizer,
        image_config: ImageProcessorConfig,
        num_und_tokens: int,
        num_gen_tokens: int,
        roles: ChatRoles | str = "pro",
    ) -> None:
        if num_und_tokens < 1 or num_gen_tokens < 1:
            raise ConfigError(f"token counts must be positive: und {num_und_tokens}, gen {num_gen_tokens}")
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.num_und_tokens = num_und_tokens
        self.num_gen_tokens = num_gen_tokens
        self.roles = _roles(roles)

    @classmethod
    def from_dir(
        cls, path: str | os.PathLike[str], config: JanusConfig, roles: ChatRoles | str = "pro"
    ) -> JanusProcessor:
        """Build from a checkpoint folder's tokenizer and processor json files, sized by `config`.

        `roles` is not stored in any file: pass "legacy" for Janus-1.3B.
        """
        root = Path(path)
        tok = JanusTokenizer.from_dir(root)
        proc_cfg = _read_json(root / "processor_config.json")
        if proc_cfg.get("add_special_token", False):
            raise ConfigError(f"{root / 'processor_config.json'}: add_special_token=true is not supported")
        n_file = proc_cfg.get("num_image_tokens", config.num_und_tokens)
        if n_file != config.num_und_tokens:
            raise ConfigError(
                f"processor_config num_image_tokens {n_file} != {config.num_und_tokens} image tokens of the encoder"
            )
        if tok.vocab_size > config.llm.vocab_size:
            # Any id past the embedding table would fail at lookup time; say so at load time.
            raise ConfigError(f"the tokenizer has {tok.vocab_size} ids but the model vocab is {config.llm.vocab_size}")
        image_cfg = ImageProcessorConfig.from_dir(root, config.vision.image_size)
        return cls(tok, image_cfg, config.num_und_tokens, config.num_gen_tokens, roles)

    # -- understanding

    def encode_prompt(
        self, prompt: str, images: Sequence[ImageInput] = (), max_len: int | None = None
    ) -> ChatSample:
        """Encode an already formatted prompt: BOS, then each placeholder id expanded to
        BOI + placeholder x num_und_tokens + EOI. Placeholders must match `images` one to one."""
        expanded, mask, _ = expand_image_placeholders(
            self.tokenizer.encode(prompt), self.tokenizer, self.num_und_tokens, len(images))
        if max_len is not None and len(expanded) > max_len:
            raise ValueError(f"prompt is {len(expanded)} tokens, longer than max_len {max_len}")
        pixels = preprocess_und_images([open_image(im) for im in images], self.image_config)
        return ChatSample(expanded, mask, pixels, prompt)

    def encode_chat(
        self,
        messages: Sequence[Message],
        system_prompt: str | None = None,
        max_len: int | None = None,
    ) -> ChatSample:
        """Format typed `messages` (images inline in their content) with the deepseek template,
        ending with an empty assistant turn, and encode them.

        Each image part becomes "<image_placeholder>\n" where it stands, so an image followed
        by a question gives the official layout. A "system" message, else `system_prompt`,
        else the official default, is the system prompt.
        """
        system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
        turns: list[Turn] = []
        images: list[ImageInput] = []
        placeholder = self.tokenizer.specials.image
        for i, msg in enumerate(messages):
            text = ""
            for part in msg.parts:
                if isinstance(part, str):
                    text += part
                else:
                    text += placeholder + "\n"
                    images.append(part)
            if msg.role == "system":
                if i != 0 or images:
                    raise ValueError("a system message must come first and hold only text")
                system = text
                continue
            turns.append({"role": msg.role, "content": text})
        if not turns or turns[-1]["role"] != "user":
            raise ValueError("the last message must be the user's (the model answers it)")
        turns.append({"role": "assistant", "content": ""})
        prompt = format_conversation(turns, system, self.roles, self.tokenizer.specials.eos)
        return self.encode_prompt(prompt, images, max_len)

    # -- generation

    def t2i_prompt(self, prompt: str) -> str:
        """The text-to-image prompt string for one user prompt (ends with BOI)."""
        return format_t2i_prompt(prompt, self.roles, self.tokenizer.specials.boi)

    # -- text out

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of generated ids."""
        return self.tokenizer.decode(ids, skip_special)

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """A fresh incremental detokenizer for streaming generated ids."""
        return self.tokenizer.stream_decoder(skip_special)


# Text for the stand-in tokenizer of random-weight presets: enough to learn common English merges.
_STANDIN_CORPUS = """a red fox in the snow, watercolor. a photo of a cat sitting on a chair. what is in this
picture? describe the image in detail. there are two blue squares and a green circle. the
triangle is left of the star. how many objects are there? yes no one two three four five.
an astronaut riding a horse on the moon, oil painting, highly detailed, cinematic lighting."""


@functools.lru_cache(maxsize=8)
def _standin_tokenizer(vocab_size: int) -> JanusTokenizer:
    tok = train_tokenizer([_STANDIN_CORPUS] * 4, vocab_size=min(vocab_size, 1024))
    return JanusTokenizer(tok)


def standin_processor(cfg: JanusConfig, roles: str = "pro") -> JanusProcessor:
    """A processor with a small byte-level tokenizer, for random-weight presets (tests, benchmarks)."""
    image_cfg = ImageProcessorConfig(image_size=cfg.vision.image_size, image_mean=(0.5, 0.5, 0.5),
                                     image_std=(0.5, 0.5, 0.5), do_normalize=True)
    return JanusProcessor(_standin_tokenizer(cfg.llm.vocab_size), image_cfg, cfg.num_und_tokens,
                          cfg.num_gen_tokens, roles)
