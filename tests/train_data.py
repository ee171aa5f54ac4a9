"""A tiny training run on disk, for the tests and benchmarks that run `openjanus train CONFIG`
on the tiny preset: three small JSONL sources (understanding, text, generation as VQ codes)
with their images, and the config file around them.

(`tests/train/training_runs.py` keeps its own copy of the data on purpose: the bit-identical
reference was recorded from those exact records.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from openjanus.config import JanusConfig

CFG = JanusConfig.from_name("tiny")

# What every such config sets: quiet, no TensorBoard, one short row per micro-batch.
BASE_CONFIG = {"log_every": 1, "progress_bar": False, "tensorboard": False, "seq_len": 192, "micro_batch_rows": 1}


def write_train_data(root: Path, n: int = 6) -> dict[str, Any]:
    """`n` records per source under `root` (three random PNGs for the understanding records);
    returns the config's `data` section."""
    (root / "imgs").mkdir(parents=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"imgs/{i}.png")
    rng = random.Random(0)
    und = [{"messages": [{"role": "user", "content": "what is in this picture?"},
                         {"role": "assistant", "content": f"two green stars {i}."}], "images": [f"imgs/{i % 3}.png"]}
           for i in range(n)]
    text = [{"text": "the cat sat on the mat. " * (1 + i % 2)} for i in range(n)]
    gen = [{"caption": f"a red circle above a blue square {i}.",
            "codes": [rng.randrange(CFG.vq.codebook_size) for _ in range(CFG.num_gen_tokens)]} for i in range(n)]
    for name, records in (("und", und), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"und": str(root / "und.jsonl"), "text": str(root / "text.jsonl"), "gen": str(root / "gen.jsonl"),
            "num_workers": 0, "pin_memory": False, "shuffle_block": 2}


def write_train_config(path: Path, **fields: Any) -> str:
    """A training config file at `path`: `BASE_CONFIG` with `fields` over it; returns its path."""
    path.write_text(json.dumps({**BASE_CONFIG, **fields}))
    return str(path)
