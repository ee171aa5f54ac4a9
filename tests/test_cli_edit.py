"""`openjanus edit` and `openjanus generate --size`: files written, what run.json records, and
bad input as one line with exit code 2 (nothing written)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from openjanus.cli import main


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    a = np.full((32, 48, 4), 255, dtype=np.uint8)
    a[16:, :, 3] = 0
    Image.fromarray(a, "RGBA").save(tmp_path / "mask.png")
    return tmp_path


def test_edit_with_a_mask_writes_images_tokens_and_run(tiny_checkpoint, files, capsys):
    out = files / "out"
    rc = main(["edit", "--model", str(tiny_checkpoint), "--image", str(files / "in.png"), "--mask",
               str(files / "mask.png"), "-n", "2", "--out", str(out), "a red", "circle"])
    assert rc == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["prompts"] == ["a red circle"] and run["image_size"] == [48, 32] and run["token_grid"] == [8, 12]
    assert np.load(out / "tokens.npy").shape == (2, 96)
    assert Image.open(out / "image_1.png").size == (48, 32)
    assert run["keep_pixels"] is True
    kept = np.asarray(Image.open(out / "image_0.png"))
    assert np.array_equal(kept[:16], np.asarray(Image.open(files / "in.png"))[:16])  # the source's own pixels
    assert main(["edit", "--model", str(tiny_checkpoint), "--image", str(files / "in.png"), "--mask",
                 str(files / "mask.png"), "--no-keep-pixels", "--out", str(files / "vq"), "a red circle"]) == 0
    assert json.loads((files / "vq" / "run.json").read_text())["keep_pixels"] is False
    assert not np.array_equal(np.asarray(Image.open(files / "vq" / "image_0.png"))[:16], kept[:16])


@pytest.mark.parametrize("extra,size,grid", [(["--outpaint", "right=10"], [58, 32], [8, 15]),
                                             (["--region", "0,0,24,16", "--size", "64x32"], [64, 32], [8, 16])])
def test_edit_outpaint_and_region(tiny_checkpoint, files, extra, size, grid):
    out = files / "out"
    assert main(["edit", "--model", str(tiny_checkpoint), "--image", str(files / "in.png"), *extra, "--out", str(out),
                 "more"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["image_size"] == size and run["token_grid"] == grid
    assert Image.open(out / "image_0.png").size == tuple(size)


def test_generate_size(tiny_checkpoint, tmp_path):
    assert main(["generate", "--model", str(tiny_checkpoint), "--size", "64x32", "--out", str(tmp_path / "o"),
                 "a star"]) == 0
    assert Image.open(tmp_path / "o" / "image_0.png").size == (64, 32)
    assert np.load(tmp_path / "o" / "tokens.npy").shape == (1, 128)


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--size", "34x32", "p"], "not a multiple of 4"),
    (["generate", "--size", "1024x32", "p"], "outside 32..128"),
    (["generate", "--size", "wide", "p"], "WIDTHxHEIGHT"),
    (["edit", "--image", "{in}", "p"], "no transparency"),
    (["edit", "--image", "{in}", "--region", "0,0,99,8", "p"], "not a non-empty box"),
    (["edit", "--image", "{in}", "--region", "0,0,8", "p"], "x0,y0,x1,y1"),
    (["edit", "--image", "{in}", "--mask", "{in}", "p"], "no alpha channel"),
    (["edit", "--image", "{missing}", "--region", "0,0,8,8", "p"], "no such file"),
    (["edit", "--image", "{in}", "--mask", "{mask}", "--region", "0,0,8,8", "p"], "not allowed with"),
    (["edit", "--image", "{in}", "--outpaint", "east=4", "p"], "SIDE=PIXELS"),
    (["edit", "--image", "{in}", "--outpaint", "left=400", "p"], "above this model's limit"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny_checkpoint, files, argv, needle, capsys):
    argv = [a.format(**{"in": files / "in.png", "mask": files / "mask.png", "missing": files / "nope.png"})
            for a in argv]
    assert exit_code([argv[0], "--model", str(tiny_checkpoint), "--out", str(files / "o"), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err
    assert not (files / "o").exists()


def exit_code(argv: list[str]) -> int:
    """main's return code, or argparse's exit code for a flag it refuses itself."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_info_states_tokens_windows_and_memory_of_a_size(capsys):
    assert main(["info", "--model", "janus-pro-1b", "--dtype", "bfloat16", "--size", "768x384"]) == 0
    out = capsys.readouterr().out
    assert "768x384: 24 x 48 = 1152 image tokens (2.00 x native); 3 windows of 24 x 24 (overlap 0.5) in 3 waves" in out
    # one window at a time: the KV cache of one native image, 2 rows x (64 + 576) positions x 24 layers x 2 x 2048 x 2 B
    assert "KV cache: 0.234 GiB for 1 image(s) (1 window(s) x 2 rows x 640 positions)" in out
    assert "128 channels x 768 x 384" in out
    assert exit_code(["info", "--model", "janus-pro-1b", "--size", "770x384"]) == 2
