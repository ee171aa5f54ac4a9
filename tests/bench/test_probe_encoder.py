"""bench/probe_encoder.py: the linear probe separates what is separable and not what is noise."""

import importlib.util
import json
from pathlib import Path

import torch

_PATH = Path(__file__).resolve().parents[2] / "bench" / "probe_encoder.py"
_spec = importlib.util.spec_from_file_location("probe_encoder", _PATH)
probe_encoder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_encoder)


def test_probe_finds_a_linear_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    centres = torch.randn(4, 16, generator=g) * 3
    x = centres[y] + torch.randn(600, 16, generator=g)
    assert probe_encoder.probe_accuracy(x, y, 4, 400) > 0.95
    noise = torch.randn(600, 16, generator=g)
    assert probe_encoder.probe_accuracy(noise, y, 4, 400) < 0.45  # chance is 0.25


def test_probe_command_writes_every_view(tmp_path):
    out = tmp_path / "probe.json"
    assert probe_encoder.main(["--model", "tiny", "-n", "45", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["tiny"]
    views = ("encoder/centre", "encoder/mean", "encoder/max", "aligner/centre")
    assert sorted(result) == sorted(f"{v}/{w}" for v in views for w in ("shape", "colour"))
    assert all(0.0 <= a <= 1.0 for a in result.values())


def test_a_siglip_part_folder_probes_like_the_model_it_came_from(tmp_path):
    from openjanus.checkpoints.weights import export_part
    from openjanus.inference.pipeline import JanusPipeline

    source = JanusPipeline.from_preset("tiny", seed=1)  # weights unlike the preset's own (seed 0)
    net = source.model
    part = export_part(net.und_encoder.state_dict(), "siglip", net.cfg.vision, tmp_path / "siglip")
    whole = probe_encoder.probe_pipeline(source, 45, seed=5)
    alone = probe_encoder.probe_model(str(part), 45, seed=5, part_preset="tiny")
    assert not any(k.startswith("aligner/") for k in alone)  # a part has no trained aligner
    encoder_views = {k: v for k, v in whole.items() if k.startswith("encoder/")}
    assert alone == encoder_views
    # The comparison can fail: the preset's own encoder probes differently.
    assert probe_encoder.probe_model("tiny", 45, seed=5, part_preset="tiny") != whole


def test_supervised_baseline_trains_the_encoder_and_is_probed_without_aligner(tmp_path):
    from openjanus.inference.pipeline import JanusPipeline

    fresh = JanusPipeline.load("tiny", device="cpu").model.und_encoder.state_dict()
    trained = probe_encoder.supervised_baseline("tiny", steps=2, seed=0, batch=4).model.und_encoder.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)
    out = tmp_path / "probe.json"
    argv = ["--model", "tiny", "-n", "45", "--part-preset", "tiny", "--supervised-baseline", "2", "--json", str(out)]
    assert probe_encoder.main(argv) == 0
    rows = json.loads(out.read_text())
    baseline = rows["tiny encoder, 2 supervised shape steps"]
    assert sorted(baseline) == sorted(k for k in rows["tiny"] if k.startswith("encoder/"))
