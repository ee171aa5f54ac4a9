"""Tiny on-disk datasets for the data-pipeline tests (imported by tests/train/test_data*.py etc.)."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openjanus.config import JanusConfig
from openjanus.processing import JanusProcessor
from openjanus.train.data import DataConfig, SourceConfig

CFG = JanusConfig.from_name("tiny")  # und: 16 tokens per image; gen: 64 codes of 64


@functools.lru_cache(maxsize=4)
def processor_for(checkpoint: str) -> JanusProcessor:
    return JanusProcessor.from_dir(checkpoint, CFG)


def write_png(path: Path, size: tuple[int, int] = (40, 28), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Dicts become JSON lines; strings are written verbatim (for malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def und_record(i: int) -> dict[str, Any]:
    if i % 3 == 0:  # a caption: loss on every text token
        return {"text": f"a photo of {i} red circles.", "images": [f"imgs/u{i % 5}.png"]}
    record = {"messages": [{"role": "user", "content": f"<image_placeholder>\nhow many circles? ({i})"},
                           {"role": "assistant", "content": f"there are {i}."}],
              "images": [f"imgs/u{i % 5}.png"]}
    if i % 2:
        record["system"] = ""  # (the default system prompt is long for the tiny tokenizer)
    return record


def text_record(i: int) -> dict[str, Any]:
    if i % 2:
        return {"text": "the cat sat on the mat. " * (1 + i % 3)}
    return {"messages": [{"role": "user", "content": f"what is {i} plus one?"},
                         {"role": "assistant", "content": f"it is {i + 1}."}], "system": ""}


def gen_record(i: int, n_codes: int = CFG.num_gen_tokens, codebook: int = CFG.vq.codebook_size) -> dict[str, Any]:
    rng = random.Random(i)
    return {"caption": f"a red square number {i}. it is above a star.",
            "codes": [rng.randrange(codebook) for _ in range(n_codes)]}


def make_dataset(root: Path, n_und: int = 24, n_text: int = 12, n_gen: int = 24, shards: int = 2,
                 **overrides: Any) -> DataConfig:
    """Three sources of JSONL shards (pre-tokenized gen codes) plus a few PNG images."""
    for k in range(5):
        write_png(root / "und" / "imgs" / f"u{k}.png", size=(30 + 4 * k, 24), seed=k)
    for name, make, n in (("und", und_record, n_und), ("text", text_record, n_text), ("gen", gen_record, n_gen)):
        for s in range(shards):
            write_jsonl(root / name / f"{name}-{s:02d}.jsonl", [make(i) for i in range(s, n, shards)])
    sources = {name: SourceConfig((str(root / name / "*.jsonl"),)) for name in ("und", "text", "gen")}
    settings = {"shuffle_block": 4, "num_workers": 0, "pin_memory": False, **overrides}
    return DataConfig(**sources, **settings)
