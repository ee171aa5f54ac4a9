"""`openjanus info`'s LoRA training-memory estimate: the adapter size it assumes is what peft
really injects, and Janus-Pro-7B in bf16 fits a 24 GB card."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.model.janus import Janus
from openjanus.train.lora import add_lora
from openjanus.train.memory import LLM_TARGETS, lora_adapter_params, lora_training_memory


@dataclass
class Lora:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # One regular expression (peft's rule for a string) over transformers' names.
    targets: str = rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({'|'.join(LLM_TARGETS)})"


def test_adapter_size_is_what_peft_injects():
    model = Janus(JanusConfig.from_name("tiny"))
    add_lora(model, Lora())
    injected = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert injected == lora_adapter_params(model.cfg, 8) > 0
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_janus_pro_7b_lora_fits_24_gb(capsys):
    cfg = JanusConfig.from_name("janus-pro-7b")
    with torch.device("meta"):
        total = sum(Janus(cfg).param_counts().values())
    m = lora_training_memory(cfg, total, rank=16, batch=4)
    assert m.weights == 2 * total and m.adapter == 16 * m.adapter_params
    assert m.total + 2**30 <= 24e9
    assert main(["info", "--model", "janus-pro-7b"]) == 0
    out = capsys.readouterr().out
    assert "LoRA training memory (rank 16" in out and "fits 24 GB" in out
