"""Shared fixtures: a tiny random Janus written as an official-format checkpoint folder, and
transformers' own Janus at the same tiny size saved as a Hugging Face folder."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openjanus.checkpoints import hf, save_model
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


@pytest.fixture
def pipe(tiny_pipeline):
    """The tiny pipeline with an engine of 16 rows, closed after the test."""
    from openjanus.inference.engine import EngineConfig

    engine = tiny_pipeline.start_engine(EngineConfig(rows=16))
    yield tiny_pipeline
    engine.close()


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


# --- transformers' Janus at the tiny size (tests/checkpoints: the HF layout, LoRA through peft) ---

# transformers decodes the vision grid's number of codes, so the tiny preset's VQ (grid 8 at
# 32 px) is shrunk to the SigLIP grid of 4: same architecture, 16 px images out.
TINY_HF: dict[str, Any] = {"vq.image_size": 16}
HF_IMAGE_TOKEN_ID = 7  # any in-vocabulary id: tiny models have no tokenizer of record
HF_SIDECARS = {  # what an HF folder carries beside the weights; the loader must ignore them
    "preprocessor_config.json": {"image_processor_type": "JanusImageProcessor"},
    "processor_config.json": {"processor_class": "JanusProcessor"},
    "tokenizer_config.json": {"tokenizer_class": "LlamaTokenizerFast"},
    "special_tokens_map.json": {},
}


def hf_transformers():
    return pytest.importorskip("transformers")


def hf_tiny_cfg() -> JanusConfig:
    return JanusConfig.from_name("tiny", **TINY_HF)


def hf_config(tr) -> Any:
    """The tiny preset, written with transformers' own config classes."""
    c = hf_tiny_cfg()
    text = tr.LlamaConfig(vocab_size=c.llm.vocab_size, hidden_size=c.llm.dim, intermediate_size=c.llm.ffn_dim,
                          num_hidden_layers=c.llm.n_layers, num_attention_heads=c.llm.n_heads,
                          num_key_value_heads=c.llm.n_kv_heads, max_position_embeddings=c.llm.max_seq_len)
    vision = tr.JanusVisionConfig(hidden_size=c.vision.dim, num_hidden_layers=c.vision.n_layers,
                                  num_attention_heads=c.vision.n_heads, image_size=c.vision.image_size,
                                  patch_size=c.vision.patch_size, mlp_ratio=c.vision.mlp_dim / c.vision.dim,
                                  projection_dim=c.llm.dim, num_image_tokens=c.num_gen_tokens)
    vq = tr.JanusVQVAEConfig(embed_dim=c.vq.codebook_dim, num_embeddings=c.vq.codebook_size,
                             base_channels=c.vq.base_channels, channel_multiplier=list(c.vq.channel_mult),
                             latent_channels=c.vq.z_channels, num_res_blocks=c.vq.num_res_blocks,
                             projection_dim=c.llm.dim, image_token_embed_dim=c.llm.dim)
    return tr.JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                          image_token_id=HF_IMAGE_TOKEN_ID, tie_word_embeddings=False)


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> None:
    """Every tensor random (norm scales near 1): transformers initialises biases to zero and norms
    to one, which would hide a wrong mapping of exactly those tensors."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=g) * 0.05
        is_norm_scale = "norm" in name and name.endswith("weight") and p.ndim == 1
        p.copy_(noise + 1.0 if is_norm_scale else noise)


@torch.no_grad()
def unit_codebook(weight: Tensor) -> None:
    # transformers' VQ *encoder* compares raw latents with raw codebook rows; ours (like the
    # official code) normalises both. The two pick the same codes only for unit-length rows.
    weight.copy_(F.normalize(weight, dim=-1))


def write_hf_sidecars(folder: Path, image_token_id: int = HF_IMAGE_TOKEN_ID) -> None:
    for name, content in HF_SIDECARS.items():
        (folder / name).write_text(json.dumps(content))
    (folder / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [{"id": image_token_id, "content": hf.IMAGE_PLACEHOLDER, "special": True}],
         "model": {"type": "BPE", "vocab": {}}}))
    (folder / "chat_template.jinja").write_text("{{ messages }}")


def load_hf_janus(folder: Path):
    """transformers' JanusForConditionalGeneration from `folder`, eager attention (explicit
    matmul and softmax, so our SDPA attention is checked against another implementation)."""
    return hf_transformers().JanusForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def hf_janus_folder(tmp_path_factory) -> Path:
    """A random transformers Janus at the tiny size (every tensor randomised, unit-length
    codebook rows) saved by its `save_pretrained`, with an HF folder's sidecar files. Read-only:
    tests load it (`load_hf_janus`, `load_model`), none writes into it."""
    tr = hf_transformers()
    torch.manual_seed(0)
    ref = tr.JanusForConditionalGeneration(hf_config(tr)).eval()
    randomise(ref, seed=0)
    unit_codebook(ref.model.vqmodel.quantize.embedding.weight)
    folder = tmp_path_factory.mktemp("hf")
    ref.save_pretrained(folder)
    write_hf_sidecars(folder)
    return folder
