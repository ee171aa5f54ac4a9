"""Pre-tokenizing a text-to-image dataset: codes equal the VQ encoder's, and training reads them."""

from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import pytest
import torch
from conftest import build_tiny
from data_helpers import CFG, processor_for, write_jsonl, write_png

from openjanus.images import load_image, preprocess_gen_image
from openjanus.train.data import DataConfig, DataError, SampleBuilder, SampleSource, SourceConfig, codes_file
from openjanus.train.pretokenize import load_vq, pretokenize, register_pretokenize
from openjanus.train.stream import build_train_stream

pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(root):
    sizes = [(40, 28), (28, 40), (32, 32), (64, 20), (21, 33)]
    for i, size in enumerate(sizes):
        write_png(root / "imgs" / f"{i}.png", size=size, seed=i)
    (root / "imgs" / "broken.png").write_bytes(b"not an image")
    records = [{"caption": f"a red square number {i}.", "image": f"imgs/{i}.png"} for i in range(5)]
    records.insert(2, {"caption": "gone", "image": "imgs/missing.png"})
    records.insert(4, {"caption": "", "image": "imgs/0.png"})
    records.append({"caption": "broken", "image": "imgs/broken.png"})
    records.append("{not json")
    return write_jsonl(root / "gen.jsonl", records), sizes


@functools.lru_cache(maxsize=1)
def _tiny_vq():
    return build_tiny(0).gen_tokenizer  # the weights write_tiny_checkpoint saved


def _expected_codes(root, n):
    vq = _tiny_vq()
    x = torch.stack([preprocess_gen_image(load_image(root / "imgs" / f"{i}.png"), CFG.vq.image_size) for i in range(n)])
    with torch.no_grad():
        return vq.encode(x)


def test_pretokenize_round_trip(tiny_checkpoint, tmp_path):
    shard, sizes = _dataset(tmp_path)
    out = tmp_path / "codes"
    stats = pretokenize(tiny_checkpoint, [shard], out, batch_size=2, shard_size=3, num_threads=2, progress=False)
    assert (stats.records, stats.written, stats.shards) == (9, 5, 2)
    assert stats.skipped == {"missing_image": 1, "empty_text": 1, "corrupt_image": 1, "malformed_json": 1}

    lines = [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]
    codes = np.concatenate([np.load(codes_file(p)) for p in sorted(out.glob("*.jsonl"))])
    assert codes.dtype == np.uint16 and codes.shape == (5, CFG.num_gen_tokens)
    assert [r["caption"] for r in lines] == [f"a red square number {i}." for i in range(5)]
    assert torch.equal(torch.from_numpy(codes.astype(np.int64)), _expected_codes(tmp_path, 5))
    meta = json.loads((out / "pretokenize.json").read_text())
    assert meta["num_gen_tokens"] == CFG.num_gen_tokens and meta["written"] == 5

    # Training reads the shards back: each sample's codes are its row's.
    proc = processor_for(str(tiny_checkpoint))
    builder = SampleBuilder("gen", proc, 512, codebook_size=CFG.vq.codebook_size, p_uncond=0, p_first_sentence=0)
    src = SampleSource("gen", sorted(out.glob("*.jsonl")), builder, max_epochs=1).bind(0, 1)
    got = {}
    while True:
        try:
            s = src.next()
        except StopIteration:
            break
        caption = proc.decode(s.input_ids[~s.gen_mask].tolist())
        got[caption] = s.gen_codes[s.gen_mask]
    expected = _expected_codes(tmp_path, 5)
    for i in range(5):
        key = next(k for k in got if f"number {i}." in k)
        assert torch.equal(got[key], expected[i])

    with pytest.raises(DataError, match="already holds"):
        pretokenize(tiny_checkpoint, [shard], out, progress=False)


def test_online_encoding_matches_pretokenized(tiny_checkpoint, tmp_path):
    shard, _ = _dataset(tmp_path)
    proc = processor_for(str(tiny_checkpoint))
    data = DataConfig(gen=SourceConfig((str(shard),)), p_uncond=0, p_first_sentence=0, num_workers=0, shuffle_block=1)
    stream = build_train_stream(data, proc, CFG, seq_len=512, batch_rows=1, ratio=(0, 0, 1),
                                vq=_tiny_vq())
    batch = next(stream)
    expected = _expected_codes(tmp_path, 5)
    docs = range(int(batch.doc_ids.max()) + 1)
    rows = [batch.gen_codes[0][(batch.doc_ids[0] == d) & batch.gen_mask[0]] for d in docs]
    assert rows and all(any(torch.equal(r, e) for e in expected) for r in rows)


def test_load_vq_reads_only_the_tokenizer(tiny_checkpoint):
    vq = load_vq(tiny_checkpoint)
    ref = _tiny_vq().state_dict()
    assert vq.state_dict().keys() == ref.keys()
    assert all(torch.equal(vq.state_dict()[k], ref[k]) for k in ref if not k.endswith("codebook_used"))


def test_cli_hook(tiny_checkpoint, tmp_path, capsys):
    shard, _ = _dataset(tmp_path)
    parser = argparse.ArgumentParser(prog="openjanus train")
    register_pretokenize(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pretokenize", "--model", str(tiny_checkpoint), "--data", str(shard),
                              "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    args.func(args)
    assert "wrote 5 of 9 records in 1 shard(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "gen-00000.jsonl").is_file()


def test_load_vq_reads_a_pretrained_vq_part(tmp_path):
    import torch

    from openjanus.checkpoints.weights import export_part
    from openjanus.config import JanusConfig
    from openjanus.model.vq import VQModel
    from openjanus.train.pretokenize import load_vq

    cfg = JanusConfig.from_name("tiny").vq
    torch.manual_seed(0)
    vq = VQModel(cfg)
    export_part(dict(vq.state_dict()), "vq", cfg, tmp_path / "vq")
    loaded = load_vq(tmp_path / "vq")
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    assert torch.equal(loaded.encode(x), vq.eval().encode(x))
