"""Training data export: streaming, sharded, resumable, deterministic."""

from __future__ import annotations

import json
import tracemalloc

from PIL import Image

from openjanus.shapes import datasets


def test_samples_are_pure_functions_of_seed_and_index():
    for kind in datasets.KINDS:
        a = datasets.make_sample(kind, 1, 17)
        b = datasets.make_sample(kind, 1, 17)
        assert a.record == b.record
        if a.image is not None:
            assert a.image.tobytes() == b.image.tobytes()
    assert datasets.make_sample("t2i", 1, 17).record != datasets.make_sample("t2i", 1, 18).record


def test_und_conversations_use_the_image_token():
    rec = datasets.make_sample("und", 0, 3).record
    conv = rec["conversations"]
    assert conv[0]["role"] == "user" and conv[0]["content"].startswith(datasets.IMAGE_TOKEN + "\n")
    assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2)
    assert sum(datasets.IMAGE_TOKEN in m["content"] for m in conv) == 1


def test_streaming_export_of_10k_samples(tmp_path):
    out = tmp_path / "text"
    m = datasets.export_dataset(out, "text", 10_000, shard_size=1_500)
    shards = sorted(out.glob("shard-*.jsonl"))
    assert len(shards) == 7 == len(m["shards"])
    counts = [sum(1 for _ in s.open()) for s in shards]
    assert counts == [1500] * 6 + [1000]
    ids = [json.loads(line)["id"] for s in shards for line in s.open()]
    assert len(set(ids)) == 10_000
    assert json.loads((out / "manifest.json").read_text())["samples"] == 10_000
    assert sum(1 for _ in datasets.read_dataset(out)) == 10_000


def _peak_bytes(path, n):
    tracemalloc.start()
    datasets.export_dataset(path, "t2i", n, shard_size=n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_export_memory_does_not_grow_with_size(tmp_path):
    small = _peak_bytes(tmp_path / "small", 40)
    large = _peak_bytes(tmp_path / "large", 400)
    assert large < 1.5 * small + 2**20, (small, large)


def test_image_export_and_resume(tmp_path):
    out = tmp_path / "t2i"
    datasets.export_dataset(out, "t2i", 250, shard_size=100, image_size=64)
    assert len(list(out.glob("shard-*/*.png"))) == 250
    rec = next(datasets.read_dataset(out))
    with Image.open(rec["image"]) as im:
        assert im.size == (64, 64)
    assert rec["caption"]
    # An interrupted run leaves a .tmp shard; completed shards are not rewritten.
    first = out / "shard-00000.jsonl"
    stamp = first.stat().st_mtime_ns
    (out / "shard-00002.jsonl").unlink()
    datasets.export_dataset(out, "t2i", 250, shard_size=100, image_size=64)
    assert first.stat().st_mtime_ns == stamp
    assert sum(1 for _ in (out / "shard-00002.jsonl").open()) == 50


def test_parallel_export_matches_serial(tmp_path):
    datasets.export_dataset(tmp_path / "a", "und", 40, shard_size=10, workers=1)
    datasets.export_dataset(tmp_path / "b", "und", 40, shard_size=10, workers=2)
    for k in range(4):
        name = f"shard-{k:05d}.jsonl"
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_one_background_kind_for_every_image(tmp_path):
    import numpy as np
    import pytest

    from openjanus.errors import UserError

    m = datasets.export_dataset(tmp_path / "plain", "t2i", 12, shard_size=6, seed=4, background="plain")
    assert m["background"] == "plain"
    recs = list(datasets.read_dataset(tmp_path / "plain"))
    for i, rec in enumerate(recs):
        img = np.asarray(Image.open(rec["image"]).convert("RGB"))
        # The same scene and caption as without the option; only the background differs.
        mixed = datasets.make_sample("t2i", 4, i)
        assert rec["caption"] == mixed.record["caption"]
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == corners[0]).all(), f"image {i}: a plain background is one flat colour"
    # Noise backgrounds are not flat: the option really changes the rendering.
    noisy = datasets.make_sample("t2i", 4, 0, background="noise").image
    assert np.asarray(noisy).reshape(-1, 3).std(axis=0).max() > 0
    with pytest.raises(UserError, match="background"):
        datasets.export_dataset(tmp_path / "bad", "t2i", 2, background="stripes")
