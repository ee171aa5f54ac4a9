"""One family of number checks: the typed requests and configs call them on values, the
command-line flag types (`openjanus.options`) on parsed flags, the server on JSON fields.

Each raises `UserError` with one phrase ("must be in [0, 1], got 2"), prefixed with the
value's name when one is given; the callers add where the value came from (argparse names the
flag, the server the field).
"""

from __future__ import annotations

import math

from openjanus.errors import UserError

__all__ = ["check_number", "check_integer"]


def _fail(name: str | None, phrase: str) -> UserError:
    return UserError(f"{name} {phrase}" if name else phrase)


def _bounds(low: float | None, high: float | None, low_open: bool) -> str:
    if high is None:
        return f"> {low}" if low_open else f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"in {'(' if low_open else '['}{low}, {high}]"


def check_number(value: object, *, low: float | None = None, high: float | None = None, low_open: bool = False,
                 name: str | None = None, text: str | None = None) -> float:
    """`value` as a float: a real number (not a bool), finite, in [low, high] (in (low, high]
    with `low_open`). `text` is how the value was written, quoted in the message when it is
    not finite (a flag's 'nan')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(name, f"must be a finite number, got {text!r}" if text is not None
                    else f"must be a finite number, got {value}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        raise _fail(name, f"must be {_bounds(low, high, low_open)}, got {value}")
    return float(value)


def check_integer(value: object, *, low: int | None = None, high: int | None = None,
                  name: str | None = None) -> int:
    """`value` as an int: an integer (not a bool, not 1.0) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, f"must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _fail(name, f"must be {_bounds(low, high, False)}, got {value}")
    return value
