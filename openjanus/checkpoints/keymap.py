"""Prefix-rename tables shared by the checkpoint layouts.

A table is a list of (source prefix, destination prefix) pairs where `{i}` stands for a layer
index; the first matching pair wins and the rest of the key is kept.
"""

from __future__ import annotations

import re

KeyTable = list[tuple[re.Pattern[str], str]]


def compile_table(pairs: list[tuple[str, str]]) -> KeyTable:
    out = []
    for src, dst in pairs:
        pattern = re.escape(src).replace(re.escape("{i}"), r"(?P<i>\d+)")
        out.append((re.compile("^" + pattern), dst))
    return out


def rename(key: str, table: KeyTable) -> str | None:
    """`key` renamed by the first matching pair, or None when no pair matches."""
    for pattern, dst in table:
        m = pattern.match(key)
        if m:
            return dst.replace("{i}", m.groupdict().get("i") or "") + key[m.end():]
    return None
