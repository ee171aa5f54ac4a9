"""Data sources: schemas, bad records, sharding across ranks and workers, epochs, resuming."""

from __future__ import annotations

import json

import pytest
import torch
from data_helpers import (
    CFG,
    gen_record,
    make_dataset,
    text_record,
    write_jsonl,
    write_png,
)
from torch.utils.data import DataLoader

from openjanus.config import ConfigError
from openjanus.train.batch import PackedBatch
from openjanus.train.data import (
    DataConfig,
    DataError,
    SampleBuilder,
    SampleSource,
    SourceConfig,
    discover_shards,
)
from openjanus.train.stream import build_train_stream

pytestmark = pytest.mark.usefixtures("one_thread")


def _source(proc, kind, shards, seq_len=512, **kw) -> SampleSource:
    builder = SampleBuilder(kind, proc, seq_len, codebook_size=CFG.vq.codebook_size)
    return SampleSource(kind, shards, builder, **kw)


def _drain(src: SampleSource) -> list:
    out = []
    while True:
        try:
            out.append(src.next())
        except StopIteration:
            return out


def test_bad_records_are_skipped_and_counted(proc, tmp_path):
    write_png(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ok = {"messages": [{"role": "user", "content": "what is this?"}, {"role": "assistant", "content": "a circle."}],
          "images": ["imgs/ok.png"]}
    records = [
        ok,
        '{"messages": [',  # malformed_json
        "[1, 2, 3]",  # bad_schema: not an object
        {**ok, "images": ["imgs/missing.png"]},  # missing_image
        {**ok, "images": ["imgs/broken.png"]},  # corrupt_image
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},  # empty_text
        {"text": ""},  # empty_text
        {"text": "the cat sat on the mat. " * 200},  # too_long
        {"messages": [{"role": "assistant", "content": "hi"}]},  # bad_schema: no user turn first
        {"text": "<image_placeholder><image_placeholder> two", "images": ["imgs/ok.png"]},  # bad_schema: 2 vs 1
        {"messages": ok["messages"], "text": "both"},  # bad_schema
        "",  # blank lines are not records
        {"text": "<image_placeholder>a caption.", "images": ["imgs/ok.png"]},
        b"\xff\xfe not utf-8".decode("latin-1"),  # malformed_json (written as latin-1 text, still not JSON)
    ]
    shard = write_jsonl(tmp_path / "und.jsonl", records)
    src = _source(proc, "und", [shard], seq_len=256, max_epochs=1).bind(0, 1)
    samples = _drain(src)
    assert len(samples) == 2
    assert src.counters.skipped == {"malformed_json": 2, "bad_schema": 4, "missing_image": 1, "corrupt_image": 1,
                                    "empty_text": 2, "too_long": 1}
    assert src.counters.records == 13 and src.counters.samples == 2

    # The same records inside a full training stream: skipped, counted, reported by stats().
    data = DataConfig(und=SourceConfig((str(shard),)), shuffle_block=8, num_workers=0)
    stream = build_train_stream(data, proc, CFG, seq_len=256, batch_rows=1, ratio=(1, 0, 0))
    for _ in range(5):
        next(stream)
    stats = stream.stats()
    assert stats.skipped["und"]["missing_image"] >= 1 and stats.skipped["und"]["too_long"] >= 1
    flat = stats.as_dict()
    assert flat["data/skipped/und/corrupt_image"] >= 1 and 0 < flat["data/packing_efficiency"] <= 1


def test_a_source_with_nothing_usable_stops_with_a_clear_error(proc, tmp_path):
    shard = write_jsonl(tmp_path / "bad.jsonl", ["{", {"text": ""}])
    src = _source(proc, "text", [shard]).bind(0, 1)
    with pytest.raises(DataError, match="none of the 2 records"):
        src.next()
    tiny = write_jsonl(tmp_path / "tiny.jsonl", [text_record(1)])
    src = _source(proc, "text", [tiny]).bind(1, 2)  # unit 1 of 2 owns no line of a 1-line shard
    with pytest.raises(DataError, match="no records"):
        src.next()


def _origins_per_unit(proc, shards, n_units, epochs=1):
    out = []
    for unit in range(n_units):
        src = _source(proc, "gen", shards, max_epochs=epochs, shuffle_block=5, seed=7).bind(unit, n_units)
        out.append([s.origin for s in _drain(src)])
    return out


