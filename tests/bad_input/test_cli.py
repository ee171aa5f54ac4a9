"""Careless or hostile command lines: one clear line and exit code 2, never a traceback.
Also what the CLI promises a user: --version, defaults in --help, chat commands."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from bad_input import cli_error
from openjanus import __version__
from openjanus.cli import MAX_SEED, main
from openjanus.errors import UserError
from openjanus.inference.pipeline import JanusPipeline
from openjanus.requests import ChatRequest, Message


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return str(path)


# --- flags: refused by argparse before any model is loaded ----------------------------------------

FLAG_CASES = [
    (["generate", "--out", "OUT", "--seed", str(2**63), "p"],
     "argument --seed: must be in [0, 9223372036854775807], got 9223372036854775808"),
    (["generate", "--out", "OUT", "--seed", str(10**30), "p"], "argument --seed: must be in [0,"),
    (["generate", "--out", "OUT", "--seed", "-1", "p"], "argument --seed: must be in [0,"),
    (["chat", "--seed", "1.5", "q"], "argument --seed: expected an integer, got '1.5'"),
    (["vq", "--seed", "x", "img.png"], "argument --seed: expected an integer"),
    (["generate", "--out", "OUT", "--temperature", "nan", "p"],
     "argument --temperature: must be a finite number, got 'nan'"),
    (["chat", "--temperature", "inf", "q"], "argument --temperature: must be a finite number"),
    (["generate", "--out", "OUT", "--temperature", "hot", "p"],
     "argument --temperature: expected a number, got 'hot'"),
    (["generate", "--out", "OUT", "--guidance", "nan", "p"], "argument --guidance: must be a finite number"),
    (["generate", "--out", "OUT", "--guidance=-inf", "p"], "argument --guidance: must be a finite number"),
    (["generate", "--out", "OUT", "--top-p", "inf", "p"], "argument --top-p: must be a finite number"),
    (["generate", "--out", "OUT", "--top-k", "-1", "p"], "argument --top-k: must be >= 0, got -1"),
    (["generate", "--out", "OUT", "-n", "0", "p"], "argument -n: must be >= 1, got 0"),
    (["chat", "--max-new-tokens", "0", "q"], "argument --max-new-tokens: must be >= 1"),
    (["info", "-n", "0"], "argument -n: must be >= 1"),
    (["chat", "--roles", "klingon", "q"], "argument --roles: invalid choice: 'klingon'"),
    (["generate", "p"], "the following arguments are required: --out"),
    (["transmogrify"], "argument COMMAND: invalid choice: 'transmogrify'"),
]


@pytest.mark.parametrize("argv,needle", FLAG_CASES)
def test_bad_flags_are_one_line(argv, needle, capsys, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    line = cli_error(argv, capsys)
    assert needle in line and line.endswith("--help)")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_the_largest_seed_is_accepted(tmp_path):
    out = tmp_path / "gen"
    assert main(["generate", "--model", "tiny", "--seed", str(MAX_SEED), "--out", str(out), "p"]) == 0
    assert (out / "image_0.png").is_file()
    torch.Generator().manual_seed(MAX_SEED)  # the bound is torch's own


# --- values only the model can judge: one line after loading ---------------------------------------

VALUE_CASES = [
    (["generate", "--model", "tiny", "--temperature", "-1", "--out", "OUT", "p"], "temperature must be >= 0"),
    (["generate", "--model", "tiny", "--top-p", "2", "--out", "OUT", "p"], "top_p must be in (0, 1]"),
    (["generate", "--model", "tiny", "--dtype", "float8", "--out", "OUT", "p"], "invalid dtype 'float8'"),
    (["vq", "--model", "tiny", "--device", "tpu", "IMG"], "invalid device 'tpu'"),
    (["chat", "--model", "tiny", "--image", "/nonexistent.png", "q"], "/nonexistent.png"),
    (["vq", "--model", "nonexistent-model", "IMG"], "neither a checkpoint folder nor a known name"),
]


@pytest.mark.parametrize("argv,needle", VALUE_CASES)
def test_bad_values_are_one_line(argv, needle, capsys, tmp_path, image):
    argv = [str(tmp_path / "o") if a == "OUT" else image if a == "IMG" else a for a in argv]
    assert needle in cli_error(argv, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, image):
    assert "CUDA is not available" in cli_error(["vq", "--model", "tiny", "--device", "cuda", image], capsys)


def test_corrupt_and_missing_images(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for path in (bad, truncated, tmp_path / "missing.png"):
        assert path.name in cli_error(["chat", "--model", str(tiny_checkpoint), "--image", str(path), "q"], capsys)
        assert path.name in cli_error(["vq", "--model", str(tiny_checkpoint), str(path)], capsys)


def test_check_finite_flag_passes_a_valid_checkpoint(tiny_checkpoint, image, capsys):
    assert main(["vq", "--model", str(tiny_checkpoint), "--check-finite", image]) == 0
    assert "PSNR" in capsys.readouterr().out


# --- the context budget ---------------------------------------------------------------------------


def test_prompt_budget_names_prompt_context_and_max_new_tokens(capsys):
    # The tiny preset's context is 512 tokens; the default 512 new tokens leave no room for a prompt.
    line = cli_error(["chat", "--model", "tiny", "--max-new-tokens", "512", "what is this?"], capsys)
    assert "new tokens were requested, but the model's context is 512 tokens" in line
    assert "prompt is " in line and " 512 new tokens" in line and "lower max_new_tokens to at most" in line
    prompt_len = int(line.split("prompt is ")[1].split()[0])
    assert line.endswith(f"at most {512 - prompt_len}")
    assert "max_len" not in line


def test_tiny_chats_with_the_default_answer_length(capsys):
    # Without --max-new-tokens the answer takes what the context leaves (up to 512).
    assert main(["chat", "--model", "tiny", "--max-new-tokens", "3", "what is this?"]) == 0
    assert main(["chat", "--model", "tiny", "what is this?"]) == 0


def test_prompt_longer_than_a_small_context(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "short"
    shutil.copytree(tiny_checkpoint, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["openjanus"]["llm"]["max_seq_len"] = 20  # RoPE is computed, so the weights still fit
    (folder / "config.json").write_text(json.dumps(cfg))
    question = "describe the image in detail, please, with every colour and every shape"
    pipe = JanusPipeline.load(str(folder), device="cpu")
    with pytest.raises(UserError, match=r"prompt is \d+ tokens and 4 new tokens were requested, but the "
                                        r"model's context is 20 tokens: shorten the prompt"):
        pipe.submit(ChatRequest([Message("user", question)], max_new_tokens=4))
    line = cli_error(["chat", "--model", str(folder), "--max-new-tokens", "4", question], capsys)
    assert "the model's context is 20 tokens" in line and "-" not in line.split("context")[1]


# --- interactive chat -----------------------------------------------------------------------------


def test_interactive_chat_refuses_unknown_commands(tiny_checkpoint, monkeypatch, capsys):
    lines = iter(["/help", "/imag photo.png", "/image", "/image /nonexistent.png", "/quit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing reached the model: no answer was printed
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors[:3] == ["error: unknown command '/help'; commands: /image PATH, /reset, /quit",
                          "error: unknown command '/imag'; commands: /image PATH, /reset, /quit",
                          "error: unknown command '/image'; commands: /image PATH, /reset, /quit"]
    assert len(errors) == 4 and "/nonexistent.png" in errors[3]


def test_interactive_chat_still_answers_after_a_refused_command(tiny_checkpoint, monkeypatch, capsys):
    lines = iter(["/nope", "hello there", "/reset", "again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one answer per message, none for commands


# --- --version, --help, model names --------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"openjanus {__version__}"


@pytest.mark.parametrize("argv,shown", [
    (["generate", "--help"], ["guidance weight (default: 5.0)", "(default: 1.0)", "(default: 0)",
                              "images per prompt (default: 1)", "(default: auto)"]),
    (["chat", "--help"], ["what the context leaves, up to 512", "0 = greedy (default: 0.0)"]),
    (["info", "--help"], ["(default: 64)"]),
    (["eval", "pope-shapes", "--help"], ["(default: "]),  # commands registered elsewhere too
])
def test_help_shows_defaults(argv, shown, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert e.value.code == 0 and all(s in out for s in shown), out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_info_knows_the_demo_model_by_name(capsys):
    assert main(["info"]) == 0
    default = capsys.readouterr().out
    assert main(["info", "--model", "janus-shapes"]) == 0
    named = capsys.readouterr().out
    total = [line for line in default.splitlines() if "total" in line]
    assert total and total == [line for line in named.splitlines() if "total" in line]
    assert main(["info", "--model", "janus-shapes-arch"]) == 0  # the preset: same architecture
    assert total == [line for line in capsys.readouterr().out.splitlines() if "total" in line]


def test_random_weight_presets_say_so_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("openjanus.inference.pipeline._RANDOM_NOTICE_SHOWN", set())
    for i in range(2):
        assert main(["generate", "--model", "tiny", "--out", str(tmp_path / f"o{i}"), "p"]) == 0
    err = capsys.readouterr().err
    assert err.count("RANDOM weights") == 1 and "note: 'tiny' is a preset" in err
