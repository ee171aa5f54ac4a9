"""Configs validate every field's type and range, naming the field; presets are data."""

from __future__ import annotations

import dataclasses
import math

import pytest

from openjanus.config import PRESETS, ConfigError, FieldError, JanusConfig, LLMConfig, VisionConfig, VQConfig
from openjanus.errors import UserError


def test_config_errors_are_user_errors():
    # The Python API raises UserError for bad input; the CLI turns it into exit code 2.
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


INT_FIELDS = [(LLMConfig, "llm", f) for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads",
                                              "ffn_dim", "max_seq_len")] + \
             [(VisionConfig, "vision", f) for f in ("image_size", "patch_size", "dim", "n_layers", "n_heads",
                                                    "mlp_dim")] + \
             [(VQConfig, "vq", f) for f in ("image_size", "codebook_size", "codebook_dim", "base_channels",
                                            "z_channels", "num_res_blocks", "norm_groups")]


@pytest.mark.parametrize("cls,part,name", INT_FIELDS)
@pytest.mark.parametrize("bad,problem", [("512", "must be an integer"), (64.0, "must be an integer"),
                                         (True, "must be an integer"), (None, "must be an integer"),
                                         (0, "must be >= 1"), (-5, "must be >= 1")])
def test_integer_fields_refuse_wrong_types_and_ranges(cls, part, name, bad, problem):
    with pytest.raises(FieldError) as e:
        cls(**{name: bad})
    assert e.value.field == f"{part}.{name}" and str(e.value).startswith(f"{part}.{name} {problem}")


@pytest.mark.parametrize("cls,name", [(LLMConfig, "llm.norm_eps"), (LLMConfig, "llm.rope_theta"),
                                      (VisionConfig, "vision.norm_eps")])
@pytest.mark.parametrize("bad", ["1e-6", math.nan, math.inf, 0.0, -1.0, [1.0]])
def test_positive_float_fields(cls, name, bad):
    with pytest.raises(FieldError, match=f"^{name} must be"):
        cls(**{name.split(".")[1]: bad})


def test_other_fields():
    with pytest.raises(FieldError, match="^vq.commit_beta must be >= 0"):
        VQConfig(commit_beta=-0.1)
    assert VQConfig(commit_beta=0.0).commit_beta == 0.0
    with pytest.raises(FieldError, match="^vision.select_layer must be an integer"):
        VisionConfig(select_layer="-1")
    for bad in ((), "12", 4, None):
        with pytest.raises(FieldError, match="^vq.channel_mult must be a non-empty list"):
            VQConfig(channel_mult=bad)
    with pytest.raises(FieldError, match=r"^vq.channel_mult\[1\] must be >= 1"):
        VQConfig(channel_mult=(1, 0, 2))
    with pytest.raises(FieldError, match="^gen_head_dim must be an integer"):
        JanusConfig(gen_head_dim="2048")
    with pytest.raises(FieldError, match="^llm must be a LLMConfig"):
        JanusConfig(llm={"dim": 8})
    with pytest.raises(FieldError, match="^name must be a string"):
        JanusConfig(name=7)


def test_valid_values_are_kept_as_given():
    # An int where a float belongs is kept as it is (checkpoints load bit-exactly as before).
    cfg = LLMConfig(rope_theta=10000, norm_eps=1e-5)
    assert cfg.rope_theta == 10000 and type(cfg.rope_theta) is int
    assert VQConfig(channel_mult=[1, 1, 2, 2, 4]).channel_mult == (1, 1, 2, 2, 4)


def test_from_dict_round_trips_and_names_bad_fields():
    for name in PRESETS:
        cfg = JanusConfig.from_name(name)
        assert JanusConfig.from_dict(cfg.to_dict()) == cfg
    good = JanusConfig.from_name("tiny").to_dict()
    with pytest.raises(ConfigError, match="must be an object, got list"):
        JanusConfig.from_dict([good])
    with pytest.raises(ConfigError, match="unknown config field.*: colour"):
        JanusConfig.from_dict({**good, "colour": "red"})
    with pytest.raises(ConfigError, match="unknown llm field.*: width"):
        JanusConfig.from_dict({**good, "llm": {**good["llm"], "width": 3}})
    with pytest.raises(FieldError, match="^vq must be an object"):
        JanusConfig.from_dict({**good, "vq": None})
    with pytest.raises(FieldError, match="^llm.vocab_size must be >= 1, got -5"):
        JanusConfig.from_dict({**good, "llm": {**good["llm"], "vocab_size": -5}})


def test_presets_and_the_demo_model_name():
    # "janus-shapes" is the trained model shipped with the package, never a random preset.
    assert "janus-shapes" not in PRESETS and "janus-shapes-arch" in PRESETS
    with pytest.raises(ConfigError, match="'janus-shapes' is the shipped demo model.*'janus-shapes-arch'"):
        JanusConfig.from_name("janus-shapes")
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of"):
        JanusConfig.from_name("nope")
    with pytest.raises(ConfigError, match="unknown part 'lm'"):
        JanusConfig.from_name("tiny", **{"lm.dim": 8})
    with pytest.raises(FieldError, match="^llm.n_layers must be >= 1"):
        JanusConfig.from_name("tiny", **{"llm.n_layers": 0})
    # Every preset field survives validation (a rule too strict would break a preset).
    for name in PRESETS:
        cfg = JanusConfig.from_name(name)
        assert all(dataclasses.asdict(cfg)[part] for part in ("llm", "vision", "vq"))
