"""Mixing by ratio: the bound at every prefix, determinism, resuming, and the realised mix of a stream."""

from __future__ import annotations

import pytest
from data_helpers import CFG, make_dataset, processor_for

from openjanus.config import ConfigError
from openjanus.train.batch import DATA_KINDS
from openjanus.train.mixing import Mixer, parse_ratio
from openjanus.train.packing import samples_per_task
from openjanus.train.stream import build_train_stream


@pytest.mark.parametrize("ratio", [(5, 1, 4), (2, 3, 5), (1, 0, 3), (0.7, 0.3, 1.0)])
def test_mixer_stays_within_k_minus_1_samples_of_the_ratio_at_every_step(ratio):
    """With K active sources each count stays in [n*p - (K-1), n*p + 1] after every draw n,
    so the mix of any step (and of the whole run) is the ratio up to two samples."""
    mixer = Mixer(ratio, seed=3)
    p = mixer.proportions
    k = len(mixer.active)
    counts = dict.fromkeys(mixer.active, 0)
    for n in range(1, 10_001):
        counts[mixer.next()] += 1
        for s in mixer.active:
            assert n * p[s] - (k - 1) - 1e-9 <= counts[s] <= n * p[s] + 1 + 1e-9, (n, s, counts)
    assert set(counts) == {name for name, w in zip(DATA_KINDS, ratio) if w > 0}  # a 0 weight is never drawn


def test_mixer_is_random_deterministic_and_resumable():
    a, b = Mixer((5, 1, 4), seed=1), Mixer((5, 1, 4), seed=1)
    seq_a = [a.next() for _ in range(500)]
    assert seq_a == [b.next() for _ in range(500)]
    assert seq_a != [Mixer((5, 1, 4), seed=2).next() for _ in range(500)]
    assert seq_a[:10] != seq_a[10:20]  # not a fixed cycle
    state = a.state_dict()
    resumed = Mixer((5, 1, 4), seed=1)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(200)] == [a.next() for _ in range(200)]


def test_parse_ratio():
    assert parse_ratio((5, 1, 4)) == {"und": 5.0, "text": 1.0, "gen": 4.0}
    assert parse_ratio({"und": 1, "gen": 3}) == {"und": 1.0, "text": 0.0, "gen": 3.0}
    for bad in [(0, 0, 0), (1, -1, 1), (1, 2), {"image": 1}]:
        with pytest.raises(ConfigError):
            parse_ratio(bad)


def test_stream_realises_the_ratio_over_many_steps(tmp_path, tiny_checkpoint):
    """After every one of 300 packed batches the realised mix (samples placed in batches) is
    5:1:4 within K - 1 + max_pending samples: the mixer's bound, plus the samples still
    waiting in the packer, which were drawn but not yet placed. This is a deterministic
    bound, not a statistical tolerance, so the test cannot flake."""
    max_pending = 4
    data = make_dataset(tmp_path, n_und=30, n_text=12, n_gen=24, max_pending=max_pending)
    stream = build_train_stream(data, processor_for(str(tiny_checkpoint)), CFG, seq_len=192, batch_rows=2,
                                ratio=(5, 1, 4), seed=0)
    per_batch = []
    for _ in range(300):
        per_batch.append(samples_per_task(next(stream)))
    stats = stream.stats()
    placed = {t: sum(b[t] for b in per_batch) for t in DATA_KINDS}
    assert placed == stats.samples
    n = sum(placed.values())
    assert n > 900
    for t, p in zip(DATA_KINDS, (0.5, 0.1, 0.4)):
        assert abs(placed[t] - n * p) <= 2 + max_pending, (t, placed)
    assert stats.mix == pytest.approx({"und": 0.5, "text": 0.1, "gen": 0.4}, abs=6 / n)
    # The bound holds after every step, not only at the end.
    running = dict.fromkeys(DATA_KINDS, 0)
    for b in per_batch:
        for t in DATA_KINDS:
            running[t] += b[t]
        n_k = sum(running.values())
        for t, p in zip(DATA_KINDS, (0.5, 0.1, 0.4)):
            assert abs(running[t] - n_k * p) <= 2 + max_pending, (t, running)
    assert 0.8 < stats.packing_efficiency <= 1.0
    assert stats.epochs["und"] >= 10  # the small sources were looped over many times
    assert not stats.skipped


def test_zero_ratio_source_may_be_absent(tmp_path, tiny_checkpoint):
    data = make_dataset(tmp_path)
    no_text = type(data)(und=data.und, gen=data.gen, shuffle_block=4, num_workers=0)
    stream = build_train_stream(no_text, processor_for(str(tiny_checkpoint)), CFG, 192, 1, ratio=(1, 0, 3))
    for _ in range(20):
        assert samples_per_task(next(stream))["text"] == 0
    with pytest.raises(ConfigError, match="data.text is not configured"):
        build_train_stream(no_text, processor_for(str(tiny_checkpoint)), CFG, 192, 1, ratio=(5, 1, 4))
