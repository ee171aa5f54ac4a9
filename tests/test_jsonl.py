"""The shared JSON-lines reader and writer: blank lines, errors naming file and line, empty files."""

from __future__ import annotations

import re

import pytest

from openjanus.errors import UserError
from openjanus.jsonl import read_jsonl, write_jsonl


def test_round_trip_skips_blank_lines(tmp_path) -> None:
    path = tmp_path / "deep" / "rows.jsonl"
    rows = [{"a": 1}, {"text": "été ✓"}]
    write_jsonl(path, rows)  # makes the missing folder
    assert read_jsonl(path) == rows
    path.write_text('\n{"a": 1}\n   \n\n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]


def test_one_json_array_is_read_too(tmp_path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(' [{"a": 1}, {"b": 2}]')
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a list of JSON objects"):
        read_jsonl(path)


@pytest.mark.parametrize("line, message", [("{not json", "not valid JSON"), ("[1]", "expected a JSON object"),
                                           ('"text"', "expected a JSON object")])
def test_errors_name_file_and_line(tmp_path, line, message) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n' + line + "\n")  # the blank line still counts: the bad one is line 3
    with pytest.raises(UserError, match=re.escape(f"{path}:3: {message}")):
        read_jsonl(path)


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(UserError, match="GenEval metadata file not found"):
        read_jsonl(tmp_path / "absent.jsonl", "GenEval metadata")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="no records"):
        read_jsonl(empty)
    assert read_jsonl(empty, allow_empty=True) == []
