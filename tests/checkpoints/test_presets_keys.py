"""Every preset builds on the meta device; the released presets reproduce the official key lists."""

import pytest
import torch
from conftest import REFERENCE, official_key_shapes

from openjanus.checkpoints import official
from openjanus.config import PRESETS, JanusConfig
from openjanus.model.janus import Janus


def meta_model(name: str) -> Janus:
    with torch.device("meta"):
        return Janus(JanusConfig.from_name(name))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_on_meta(preset):
    model = meta_model(preset)
    assert sum(p.numel() for p in model.parameters()) > 0
    # Every key of ours has an official name and maps back to itself.
    for key in model.state_dict():
        assert official.from_official_key(official.to_official_key(key)) == key


@pytest.mark.parametrize("preset,keyfile", [("janus-pro-1b", "janus-pro-1b"), ("janus-1.3b", "janus-pro-1b"),
                                            ("janus-pro-7b", "janus-pro-7b")])
def test_released_presets_match_official_key_lists(preset, keyfile):
    want = official_key_shapes(keyfile)
    got = {official.to_official_key(k): tuple(v.shape) for k, v in meta_model(preset).state_dict().items()}
    assert sorted(set(want) - set(got)) == []
    assert sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}


@pytest.mark.parametrize("name,total", [("janus-pro-1b", 2_089_297_547), ("janus-pro-7b", 7_420_434_059)])
def test_released_presets_element_counts(name, total):
    # SPEC 1.5: element counts including the 65,536-entry codebook_used buffer.
    assert sum(meta_model(name).param_counts().values()) == total


@pytest.mark.parametrize("folder,preset", [("Janus-Pro-1B", "janus-pro-1b"), ("Janus-Pro-7B", "janus-pro-7b"),
                                           ("Janus-1.3B", "janus-1.3b")])
def test_official_config_json_parses_to_preset(folder, preset):
    import json

    path = REFERENCE / "configs" / folder / "config.json"
    cfg = official.config_from_official(json.loads(path.read_text()))
    want = JanusConfig.from_name(preset)
    assert (cfg.llm, cfg.vision, cfg.vq, cfg.gen_head_dim) == (want.llm, want.vision, want.vq, want.gen_head_dim)
