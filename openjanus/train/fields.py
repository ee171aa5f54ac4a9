"""Checking values read from JSON against the types of dataclass fields.

JSON has one number type and no tuples, so a config value is checked against the field's
resolved type (`typing.get_type_hints`) before the dataclass is built: ints are not floats or
booleans, floats take ints, tuples are lists of the right length and kind. Nested dataclasses
are checked where they are built.
"""

from __future__ import annotations

import json
import types
import typing
from functools import cache
from typing import Any

from openjanus.config import ConfigError


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass."""
    return typing.get_type_hints(cls)


def check_json_type(value: Any, annotation: Any, where: str) -> None:
    """Raise ConfigError naming `where` unless `value` (as read from JSON) fits `annotation`."""
    if not _fits(value, annotation):
        raise ConfigError(f"{where}: expected {type_name(annotation)}, got {json.dumps(value)}")


def type_name(tp: Any) -> str:
    """A type as it reads in the source: `int | None`, `tuple[str, ...]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _fits(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, t) for v, t in zip(value, args))
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return True  # Any, or a nested section: checked where it is built


__all__ = ["check_json_type", "field_types", "type_name"]