@pytest.mark.parametrize("n_shards", [6, 2])  # whole shards per unit / lines split within shards
def test_sharding_is_disjoint_and_complete(proc, tmp_path, n_shards):
    n = 40
    shards = [write_jsonl(tmp_path / f"g{s}.jsonl", [gen_record(i) for i in range(s, n, n_shards)])
              for s in range(n_shards)]
    # rank-major units: (rank, worker) -> rank * workers + worker; 2 ranks x 2 workers.
    per_unit = _origins_per_unit(proc, shards, 4, epochs=2)
    for e in range(2):
        seen = [(o[2], o[4]) for unit in per_unit for o in unit if o[1] == e]
        assert len(seen) == len(set(seen)) == n  # disjoint and complete in each epoch
    assert all(len(u) > 0 for u in per_unit)
    # Shard order and in-block order are reshuffled each epoch.
    first = [[o[2:] for o in u if o[1] == 0] for u in per_unit]
    second = [[o[2:] for o in u if o[1] == 1] for u in per_unit]
    assert first != second


def test_sharding_through_dataloader_workers(proc, tmp_path):
    n = 30
    shards = [write_jsonl(tmp_path / f"g{s}.jsonl", [gen_record(i) for i in range(s, n, 3)]) for s in range(3)]
    seen = []
    for rank in range(2):
        src = _source(proc, "gen", shards, max_epochs=1, rank=rank, world_size=2)
        loader = DataLoader(src, batch_size=None, num_workers=2, collate_fn=lambda s: s.origin)
        seen += list(loader)
    keys = [(o[2], o[4]) for o in seen]
    assert len(keys) == len(set(keys)) == n


def _equal(a: PackedBatch, b: PackedBatch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_the_same_next_batches(proc, tmp_path, workers):
    data = make_dataset(tmp_path, n_und=15, n_text=8, n_gen=12, shards=3, num_workers=workers, max_pending=3)

    def stream():
        return build_train_stream(data, proc, CFG, seq_len=256, batch_rows=2, ratio=(5, 1, 4), seed=11)

    original = stream()
    k = 7  # odd: with 2 workers the next batch is worker 1's turn
    for _ in range(k):
        next(original)
    state = json.loads(json.dumps(original.state_dict()))  # the state is plain JSON
    expected = [next(original) for _ in range(12)]  # runs over epoch ends of the small sources

    resumed = stream()
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(12)]
    assert all(_equal(a, b) for a, b in zip(expected, got))
    assert resumed.stats() == original.stats()
    fresh = stream()
    assert not _equal(next(fresh), expected[0])  # (the check above is not vacuous)
    original.close()
    resumed.close()

    other = build_train_stream(data, proc, CFG, 256, 2, (5, 1, 4), seed=12)
    with pytest.raises(DataError, match="seed"):
        other.load_state_dict(state)


def test_resume_mid_block_and_mid_epoch_for_one_source(proc, tmp_path):
    shards = [write_jsonl(tmp_path / f"t{s}.jsonl", [text_record(i) for i in range(s, 23, 2)]) for s in range(2)]
    a = _source(proc, "text", shards, shuffle_block=4, seed=3).bind(0, 1)
    for _ in range(9):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))
    b = _source(proc, "text", shards, shuffle_block=4, seed=3).bind(0, 1)
    b.load_state_dict(state)
    for _ in range(40):  # crosses epochs
        x, y = a.next(), b.next()
        assert x.origin == y.origin and torch.equal(x.input_ids, y.input_ids)
    write_jsonl(tmp_path / "t1.jsonl", [text_record(i) for i in range(5)])  # the data changed under us
    c = _source(proc, "text", shards, shuffle_block=4, seed=3).bind(0, 1)
    with pytest.raises(DataError, match="changed"):
        c.load_state_dict(state)


def test_data_config_and_shard_discovery(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "sub/c.jsonl"):
        write_jsonl(tmp_path / name, [{"text": "x"}])
    (tmp_path / "notes.txt").write_text("not a shard")
    assert [p.name for p in discover_shards([str(tmp_path)])] == ["a.jsonl", "b.jsonl"]
    assert [p.name for p in discover_shards([str(tmp_path / "**" / "*.jsonl")])] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    assert len(discover_shards([str(tmp_path / "a.jsonl"), str(tmp_path / "*.jsonl")])) == 2  # no duplicates
    with pytest.raises(DataError):
        discover_shards([str(tmp_path / "nope.jsonl")])
    with pytest.raises(DataError):
        discover_shards([str(tmp_path / "*.parquet")])

    cfg = DataConfig.from_dict({"und": "u/*.jsonl", "text": ["t1.jsonl", "t2.jsonl"],
                                "gen": {"paths": "g/*.jsonl", "image_root": "/images"}, "p_uncond": 0.2})
    assert cfg.und == SourceConfig(("u/*.jsonl",)) and cfg.text.paths == ("t1.jsonl", "t2.jsonl")
    assert cfg.gen.image_root == "/images" and cfg.p_uncond == 0.2 and cfg.p_first_sentence == 0.25
    with pytest.raises(ConfigError, match="unknown key"):
        DataConfig.from_dict({"und": "x", "ratio": [1, 1, 1]})
    with pytest.raises(ConfigError):
        DataConfig.from_dict({"p_uncond": 1.5})


