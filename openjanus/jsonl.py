"""JSON-lines files: the one reader and writer that benchmark files and training manifests share."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openjanus.errors import UserError

__all__ = ["read_jsonl", "write_jsonl"]


def read_jsonl(path: Path, what: str = "JSON lines", *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Read a JSON-lines file (or one JSON array of objects), with errors naming file and line.

    Blank lines are skipped. A file with no records is an error unless ``allow_empty``.
    """
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):  # some copies of these files are one JSON array
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{path}: expected a list of JSON objects")
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: expected a JSON object")
            rows.append(row)
    if not rows and not allow_empty:
        raise UserError(f"{path}: no records")
    return rows


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write JSON lines (UTF-8, one object per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
