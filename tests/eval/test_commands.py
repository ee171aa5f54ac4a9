"""`openjanus eval ...` sub-commands, including both benchmarks with the real tiny model on CPU."""

from __future__ import annotations

import argparse
import json

import pytest

from openjanus.eval.commands import register


def _run(argv):
    parser = argparse.ArgumentParser(prog="openjanus")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_export_and_write_shapes(tmp_path, capsys):
    _run(["eval", "export-dataset", "--kind", "und", "-n", "30", "--shard-size", "10", "--out", str(tmp_path / "d")])
    assert len(list((tmp_path / "d").glob("shard-*.jsonl"))) == 3
    _run(["eval", "write-shapes", "--per-category", "2", "--images", "4", "--out", str(tmp_path / "w")])
    assert sum(1 for _ in (tmp_path / "w" / "geneval" / "evaluation_metadata.jsonl").open()) == 12
    assert (tmp_path / "w" / "understanding" / "pope" / "shapes_pope_adversarial.json").is_file()


def test_scorer_accuracy_command(tmp_path, capsys):
    _run(["eval", "scorer-accuracy", "-n", "6", "--strengths", "0.5", "--out", str(tmp_path / "acc.json")])
    assert "false-accept" in capsys.readouterr().out
    assert json.loads((tmp_path / "acc.json").read_text())["spec_accuracy"]["clean"] == 1.0


def test_bad_input_is_a_user_error(tmp_path):
    from openjanus.errors import UserError

    with pytest.raises(UserError):
        _run(["eval", "score-geneval", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        _run(["eval", "export-dataset", "--kind", "und", "-n", "0", "--out", str(tmp_path)])


def _tiny_available() -> bool:
    try:
        from openjanus.inference.pipeline import JanusPipeline  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _tiny_available(), reason="openjanus.inference.pipeline is not importable")
def test_both_benchmarks_with_the_tiny_model_on_cpu(tmp_path, capsys):
    gs = tmp_path / "gs"
    _run(["eval", "geneval-shapes", "--model", "tiny", "--device", "cpu", "--dtype", "float32",
          "--per-category", "1", "-n", "2", "--out", str(gs)])
    report = json.loads((gs / "report.json").read_text())
    assert set(report["categories"]) == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert report["overall"] == pytest.approx(sum(report["categories"].values()) / 6)
    rows = [json.loads(line) for line in (gs / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len(list(gs.glob("0000*/samples/*.png"))) == 12
    # Scoring is consistent with the verdicts recorded per image.
    for tag, v in report["categories"].items():
        mine = [r["correct"] for r in rows if r["tag"] == tag]
        assert v == sum(mine) / len(mine)
    assert (gs / "index.html").is_file()

    ps = tmp_path / "ps"
    _run(["eval", "pope-shapes", "--model", "tiny", "--device", "cpu", "--dtype", "float32", "--images", "4",
          "--out", str(ps)])
    report = json.loads((ps / "report.json").read_text())
    assert {"pope_random", "pope_popular", "pope_adversarial", "count", "describe"} <= set(report["categories"])
    for setting in ("random", "popular", "adversarial"):
        m = report["pope"][setting]
        assert m["tp"] + m["fp"] + m["tn"] + m["fn"] == m["n"] > 0
    assert set(report["mme"]["categories"]) >= {"existence", "count"}
    assert (ps / "index.html").is_file() and "overall" in capsys.readouterr().out
