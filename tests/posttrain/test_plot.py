"""`openjanus train plot` on a post-training run: rewards, KL and held-out evaluation panels."""

from __future__ import annotations

import pytest

from openjanus.cli import main


def test_plot_shows_rewards_kl_and_heldout_eval(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "grpo"
    with SummaryWriter(str(run / "tensorboard")) as w:
        for step in range(1, 6):
            w.add_scalar("reward", 0.4 + 0.05 * step, step)
            w.add_scalar("correct", 0.3 + 0.05 * step, step)
            w.add_scalar("grpo/kl", 0.01 * step, step)
            w.add_scalar("grpo/loss", 0.1, step)  # not plotted: the DPO panel is for DPO runs
        for step in (0, 5):
            w.add_scalar("eval/geneval/heldout", 0.34 + 0.01 * step, step)
            w.add_scalar("eval/geneval/train", 0.46 + 0.01 * step, step)
    assert main(["train", "plot", str(run), "--out", str(tmp_path / "p.svg")]) == 0
    svg = (tmp_path / "p.svg").read_text()
    for title in ("grpo: reward", "grpo: KL to the reference", "grpo: GenEval (shapes) during training"):
        assert title in svg
    assert "DPO" not in svg  # no DPO margins logged
    assert svg.count("<polyline") == 5  # reward, correct, kl, heldout, train
