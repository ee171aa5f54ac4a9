"""`--adapter DIR` (ModelOptions, so chat, generate, serve, eval, demo) and
`JanusPipeline.load(adapter=...)`: a LoRA adapter applied unmerged. A zero-initialised adapter
leaves the sampled image tokens bit-identical (fp32); a trained one changes them exactly as the
merged weights do; an adapter for another model is one error line naming the module."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from openjanus.checkpoints import load_model, save_model
from openjanus.checkpoints.lora import add_lora, merge_lora, save_adapter
from openjanus.cli import main
from openjanus.config import JanusConfig
from openjanus.inference.pipeline import JanusPipeline
from openjanus.model.janus import Janus
from openjanus.requests import ImageRequest


@dataclass
class Lora:
    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: str = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.(gate|down)_proj)"


def _adapter(checkpoint, folder, init):
    model = load_model(checkpoint)
    add_lora(model, Lora(), init=init)
    if init is False:
        with torch.no_grad():  # large enough to change what is sampled
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.mul_(20.0)
    save_adapter(model, folder)
    return model


def _tokens(pipe):
    reqs = [ImageRequest("a red circle", n=2, seed=3), ImageRequest("two blue squares", n=1, seed=4)]
    return torch.cat([r.tokens for r in pipe.run(reqs)])


def test_zero_adapter_is_bit_identical_and_trained_one_equals_merged(tmp_path, tiny_checkpoint, one_thread):
    _adapter(tiny_checkpoint, tmp_path / "zero", init=True)
    trained = _adapter(tiny_checkpoint, tmp_path / "trained", init=False)
    with JanusPipeline.load(str(tiny_checkpoint), dtype="float32") as base:
        want = _tokens(base)
    with JanusPipeline.load(str(tiny_checkpoint), dtype="float32", adapter=tmp_path / "zero") as pipe:
        assert torch.equal(_tokens(pipe), want)
    save_model(merge_lora(trained), tmp_path / "merged", layout="official", sidecars_from=tiny_checkpoint)
    with JanusPipeline.load(str(tiny_checkpoint), dtype="float32", adapter=tmp_path / "trained") as pipe:
        assert any("lora_" in n for n, _ in pipe.model.named_parameters())  # applied, not merged
        got = _tokens(pipe)
    with JanusPipeline.load(str(tmp_path / "merged"), dtype="float32") as merged:
        from_merged = _tokens(merged)
    assert not torch.equal(got, want)
    # Unmerged and merged differ only in rounding (fp32): the sampled tokens agree almost everywhere.
    assert (got == from_merged).float().mean() > 0.95


def test_adapter_in_bf16_keeps_adapted_projections_unfused(tmp_path, tiny_checkpoint, one_thread):
    _adapter(tiny_checkpoint, tmp_path / "a", init=False)
    with JanusPipeline.load(str(tiny_checkpoint), dtype="bfloat16", adapter=tmp_path / "a") as pipe:
        block = pipe.model.llm.layers[0]
        assert block.attn.qkv_proj is None and hasattr(block.attn.q_proj, "lora_A")
        assert _tokens(pipe).shape == (3, pipe.model.cfg.num_gen_tokens)


def test_generate_cli_takes_an_adapter_and_names_a_foreign_one(tmp_path, tiny_checkpoint, capsys):
    _adapter(tiny_checkpoint, tmp_path / "a", init=False)
    assert main(["generate", "a red circle", "--model", str(tiny_checkpoint), "--adapter", str(tmp_path / "a"),
                 "--dtype", "float32", "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "tokens.npy").shape[0] == 1
    other = Janus(JanusConfig.from_name("tiny", **{"llm.ffn_dim": 96}))
    add_lora(other, Lora(), init=False)
    save_adapter(other, tmp_path / "foreign")
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(tiny_checkpoint), "--adapter", str(tmp_path / "foreign"),
                 "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the adapter is for another model" in err[0] and "mlp.down_proj" in err[0], err
