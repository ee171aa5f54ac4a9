"""Shared fixtures: a tiny random Janus written as an official-format checkpoint folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from openjanus.checkpoints import save_model
from openjanus.config import JanusConfig
from openjanus.model.janus import Janus
from openjanus.processing import save_tokenizer_dir, train_tokenizer

# Facts about the official releases (key lists, config.json files), shipped as test data.
REFERENCE = Path(__file__).resolve().parent / "data" / "reference"


def official_key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """`tests/data/reference/<name>.keys.txt` (lines `key (d1, d2,)`) as {key: shape}."""
    path = REFERENCE / f"{name}.keys.txt"
    keys = {}
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"(\S+) \(([\d, ]*)\)", line.strip())
        assert m, f"unparsed line {line!r}"
        keys[m[1]] = tuple(int(d) for d in m[2].replace(" ", "").split(",") if d)
    return keys


CORPUS = [
    "a red circle above a blue square. what is in this picture? a photo of two green stars.",
    "how many triangles are there? there are three. is there a yellow star? yes. no.",
    "the cat sat on the mat. héllo 世界 🦊. describe the image in detail.",
]


def build_tiny(seed: int = 0, **overrides) -> Janus:
    torch.manual_seed(seed)
    model = Janus(JanusConfig.from_name("tiny", **overrides))
    # Random init leaves some tensors at exact constants (norm weights = 1, biases = 0); perturb
    # everything so a swapped or skipped tensor changes the outputs and tests can catch it.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def write_tiny_checkpoint(folder: Path, seed: int = 0, tokenizer_vocab: int = 400) -> Path:
    model = build_tiny(seed)
    save_model(model, folder, layout="official")
    save_tokenizer_dir(train_tokenizer(CORPUS * 8, vocab_size=tokenizer_vocab), folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_size": model.cfg.vision.image_size, "min_size": 14, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255, "do_normalize": True}))
    (folder / "processor_config.json").write_text(json.dumps({
        "image_tag": "<image_placeholder>", "num_image_tokens": model.cfg.num_und_tokens,
        "add_special_token": False, "sft_format": "deepseek", "mask_prompt": True, "ignore_id": -100}))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-official"))


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_checkpoint):
    from openjanus.inference.pipeline import JanusPipeline

    return JanusPipeline.load(str(tiny_checkpoint), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def proc(tiny_checkpoint):
    """The tiny checkpoint's processor (training-data tests)."""
    from openjanus.processing import JanusProcessor

    return JanusProcessor.from_dir(tiny_checkpoint, JanusConfig.from_name("tiny"))


@pytest.fixture
def one_thread():
    """Tiny-model numerics on one thread: on a shared, busy CPU the thread pool costs more than
    it gives."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
