"""Every CLI command once, on the tiny official-format checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openjanus.cli import main


def test_generate_writes_images_and_tokens(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "gen"
    rc = main(["generate", "--model", str(tiny_checkpoint), "--out", str(out), "-n", "2", "--seed", "7",
               "a red fox in the snow"])
    assert rc == 0
    tokens = np.load(out / "tokens.npy")
    assert tokens.dtype == np.int64 and tokens.shape == (2, 64)
    assert Image.open(out / "image_1.png").size == (32, 32)
    # Same seed, same images.
    main(["generate", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "again"), "-n", "2",
          "--seed", "7", "a red fox in the snow"])
    assert np.array_equal(np.load(tmp_path / "again" / "tokens.npy"), tokens)


def test_chat_prints_only_the_answer(tiny_checkpoint, tiny_pipeline, tmp_path, capsys):
    img = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    rc = main(["chat", "--model", str(tiny_checkpoint), "--image", str(img), "--max-new-tokens", "5",
               "What is in this picture?"])
    assert rc == 0
    out = capsys.readouterr().out
    expected = tiny_pipeline.answer([Image.open(img)], ["What is in this picture?"], max_new_tokens=5)[0]
    assert out.strip() == expected


def test_chat_interactive(tiny_checkpoint, monkeypatch, capsys):
    lines = iter(["hello there", "and again", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--model", str(tiny_checkpoint), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one answer line per turn


def test_vq_prints_psnr(tiny_checkpoint, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    assert main(["vq", "--model", str(tiny_checkpoint), str(img), "--out", str(tmp_path / "r.png")]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert Image.open(tmp_path / "r.png").size == (32, 32)


def test_info_counts_parts(capsys):
    assert main(["info", "--model", "janus-pro-7b", "--dtype", "bfloat16", "-n", "16"]) == 0
    out = capsys.readouterr().out
    assert "7,420,434,059" in out
    assert "language" not in out and "llm" in out


def _gib(out: str, label: str) -> float:
    line = next(line for line in out.splitlines() if label in line and "GiB" in line)
    return float(line.split(label)[1].split("GiB")[0].strip(" :"))


def test_info_states_what_a_batch_needs_per_format(capsys):
    """Janus-Pro-7B, 16 images with CFG: bf16 weights 13.8 GiB + 9.4 GiB of cache overflow a
    24 GB card with activations; int8 LLM/heads bring it to ~17 GiB in one batch (the issue's
    memory target); the default 4 GiB KV budget runs it in batches instead."""
    argv = ["info", "--model", "janus-pro-7b", "-n", "16", "--dtype", "bfloat16"]
    assert main(argv + ["--kv-cache-gib", "12"]) == 0
    bf16 = capsys.readouterr().out
    assert main(argv + ["--quantize", "int8", "--kv-cache-gib", "12"]) == 0
    int8 = capsys.readouterr().out
    assert _gib(int8, "weights:") < 0.6 * _gib(bf16, "weights:")
    assert "KV cache: 9.375 GiB for 32 rows x 640 positions" in int8
    assert _gib(int8, "together:") < 24 * 10**9 / 2**30 - 4  # room left for activations on a 24 GB card
    assert main(argv + ["--quantize", "int8"]) == 0
    assert "16 run as batches of 6" in capsys.readouterr().out
    # The engine's row cap (64 rows = 32 images) splits a batch the KV budget alone would hold.
    big = ["info", "--model", "janus-pro-1b", "-n", "64", "--dtype", "bfloat16", "--kv-cache-gib", "100"]
    assert main(big) == 0
    assert "64 run as batches of 32" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--model", "/nonexistent/dir", "--out", "x", "p"], "neither a checkpoint folder"),
    (["chat", "--model", "tiny", "--image", "/nonexistent.png", "q"], "nonexistent.png"),
    (["generate", "--model", "tiny", "--out", "OUT", "--temperature", "-1", "p"], "temperature"),
    (["generate", "--model", "tiny", "--out", "OUT", "--top-p", "2", "p"], "top_p"),
])
def test_errors_are_one_line(argv, needle, capsys, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    # Presets (random weights) say so on a "note:" line of their own; the error is one line.
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:"))
    assert err.startswith("error:") and needle in err and "\n" not in err


def test_corrupt_image_and_wrong_checkpoint(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    assert main(["chat", "--model", str(tiny_checkpoint), "--image", str(bad), "q"]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    # A checkpoint whose weights do not fit its config: one clear error naming the problem.
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["openjanus"]["llm"]["n_layers"] = 3
    (broken / "config.json").write_text(json.dumps(cfg))
    assert main(["info", "--model", str(broken)]) == 0  # info reads only the config
    assert main(["generate", "--model", str(broken), "--out", str(tmp_path / "o"), "p"]) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "llm.layers.2" in err


def test_demo_writes_report_and_scores(tiny_checkpoint, tmp_path):
    import json

    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_checkpoint), "--out", str(out), "--per-category", "1",
                 "--n-images", "4"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["headline"]) == {"heldout", "train"}
    assert set(scores["headline"]["heldout"]) == {"generation_overall", "yes_no_accuracy", "counting_accuracy"}
    page = (out / "report.html").read_text()
    assert "a photo of a red star" in page and page.count("<img") >= 7 * 4


@pytest.mark.parametrize("argv", [
    ["chat", "--model", "tiny", "hi"],
    ["generate", "--model", "tiny", "--out", "OUT", "x"],
    ["eval", "geneval-shapes", "--out", "OUT"],
    ["eval", "pope-shapes", "--out", "OUT"],
    ["demo", "--out", "OUT"],
    ["serve", "--model", "tiny"],
])
def test_every_command_that_loads_a_model_honours_quantize(argv, monkeypatch, tmp_path):
    """--quantize is one of the shared model flags: no command may accept it and ignore it."""
    from openjanus.errors import UserError
    from openjanus.inference.pipeline import JanusPipeline

    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(JanusPipeline, "load", fake_load)
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv + ["--quantize", "int8"]) == 2
    assert seen.get("quantize") == "int8"


def test_generate_writes_run_json_with_every_setting(tmp_path):
    out = tmp_path / "run"
    argv = ["generate", "--model", "tiny", "--out", str(out), "-n", "2", "--seed", "3", "--guidance", "4.5",
            "--dtype", "bfloat16", "--quantize", "int8", "--top-k", "50", "a red circle", "a blue square"]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == "tiny" and run["dtype"] == "bfloat16" and run["quantize"] == "int8"
    assert run["weights"] == "tiny, bfloat16, int8 LLM and heads"
    assert (run["n"], run["seed"], run["guidance"], run["top_k"], run["jacobi"]) == (2, 3, 4.5, 50, 0)
    assert run["prompts"] == ["a red circle", "a blue square"] and run["kv_cache_gib"] == 4.0
    assert run["seconds"] > 0 and run["forward_passes"] > 0 and run["tokens_per_image"] == 64
    # Prompt i uses seed + i; every image names its prompt and seed.
    assert [(f["prompt"], f["seed"]) for f in run["images"]] == [("a red circle", 3)] * 2 + [("a blue square", 4)] * 2
    assert all((out / f["file"]).is_file() for f in run["images"])
