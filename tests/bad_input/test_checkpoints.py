"""Broken, hostile or mislabelled checkpoint folders: one line naming the file and the field,
through the Python API (UserError) and the CLI (exit code 2). Valid folders still load."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REFERENCE
from PIL import Image
from safetensors.torch import load_file, save_file

from bad_input import cli_error
from openjanus.checkpoints import hf, load_model, official, read_config
from openjanus.config import JanusConfig
from openjanus.errors import CheckpointError, UserError
from openjanus.inference.pipeline import DEMO_MODEL_DIR, JanusPipeline

POISONED = ["language_model.model.layers.1.mlp.down_proj.weight", "gen_head.vision_head.weight"]


def broken_copy(ckpt: Path, tmp_path: Path, edit: Callable[[Path], object], name: str = "ckpt") -> Path:
    folder = tmp_path / name
    shutil.copytree(ckpt, folder)
    edit(folder)
    return folder


def edit_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        change(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    return edit


def write_text(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def edit_tensors(change: Callable[[dict[str, torch.Tensor]], object]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors")
    return edit


def set_llm(field: str, value) -> Callable[[Path], None]:
    return edit_config(lambda c: c["openjanus"]["llm"].__setitem__(field, value))


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return path


def assert_refused(folder: Path, image: Path, capsys, *needles: str, **load_kwargs) -> None:
    """The API raises UserError and the CLI exits 2, both with one line holding every needle."""
    with pytest.raises(UserError) as e:
        JanusPipeline.load(str(folder), device="cpu", **load_kwargs)
    message = str(e.value)
    assert "\n" not in message and all(n in message for n in needles), message
    flags = ["--check-finite"] if load_kwargs.get("check_finite") else []
    line = cli_error(["vq", "--model", str(folder), *flags, str(image)], capsys)
    assert all(n in line for n in needles), line


# --- config.json --------------------------------------------------------------------------------

CONFIG_CASES = {
    "a JSON list": (write_text("config.json", "[1, 2]"), ["config.json", "expected a JSON object, got a list"]),
    "null": (write_text("config.json", "null"), ["config.json", "got null"]),
    "a number": (write_text("config.json", "3"), ["config.json", "got a number"]),
    "empty": (write_text("config.json", ""), ["config.json", "invalid JSON"]),
    "truncated": (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:100]),
                  ["config.json", "invalid JSON"]),
    "not UTF-8": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe{}"), ["config.json", "invalid JSON"]),
    "a string vocab size": (set_llm("vocab_size", "512"),
                            ["config.json", "openjanus.llm.vocab_size must be an integer, got '512'"]),
    "a negative vocab size": (set_llm("vocab_size", -5), ["config.json", "openjanus.llm.vocab_size must be >= 1"]),
    "a float layer count": (set_llm("n_layers", 2.5), ["openjanus.llm.n_layers must be an integer"]),
    "a NaN epsilon": (set_llm("norm_eps", float("nan")), ["openjanus.llm.norm_eps must be a finite number"]),
    "an unknown field": (set_llm("width", 3), ["config.json", "unknown llm field(s): width"]),
    "a part that is a list": (edit_config(lambda c: c["openjanus"].__setitem__("vq", [1])),
                              ["config.json", "openjanus.vq must be an object"]),
    "an indivisible width": (set_llm("n_heads", 5), ["config.json", "not divisible by n_heads 5"]),
    "another model type": (edit_config(lambda c: c.update(model_type="llama")), ["not a Janus checkpoint"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_json_is_one_line(case, tiny_checkpoint, tmp_path, image, capsys):
    edit, needles = CONFIG_CASES[case]
    folder = broken_copy(tiny_checkpoint, tmp_path, edit)
    assert_refused(folder, image, capsys, *needles)
    # `info` reads only the config, and refuses it the same way.
    assert all(n in cli_error(["info", "--model", str(folder)], capsys) for n in needles)


def official_release_config(change: Callable[[dict], object]) -> dict:
    cfg = json.loads((REFERENCE / "configs" / "Janus-Pro-1B" / "config.json").read_text())
    change(cfg)
    return cfg


def _set(block: str, field: str, value, params: bool = False) -> Callable[[dict], None]:
    return lambda c: (c[block]["params"] if params else c[block]).__setitem__(field, value)


OFFICIAL_CASES = [
    (_set("language_config", "vocab_size", "102400"), "language_config.vocab_size must be an integer"),
    (_set("language_config", "vocab_size", -1), "language_config.vocab_size must be >= 1, got -1"),
    (_set("language_config", "hidden_size", None), "language_config.hidden_size must be an integer, got None"),
    (_set("language_config", "num_hidden_layers", 0), "language_config.num_hidden_layers must be >= 1"),
    (_set("language_config", "rms_norm_eps", "1e-6"), "language_config.rms_norm_eps must be a finite number"),
    (_set("language_config", "rope_theta", -1.0), "language_config.rope_theta must be > 0"),
    (_set("language_config", "max_position_embeddings", 0), "language_config.max_position_embeddings must be >= 1"),
    (lambda c: c.__setitem__("language_config", [1, 2]), "language_config must be an object"),
    (_set("vision_config", "params", [384]), "vision_config.params must be an object"),
    (_set("vision_config", "image_size", "384", params=True), "vision_config.params.image_size must be an integer"),
    (_set("vision_config", "select_layer", 1.5, params=True), "vision_config.params.select_layer must be an integer"),
    (_set("gen_vision_config", "image_token_size", -3, params=True),
     "gen_vision_config.params.image_token_size must be >= 1"),
    (_set("gen_head_config", "image_token_embed", "2048", params=True),
     "gen_head_config.params.image_token_embed must be an integer"),
    (lambda c: c.pop("aligner_config"), "missing 'aligner_config'"),
]


@pytest.mark.parametrize("change,needle", OFFICIAL_CASES)
def test_official_layout_names_the_json_field(change, needle, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(official_release_config(change)))
    with pytest.raises(CheckpointError) as e:
        read_config(tmp_path)
    assert str(e.value) == f"{tmp_path / 'config.json'}: {needle}" or (
        str(e.value).startswith(f"{tmp_path / 'config.json'}: ") and needle in str(e.value)), str(e.value)
    assert "config.json: config.json" not in str(e.value)
    assert needle in cli_error(["info", "--model", str(tmp_path)], capsys)


def test_official_release_configs_still_parse():
    for folder, preset in (("Janus-Pro-1B", "janus-pro-1b"), ("Janus-Pro-7B", "janus-pro-7b")):
        cfg = official.config_from_official(json.loads((REFERENCE / "configs" / folder / "config.json").read_text()))
        want = JanusConfig.from_name(preset)
        assert (cfg.llm, cfg.vision, cfg.vq, cfg.gen_head_dim) == (want.llm, want.vision, want.vq, want.gen_head_dim)


HF_CASES = [
    ("text_config", "vocab_size", "512", "text_config.vocab_size must be an integer"),
    ("text_config", "num_attention_heads", -4, "text_config.num_attention_heads must be >= 1"),
    ("text_config", "rope_parameters", {"rope_theta": "big"},
     "text_config.rope_parameters.rope_theta must be a finite number"),
    ("text_config", "rope_parameters", [1], "text_config.rope_parameters=[1] is not an object"),
    ("vision_config", "mlp_ratio", "4", "vision_config.mlp_ratio must be a finite number"),
    ("vision_config", "hidden_size", [32], "vision_config.hidden_size must be an integer"),
    ("vision_config", "patch_size", 0, "vision_config.patch_size must be >= 1"),
    ("vq_config", "num_embeddings", 0, "vq_config.num_embeddings must be >= 1"),
    ("vq_config", "channel_multiplier", [1, "2"], "vq_config.channel_multiplier[1] must be an integer"),
    ("vq_config", "beta", None, "vq_config.beta must be a finite number"),
]


@pytest.mark.parametrize("part,field,value,needle", HF_CASES)
def test_hf_layout_names_the_json_field(part, field, value, needle, tmp_path, capsys):
    raw = hf.config_to_hf(JanusConfig.from_name("tiny", **{"vq.image_size": 16}), "float32")
    raw[part][field] = value
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as e:
        read_config(tmp_path)
    assert needle in str(e.value) and str(e.value).startswith(str(tmp_path / "config.json"))
    assert needle in cli_error(["info", "--model", str(tmp_path)], capsys)


# --- tokenizer and processor files -------------------------------------------------------------

TOKENIZER_CASES = {
    "empty tokenizer.json": (write_text("tokenizer.json", ""),
                             ["tokenizer.json", "cannot read the tokenizer", "EOF while parsing"]),
    "truncated tokenizer.json": (lambda f: (f / "tokenizer.json").write_text((f / "tokenizer.json").read_text()[:300]),
                                 ["tokenizer.json", "cannot read the tokenizer"]),
    "tokenizer.json that is a list": (write_text("tokenizer.json", "[]"), ["tokenizer.json", "cannot read"]),
    "missing tokenizer.json": (lambda f: (f / "tokenizer.json").unlink(), ["no tokenizer.json"]),
    "tokenizer_config.json that is a list": (write_text("tokenizer_config.json", "[]"),
                                             ["tokenizer_config.json", "does not hold a JSON object"]),
    "broken special_tokens_map.json": (write_text("special_tokens_map.json", "{"),
                                       ["special_tokens_map.json", "cannot parse"]),
    "a number as a token tag": (write_text("processor_config.json", '{"pad_tag": 5}'),
                                ["processor_config.json", "pad_tag must be a token string, got 5"]),
    "a tokenizer larger than the model": (lambda f: shutil.copy(DEMO_MODEL_DIR / "tokenizer.json", f),
                                          ["tokenizer has", "model vocab is 512"]),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_bad_tokenizer_files_are_one_line(case, tiny_checkpoint, tmp_path, image, capsys):
    edit, needles = TOKENIZER_CASES[case]
    assert_refused(broken_copy(tiny_checkpoint, tmp_path, edit), image, capsys, *needles)


# --- weight files -------------------------------------------------------------------------------


def shard_index(weight_map: dict) -> Callable[[Path], None]:
    return write_text("model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": weight_map}))


def all_keys_to(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        keys = load_file(folder / "model.safetensors").keys()
        shard_index({k: name for k in keys})(folder)
    return edit


WEIGHT_CASES = {
    "an index that is a list": (write_text("model.safetensors.index.json", "[]"),
                                ["model.safetensors.index.json", "not a valid shard index"]),
    "an index without weight_map": (write_text("model.safetensors.index.json", "{}"),
                                    ["model.safetensors.index.json", "'weight_map'"]),
    "an index that is not JSON": (write_text("model.safetensors.index.json", "{"), ["not a valid shard index"]),
    "a weight_map that is a list": (write_text("model.safetensors.index.json", '{"weight_map": ["a"]}'),
                                    ["not a valid shard index"]),
    "a shard name that is a number": (shard_index({"x": 3}), ["weight_map['x'] is 3, not a file name"]),
    "a missing shard": (shard_index({"x": "model-00002-of-00002.safetensors"}),
                        ["lists shards that are missing: model-00002-of-00002.safetensors"]),
    "a corrupt safetensors file": (write_text("model.safetensors", "garbage"),
                                   ["model.safetensors", "cannot read safetensors file"]),
    "no weight files": (lambda f: (f / "model.safetensors").unlink(), ["no *.safetensors or *.bin weight files"]),
    "an integer tensor": (edit_tensors(lambda s: s.__setitem__(POISONED[0], s[POISONED[0]].to(torch.int64))),
                          ["llm.layers.1.mlp.down_proj.weight has dtype int64; the model needs floating point"]),
    "a bool tensor": (edit_tensors(lambda s: s.__setitem__(POISONED[1], s[POISONED[1]] > 0)),
                      ["gen_head.out.weight has dtype bool"]),
    "weights of another size": (set_llm("n_layers", 3), ["does not match the model", "missing keys"]),
}


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_bad_weight_files_are_refused(case, tiny_checkpoint, tmp_path, image, capsys):
    edit, needles = WEIGHT_CASES[case]
    folder = broken_copy(tiny_checkpoint, tmp_path, edit)
    if case == "weights of another size":
        # Listing every missing key is the one multi-line error: check the API only.
        with pytest.raises(CheckpointError, match="missing keys.*llm.layers.2"):
            JanusPipeline.load(str(folder), device="cpu")
        return
    assert_refused(folder, image, capsys, *needles)


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "ABSOLUTE"])
def test_shards_outside_the_folder_are_never_read(name, tiny_checkpoint, tmp_path, image, capsys):
    # A complete, valid shard waits outside the folder: following the index would load it.
    outside = tmp_path / "outside.safetensors"
    shutil.copy(tiny_checkpoint / "model.safetensors", outside)
    name = str(outside) if name == "ABSOLUTE" else name

    def edit(folder: Path) -> None:
        all_keys_to(name)(folder)
        (folder / "model.safetensors").unlink()
    folder = broken_copy(tiny_checkpoint, tmp_path, edit)
    assert_refused(folder, image, capsys, "model.safetensors.index.json", "points outside the checkpoint folder")


def test_shards_in_a_subfolder_or_linked_from_a_cache_still_load(tiny_checkpoint, tmp_path):
    want = load_model(tiny_checkpoint).state_dict()

    def subfolder(folder: Path) -> None:
        all_keys_to("weights/model.safetensors")(folder)
        (folder / "weights").mkdir()
        (folder / "model.safetensors").rename(folder / "weights" / "model.safetensors")

    def hub_cache(folder: Path) -> None:
        # The hub's cache: the snapshot folder links each file to a blob outside it.
        all_keys_to("model.safetensors")(folder)
        blob = tmp_path / "blobs" / "3f2a"
        blob.parent.mkdir()
        (folder / "model.safetensors").rename(blob)
        (folder / "model.safetensors").symlink_to(blob)

    for name, edit in (("sub", subfolder), ("cache", hub_cache)):
        got = load_model(broken_copy(tiny_checkpoint, tmp_path, edit, name=name)).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


# --- non-finite weights -------------------------------------------------------------------------


def test_nan_weights_are_refused_with_check_finite(tiny_checkpoint, tmp_path, image, capsys):
    def poison(state: dict[str, torch.Tensor]) -> None:
        for key in POISONED:
            state[key] = state[key].clone()
            state[key].view(-1)[3] = float("nan")
        state[POISONED[1]].view(-1)[4] = float("inf")
    folder = broken_copy(tiny_checkpoint, tmp_path, edit_tensors(poison))
    # Without the check it loads as before (the weights are taken as they are) ...
    assert torch.isnan(load_model(folder).llm.layers[1].mlp.down_proj.weight).any()
    # ... with it, the first non-finite tensor in the model's order (the image head comes before
    # the LLM's layers) is named, with the counts.
    assert_refused(folder, image, capsys, "tensor gen_head.out.weight holds non-finite values",
                   "(1 NaN, 1 inf of 4096)", check_finite=True)
    with pytest.raises(CheckpointError, match="gen_head.out.weight holds non-finite"):
        load_model(folder, check_finite=True)


def test_check_finite_catches_an_overflowing_cast(tiny_checkpoint, tmp_path):
    def huge(state: dict[str, torch.Tensor]) -> None:
        state[POISONED[1]] = state[POISONED[1]].clone()
        state[POISONED[1]].view(-1)[0] = 1e6  # finite in fp32, inf in fp16
    folder = broken_copy(tiny_checkpoint, tmp_path, edit_tensors(huge))
    load_model(folder, dtype=torch.float16)  # no check asked: loads
    load_model(folder, dtype=torch.float32, check_finite=True)
    with pytest.raises(CheckpointError, match=r"gen_head.out.weight overflows float16 \(values up to 1e\+06\)"):
        load_model(folder, dtype=torch.float16, check_finite=True)


def test_check_finite_passes_valid_checkpoints_unchanged(tiny_checkpoint):
    plain = load_model(tiny_checkpoint).state_dict()
    checked = load_model(tiny_checkpoint, check_finite=True).state_dict()
    assert all(torch.equal(plain[k], checked[k]) for k in plain)


# --- folders and names --------------------------------------------------------------------------


def test_missing_and_wrong_folders(tmp_path, image, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [(tmp_path / "nowhere", "neither a checkpoint folder nor a known name"),
             (tmp_path / "empty", "not a checkpoint folder (no config.json)"),
             (tmp_path / "file.txt", "is a file; pass the checkpoint folder")]
    for folder, needle in cases:
        with pytest.raises(UserError, match=re.escape(needle)):
            JanusPipeline.load(str(folder), device="cpu")
        assert needle in cli_error(["vq", "--model", str(folder), str(image)], capsys)


def test_the_demo_model_has_one_name(capsys, monkeypatch):
    monkeypatch.setattr("openjanus.inference.pipeline._RANDOM_NOTICE_SHOWN", set())  # whatever ran before
    # "janus-shapes" is the shipped, trained model, the same as giving no --model at all.
    named = JanusPipeline.load("janus-shapes", device="cpu")
    default = JanusPipeline.load(None, device="cpu")
    assert named.name == default.name == "janus-shapes"
    assert all(torch.equal(a, b) for a, b in zip(named.model.state_dict().values(),
                                                  default.model.state_dict().values()))
    assert capsys.readouterr().err == ""  # trained weights: no random-weights note
    # Its architecture alone, with random weights, is a preset of another name, which says so once.
    arch = JanusPipeline.load("janus-shapes-arch", device="cpu")
    JanusPipeline.load("janus-shapes-arch", device="cpu")
    err = capsys.readouterr().err
    assert err.count("note: 'janus-shapes-arch' is a preset: RANDOM weights") == 1 and err.count("\n") == 1
    assert arch.model.cfg.llm == named.model.cfg.llm
    assert not torch.equal(arch.model.llm.embed.weight, named.model.llm.embed.weight)


def test_an_existing_folder_wins_over_a_preset_name(tiny_checkpoint, tmp_path, monkeypatch):
    shutil.copytree(tiny_checkpoint, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert JanusPipeline.load("tiny", device="cpu").name == "tiny"
    assert torch.equal(JanusPipeline.load("tiny", device="cpu", dtype="float32").model.llm.embed.weight,
                       load_model(tiny_checkpoint).llm.embed.weight)
