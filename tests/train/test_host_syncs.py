"""Training steps do not make the host wait for the device: metrics, losses and the gradient
norm stay tensors until a log step reads them, all in one transfer.

On the CPU path a host sync is a call that turns a tensor into a Python value (`item`,
`float()`, `int()`, `bool()`, `tolist`, `numpy`); on a GPU each of these waits for the device.
The test counts them during training. Reads of host data are not syncs and are left out: the
data stream building its batches, the objective counting loss units and finding the
supervised positions on the batch's CPU copy before it moves (`count`, `tokens`, `to_device`),
and AdamW reading its step counters, which it keeps on the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from conftest import build_tiny
from loop_batches import HandStream

from openjanus.train.objectives import JanusObjective
from openjanus.train.stages import stage_from_name
from openjanus.train.trainer import LoopSettings, Trainer, apply_stage

READS = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy")


class SyncCounter:
    """Counts tensor-to-Python reads, except inside `host(...)`-wrapped functions."""

    def __init__(self) -> None:
        self.count = 0
        self._paused = 0

    def host(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self._paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused -= 1

        return wrapped

    def counting(self, read: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not self._paused:
                self.count += 1
            return read(*args, **kwargs)

        return wrapped


class HostStream:
    """A data stream whose batches are built on the host (not counted)."""

    def __init__(self, stream: Iterator[Any], counter: SyncCounter) -> None:
        self._next = counter.host(lambda: next(stream))

    def __iter__(self) -> HostStream:
        return self

    def __next__(self) -> Any:
        return self._next()


def test_only_log_steps_sync_with_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = SyncCounter()
    model = build_tiny(0)
    obj = JanusObjective(model)
    stage = stage_from_name("stage2", steps=8, warmup_steps=3, lr=2e-3)
    apply_stage(obj, stage)
    data = HostStream(HandStream(model.cfg, rows=1), counter)
    trainer = Trainer(obj, stage, data, LoopSettings(grad_accum=2, log_every=4), log=lambda line: None)
    for name in ("count", "tokens", "flops", "to_device"):
        monkeypatch.setattr(obj, name, counter.host(getattr(obj, name)))
    monkeypatch.setattr(trainer.optimizer, "step", counter.host(trainer.optimizer.step))
    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counter.counting(getattr(torch.Tensor, name)))

    per_step, per_report = [], []
    step, report = trainer.train_step, trainer._report

    def counted_step() -> Any:
        before = counter.count
        stats = step()
        per_step.append(counter.count - before)
        return stats

    def counted_report(*args: Any) -> None:
        before = counter.count
        report(*args)
        per_report.append(counter.count - before)

    monkeypatch.setattr(trainer, "train_step", counted_step)
    monkeypatch.setattr(trainer, "_report", counted_report)
    trainer.fit()
    assert per_step == [0] * 8  # forward, backward, clipping and metrics: no sync in any step
    assert per_report == [1, 1]  # steps 4 and 8: every sum and the grad norm in one transfer