def test_raw_image_gen_records_need_a_vq_encoder(proc, tmp_path):
    write_png(tmp_path / "i.png")
    shard = write_jsonl(tmp_path / "g.jsonl", [{"caption": "a red square.", "image": "i.png"}])
    src = _source(proc, "gen", [shard]).bind(0, 1)
    with pytest.raises(DataError, match="pretokenize"):
        src.next()


def test_epoch_order_is_seeded(proc, tmp_path):
    shards = [write_jsonl(tmp_path / f"t{s}.jsonl", [text_record(i) for i in range(s, 30, 5)]) for s in range(5)]
    a = [s.origin for s in _drain(_source(proc, "text", shards, max_epochs=1, seed=1, shuffle_block=3).bind(0, 1))]
    b = [s.origin for s in _drain(_source(proc, "text", shards, max_epochs=1, seed=1, shuffle_block=3).bind(0, 1))]
    c = [s.origin for s in _drain(_source(proc, "text", shards, max_epochs=1, seed=2, shuffle_block=3).bind(0, 1))]
    assert a == b and a != c and sorted(a) == sorted(c)


def test_the_stream_leaves_global_rngs_alone(proc, tmp_path):
    # The training loop saves and restores the global RNGs; the data side must not consume them.
    import random

    data = make_dataset(tmp_path)
    stream = build_train_stream(data, proc, CFG, seq_len=256, batch_rows=1, ratio=(5, 1, 4))
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    for _ in range(5):
        next(stream)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


def test_image_root_and_added_placeholders(proc, tmp_path):
    write_png(tmp_path / "pics" / "a.png", seed=1)
    write_png(tmp_path / "pics" / "b.png", size=(20, 50), seed=2)
    shard = write_jsonl(tmp_path / "jsonl" / "und.jsonl", [
        {"messages": [{"role": "system", "content": "be brief."},
                      {"role": "user", "content": "which is taller?"},
                      {"role": "assistant", "content": "the second."},
                      {"role": "user", "content": "unanswered"}],
         "images": ["a.png", "b.png"]},
        {"text": "two pictures.", "images": ["a.png", "b.png"]},
    ])
    builder = SampleBuilder("und", proc, 512, image_root=tmp_path / "pics")
    src = SampleSource("und", [shard], builder, max_epochs=1, shuffle_block=1).bind(0, 1)
    chat, caption = _drain(src)
    tok = proc.tokenizer
    n = proc.num_und_tokens
    for s in (chat, caption):
        assert s.pixel_values.shape == (2, 3, CFG.vision.image_size, CFG.vision.image_size)
        assert int(s.und_mask.sum()) == 2 * n
    prompt = tok.decode(chat.input_ids[~chat.und_mask].tolist(), skip_special=False)
    # Placeholders go first in the first user turn; the unanswered last question is dropped.
    assert prompt.startswith(f"{tok.specials.bos}be brief.\n\n<|User|>: {tok.specials.boi}{tok.specials.eoi}\n"
                             f"{tok.specials.boi}{tok.specials.eoi}\nwhich is taller?")
    assert prompt.endswith(f"<|Assistant|>: the second.{tok.specials.eos}")
    assert caption.input_ids[: 2 * n + 5].tolist() == [tok.bos_id, tok.boi_id, *[tok.image_id] * n, tok.eoi_id,
                                                        tok.boi_id, *[tok.image_id] * n, tok.eoi_id]


def test_chat_record_aliases_are_normalised():
    from openjanus.train.data import normalise_chat_record

    rec = {"conversations": [{"from": "human", "value": "<image_placeholder>\nhi"}, {"from": "gpt", "value": "yes"}],
           "image": "a.png"}
    out = normalise_chat_record(rec)
    assert out == {"messages": [{"role": "user", "content": "<image_placeholder>\nhi"},
                                {"role": "assistant", "content": "yes"}], "images": ["a.png"]}
    plain = {"messages": [], "images": []}
    assert normalise_chat_record(plain) is plain
