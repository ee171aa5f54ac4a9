"""Processor tests: tokenizer specials, chat template strings, batching, image preprocessing."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openjanus.config import ConfigError, JanusConfig
from openjanus.processing import (
    BOI_TOKEN,
    BOS_TOKEN,
    DEFAULT_SYSTEM_PROMPT,
    EOI_TOKEN,
    EOS_TOKEN,
    IMAGE_TOKEN,
    PAD_TOKEN,
    ChatRoles,
    ImageLoadError,
    ImageProcessorConfig,
    JanusProcessor,
    JanusTokenizer,
    SpecialTokens,
    ensure_rgb,
    format_conversation,
    format_t2i_prompt,
    load_image,
    preprocess_gen_image,
    preprocess_und_images,
    save_tokenizer_dir,
    train_tokenizer,
    unconditional_prompt,
)
from openjanus.requests import Message

CORPUS = [
    "A cat sitting on a mat. A dog in the park.",
    "Convert the formula into latex code.",
    "héllo 世界 🦊 what is in this image?",
    "You are a helpful language and vision assistant.",
] * 10
UNICODE = "héllo 世界 🦊 — naïve café"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tokenizer_dir(train_tokenizer(CORPUS, 400), tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir: Path) -> JanusTokenizer:
    return JanusTokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def cfg() -> JanusConfig:
    return JanusConfig.from_name("tiny")


@pytest.fixture(scope="module")
def proc(tok_dir: Path, cfg: JanusConfig) -> JanusProcessor:
    return JanusProcessor.from_dir(tok_dir, cfg)


def rand_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------- tokenizer


def test_special_ids_resolved_by_string(tok: JanusTokenizer) -> None:
    raw = tok.tokenizer
    for token, idx in [
        (BOS_TOKEN, tok.bos_id), (EOS_TOKEN, tok.eos_id), (PAD_TOKEN, tok.pad_id),
        (IMAGE_TOKEN, tok.image_id), (BOI_TOKEN, tok.boi_id), (EOI_TOKEN, tok.eoi_id),
    ]:
        assert raw.token_to_id(token) == idx
    for role in ("<|User|>", "<|Assistant|>"):
        assert len(raw.encode(role, add_special_tokens=False).ids) == 1
    assert len({tok.bos_id, tok.eos_id, tok.pad_id, tok.image_id, tok.boi_id, tok.eoi_id}) == 6


def test_bos_prepended_once(tok: JanusTokenizer) -> None:
    # The trained tokenizer's own post-processor adds BOS too; encode must not double it.
    assert tok.tokenizer.encode("A cat.").ids[0] == tok.bos_id
    ids = tok.encode("A cat.")
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    assert tok.encode("A cat.", bos=False) == ids[1:]


def test_missing_required_token_is_named() -> None:
    raw = train_tokenizer(CORPUS, 400)
    with pytest.raises(ConfigError, match="no begin-of-image token '<no_such_token>'"):
        JanusTokenizer(raw, SpecialTokens(boi="<no_such_token>"))


def test_missing_placeholder_is_added_without_touching_caller() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.add_special_tokens([BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, BOI_TOKEN, EOI_TOKEN])
    before = raw.get_vocab_size(with_added_tokens=True)
    jt = JanusTokenizer(raw)
    assert jt.image_id == before  # next free id, like add_special_tokens in the official processor
    assert raw.token_to_id(IMAGE_TOKEN) is None


def test_from_dir_reads_added_token_dicts(tok_dir: Path, tmp_path: Path) -> None:
    # Hugging Face writes special tokens either as strings or as AddedToken dicts.
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"__type": "AddedToken", "content": EOS_TOKEN}}), encoding="utf-8"
    )
    jt = JanusTokenizer.from_dir(tmp_path)
    assert jt.bos_id == jt.token_to_id(EOS_TOKEN) and jt.eos_id == jt.token_to_id(EOS_TOKEN)


def test_tokenizer_dir_files(tok_dir: Path) -> None:
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    smap = json.loads((tok_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert cfg["bos_token"] == smap["bos_token"] == BOS_TOKEN
    assert cfg["eos_token"] == smap["eos_token"] == EOS_TOKEN


@pytest.mark.parametrize("vocab", [264, 400])  # 264: bytes only, so characters span several ids
def test_decode_and_stream_round_trip(vocab: int) -> None:
    jt = JanusTokenizer(train_tokenizer(CORPUS, vocab))
    ids = jt.encode(UNICODE) + [jt.eos_id]
    assert jt.decode(ids) == UNICODE
    assert jt.decode(ids, skip_special=False) == BOS_TOKEN + UNICODE + EOS_TOKEN
    stream = jt.stream_decoder()
    pieces = [stream.put(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == UNICODE == stream.text
    assert all("\ufffd" not in p for p in pieces)
    if vocab == 264:
        assert any(p == "" for p in pieces[2:])  # a partial character was held back


def test_stream_flush_emits_incomplete_tail() -> None:
    jt = JanusTokenizer(train_tokenizer(CORPUS, 264))
    fox = jt.encode("🦊", bos=False)
    stream = jt.stream_decoder()
    assert [stream.put(i) for i in fox[:2]] == ["", ""]
    assert stream.flush() == "\ufffd"


# ----------------------------------------------------------------------------- template

UND_EXACT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
    "\n\n<|User|>: <image_placeholder>\nConvert the formula into latex code.\n\n<|Assistant|>:"
)


def test_template_understanding_exact() -> None:
    msgs = [
        {"role": "<|User|>", "content": "<image_placeholder>\nConvert the formula into latex code."},
        {"role": "<|Assistant|>", "content": ""},
    ]
    assert format_conversation(msgs) == UND_EXACT
    generic = [{"role": "user", "content": msgs[0]["content"]}, {"role": "assistant", "content": ""}]
    assert format_conversation(generic, DEFAULT_SYSTEM_PROMPT, "pro") == UND_EXACT


def test_template_generation_exact() -> None:
    msgs = [{"role": "<|User|>", "content": "A cat."}, {"role": "<|Assistant|>", "content": ""}]
    assert format_conversation(msgs, system_prompt="") == "<|User|>: A cat.\n\n<|Assistant|>:"
    assert format_t2i_prompt("A cat.") == "<|User|>: A cat.\n\n<|Assistant|>:<begin_of_image>"
    assert format_t2i_prompt("  A cat. ", roles="legacy") == "User: A cat.\n\nAssistant:<begin_of_image>"


def test_template_multi_turn_exact() -> None:
    msgs = [
        {"role": "user", "content": " Q1 "},
        {"role": "assistant", "content": "A1\n"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": ""},
    ]
    expected = "<|User|>: Q1\n\n<|Assistant|>: A1" + EOS_TOKEN + "<|User|>: Q2\n\n<|Assistant|>:"
    assert format_conversation(msgs, system_prompt="") == expected
    legacy = "User: Q1\n\nAssistant: A1" + EOS_TOKEN + "User: Q2\n\nAssistant:"
    assert format_conversation(msgs, system_prompt="", roles=ChatRoles.preset("legacy")) == legacy
    # Quirk kept: a non-empty final assistant turn ends with EOS.
    assert format_conversation(msgs[:2], system_prompt="").endswith("A1" + EOS_TOKEN)


# ----------------------------------------------------------------------------- processor


def test_placeholder_expansion(proc: JanusProcessor, cfg: JanusConfig) -> None:
    tok, n = proc.tokenizer, cfg.num_und_tokens
    msgs = [Message("user", [rand_image(20, 10), "A", rand_image(5, 9), "B"])]
    s = proc.encode_chat(msgs)
    assert "<image_placeholder>\nA<image_placeholder>\nB" in s.prompt
    plain = tok.encode(s.prompt)
    assert len(s.input_ids) == len(plain) + 2 * (n + 1)
    assert s.input_ids.count(tok.image_id) == 2 * n
    assert s.input_ids.count(tok.boi_id) == s.input_ids.count(tok.eoi_id) == 2
    first = s.input_ids.index(tok.boi_id)
    assert s.input_ids[first + 1 : first + 1 + n] == [tok.image_id] * n
    assert s.input_ids[first + 1 + n] == tok.eoi_id
    assert s.image_mask == [t == tok.image_id for t in s.input_ids]
    assert s.pixel_values.shape == (2, 3, cfg.vision.image_size, cfg.vision.image_size)


def test_inline_images_get_placeholders(proc: JanusProcessor) -> None:
    msgs = [Message("user", [rand_image(8, 8), rand_image(9, 4), "What is this?"])]
    s = proc.encode_chat(msgs)
    assert "<|User|>: <image_placeholder>\n<image_placeholder>\nWhat is this?" in s.prompt
    assert s.num_images == 2


def test_placeholder_count_mismatch(proc: JanusProcessor) -> None:
    # A literal placeholder in the text next to an image part: 2 placeholders for 1 image.
    msgs = [Message("user", [rand_image(4, 4), "<image_placeholder> hi"])]
    with pytest.raises(ValueError, match="2 image placeholders but 1 images"):
        proc.encode_chat(msgs)
    with pytest.raises(ValueError, match="longer than max_len 5"):
        proc.encode_chat([Message("user", [rand_image(4, 4), "hi"])], max_len=5)
    with pytest.raises(ValueError, match="last message must be the user's"):
        proc.encode_chat([Message("user", "hi"), Message("assistant", "hello")])


def test_t2i_encoding(proc: JanusProcessor) -> None:
    tok = proc.tokenizer
    assert tok.encode(proc.t2i_prompt("A cat.")) == tok.encode("<|User|>: A cat.\n\n<|Assistant|>:<begin_of_image>")
    row = tok.encode(proc.t2i_prompt("A dog sitting in the park."))
    assert row[-1] == tok.boi_id
    # The unconditional row is exactly the official tokens[i, 1:-1] = pad.
    official = [row[0]] + [tok.pad_id] * (len(row) - 2) + [row[-1]]
    assert unconditional_prompt(row, tok.pad_id) == official


def test_from_dir_validation(tok_dir: Path, tmp_path: Path) -> None:
    small_vocab = JanusConfig.from_name("tiny", **{"llm.vocab_size": 300})
    with pytest.raises(ConfigError, match=r"has \d+ ids but the model vocab is 300"):
        JanusProcessor.from_dir(tok_dir, small_vocab)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_size": 384}))
    with pytest.raises(ConfigError, match="image_size 384 but the vision encoder takes 32"):
        ImageProcessorConfig.from_dir(tmp_path, 32)


# ----------------------------------------------------------------------------- images


def reference_und(img: Image.Image, size: int, mean, std, normalize: bool, min_size: int = 14) -> np.ndarray:
    """SPEC section 4 written out plainly, with numpy padding instead of PIL paste."""
    w, h = img.size
    m = max(w, h)
    th, tw = max(int(h / m * size), min_size), max(int(w / m * size), min_size)
    small = np.asarray(img.resize((tw, th), Image.BICUBIC))
    side = max(th, tw)
    bg = [int(x * 255) for x in mean] if mean is not None else [127, 127, 127]
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = bg
    top, left = (side - th) // 2, (side - tw) // 2
    canvas[top : top + th, left : left + tw] = small
    x = torch.from_numpy(canvas).permute(2, 0, 1).double().mul(1 / 255).float()
    if normalize:
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        x = (x - mean_t[:, None, None]) / std_t[:, None, None]
    return x.numpy()


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1000, 10), (100, 50), (1, 1), (384, 384)])
@pytest.mark.parametrize("normalize", [True, False])
def test_und_preprocess_exact(size: tuple[int, int], normalize: bool) -> None:
    # Exact equality holds because both paths run the same deterministic integer PIL resampler,
    # the same float64 -> float32 rescale and float32 subtract/divide, each IEEE correctly rounded.
    cfg = ImageProcessorConfig(image_size=384, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                               do_normalize=normalize)
    img = rand_image(*size)
    out = preprocess_und_images([img], cfg)
    assert out.shape == (1, 3, 384, 384) and out.dtype == torch.float32
    ref = reference_und(img, 384, cfg.image_mean, cfg.image_std, normalize)
    assert np.abs(out[0].numpy() - ref).max() == 0


def test_und_preprocess_clip_defaults_and_background(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_size": 32}))
    cfg = ImageProcessorConfig.from_dir(tmp_path, 32)
    assert cfg.background_color == (122, 116, 104) and cfg.do_normalize and cfg.min_size == 14
    img = rand_image(100, 20)
    out = preprocess_und_images([img], cfg)[0].numpy()
    assert np.abs(out - reference_und(img, 32, cfg.image_mean, cfg.image_std, True)).max() == 0
    # A 100x20 image becomes a 32x14 strip (min_size) centred on the mean colour.
    raw = preprocess_und_images([img], ImageProcessorConfig(32, do_normalize=False))[0]
    assert (raw[:, :9] * 255).round().eq(127).all() and (raw[:, 23:] * 255).round().eq(127).all()
    assert not (raw[:, 9:23] * 255).round().eq(127).all()
    assert ImageProcessorConfig.from_dir(tmp_path / "none", 32) == ImageProcessorConfig(32)
    assert ImageProcessorConfig(32, image_mean=None, image_std=None, do_normalize=False).background_color == (127,) * 3
    assert preprocess_und_images([], cfg).shape == (0, 3, 32, 32)


def test_gen_preprocess() -> None:
    img = rand_image(60, 40)
    x = preprocess_gen_image(img, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    ref = np.asarray(img.resize((48, 32), Image.BICUBIC))[:, 8:40]
    assert torch.equal(x, torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 127.5 - 1)
    assert preprocess_gen_image(rand_image(1, 1), 8).shape == (3, 8, 8)


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG ([H, W] grey or [H, W, 3] colour) written by hand so the bit depth is certain."""
    h, w = values.shape[:2]
    color = values.ndim == 3
    rows = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if color else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_load_image_modes(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (3, 2), (200, 10, 20, 0))
    pal = Image.new("P", (3, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    cases = {
        "L": (Image.new("L", (3, 2), 77), (77, 77, 77)),
        "LA": (Image.new("LA", (3, 2), (77, 0)), (77, 77, 77)),
        "P": (pal, (255, 0, 0)),  # transparency ignored, like .convert("RGB")
        "RGBA": (rgba, (200, 10, 20)),  # alpha dropped, not composited
        "1": (Image.new("1", (3, 2), 1), (255, 255, 255)),
    }
    for mode, (img, rgb) in cases.items():
        out = load_image(encoded(img))
        assert out.mode == "RGB" and out.getpixel((0, 0)) == rgb, mode
    cmyk = load_image(encoded(Image.new("CMYK", (2, 2), (0, 255, 0, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.size == (2, 2)
    # 16-bit grey: scaled (65535 -> 255, 32896 -> 128), not clipped to white.
    grey = load_image(png16(np.array([[65535, 32896, 0]])))
    assert [grey.getpixel((i, 0)) for i in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]
    colour = load_image(png16(np.full((1, 2, 3), [65535, 2570, 0])))
    assert colour.getpixel((0, 0)) == (255, 10, 0)
    wide = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))
    assert wide.mode == "I" and ensure_rgb(wide).getpixel((2, 0)) == (255, 255, 255)
    assert ensure_rgb(wide).getpixel((1, 0)) == (4, 4, 4)
    assert ensure_rgb(Image.new("I;16", (1, 1), 514)).getpixel((0, 0)) == (2, 2, 2)
    tiny_path = tmp_path / "one.png"
    rand_image(1, 1).save(tiny_path)
    assert load_image(tiny_path).size == (1, 1)
    rgb = Image.new("RGB", (2, 2))
    assert ensure_rgb(rgb) is rgb


def test_load_image_errors(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(encoded(rand_image(64, 64))[:200])
    for path in (bad, truncated, tmp_path / "missing.jpg"):
        with pytest.raises(ImageLoadError, match=path.name) as err:
            load_image(path)
        assert "\n" not in str(err.value)
    with pytest.raises(ImageLoadError, match="bytes"):
        load_image(b"\x89PNG garbage")
    assert issubclass(ImageLoadError, ValueError)
