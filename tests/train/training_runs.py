"""Short training runs from fixed configs, one per task kind, for the bit-identical check.

`scripts/record_training_reference.py` records their losses and weights once; the test
`test_bit_identical.py` runs them again and compares. Everything a run reads is written here
from fixed seeds (no shipped data, no tokenizer download): the stand-in tokenizer of the
presets, the shapes world for the parts, three small JSONL files for the Janus stages and text.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from openjanus.config import JanusConfig
from openjanus.train.config import TrainConfig
from openjanus.train.run import run_training

# The runs: (name, stage preset, data kind). The Janus stages differ in what trains and in the
# data mix; the parts and text pretraining each have their own model and objective.
RUNS = [("stage1", "stage1", "janus"), ("stage2", "stage2", "janus"), ("stage3", "stage3", "janus"),
        ("vq", "vq", "shapes"),
        ("siglip", "siglip", "shapes"), ("text", "text", "text")]
STEPS = 3


def write_data(root: Path) -> dict[str, str]:
    """Three small JSONL files (understanding, text, generation) and their images.

    Like the data of test_loop_cli.py on purpose, not shared with it: the recorded reference
    depends on these exact records, so they must not follow edits made for other tests."""
    cfg = JanusConfig.from_name("tiny")
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"imgs/{i}.png")
    rng = random.Random(0)
    und = [{"messages": [{"role": "user", "content": "what is in this picture?"},
                         {"role": "assistant", "content": f"two green stars {i}."}], "images": [f"imgs/{i % 3}.png"]}
           for i in range(8)]
    text = [{"text": "the cat sat on the mat. " * (1 + i % 3)} for i in range(8)]
    gen = [{"caption": f"a red circle above a blue square {i}.",
            "codes": [rng.randrange(cfg.vq.codebook_size) for _ in range(cfg.num_gen_tokens)]} for i in range(8)]
    for name, recs in (("und", und), ("text", text), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {name: str(root / f"{name}.jsonl") for name in ("und", "text", "gen")}


def run_config(name: str, root: Path) -> TrainConfig:
    """The fixed config of run `name`, writing under `root`."""
    preset, kind = next((p, k) for n, p, k in RUNS if n == name)
    files = write_data(root / "data")
    data: dict[str, Any] = {"source": "shapes"} if kind == "shapes" else {"num_workers": 0, "shuffle_block": 2}
    if kind == "janus":
        data.update(files)
    elif kind == "text":
        data["text"] = files["text"]
    return TrainConfig.from_dict({
        "output_dir": str(root / name), "model": {"preset": "tiny"}, "data": data, "seed": 0,
        "stage": {"preset": preset, "steps": STEPS, "warmup_steps": 1, "global_batch": 2},
        "micro_batch_rows": 2 if kind == "shapes" else 1, "seq_len": 192, "log_every": 1,
        "progress_bar": False, "tensorboard": False, "device": "cpu", "dtype": "float32"})


@contextmanager
def recorded_losses() -> Iterator[list[float]]:
    """Every loss the run back-propagates, in order (one per micro-batch)."""
    losses: list[float] = []
    backward = torch.Tensor.backward

    def record(self: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        losses.append(self.detach().double().item())
        backward(self, *args, **kwargs)

    torch.Tensor.backward = record  # type: ignore[method-assign]
    try:
        yield losses
    finally:
        torch.Tensor.backward = backward  # type: ignore[method-assign]


def weights_digest(folder: Path) -> dict[str, Any]:
    """A SHA-256 over every tensor of the export's weight files (names, dtypes, shapes, bytes),
    and their sum as a readable hint of how far two runs drifted apart."""
    h, total = hashlib.sha256(), 0.0
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(file))
        for key in sorted(tensors):
            t = tensors[key].contiguous()
            h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            total += t.double().sum().item()
    return {"sha256": h.hexdigest(), "sum": total}


def run(name: str, root: Path) -> dict[str, Any]:
    """Train run `name` on one CPU thread; its losses and the digest of its exported weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with recorded_losses() as losses:
            run_training(run_config(name, root), log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return {"losses": losses, "weights": weights_digest(root / name / "export")}
