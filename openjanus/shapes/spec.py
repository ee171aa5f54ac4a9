"""GenEval-style specs: what a generated image must contain, in GenEval's own record format.

A GenEval record is ``{"tag", "include": [{"class", "count", "color"?, "position"?}],
"exclude"?: [{"class", "count"}], "prompt"}``. ``include`` asks for at least ``count`` objects of
a class (of a colour, if given); ``position: [relation, k]`` asks each of them to stand in that
relation to the objects matched by ``include[k]``; ``exclude`` asks for fewer than ``count``
(so counting prompts pair ``include count n`` with ``exclude count n+1``: exactly n).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openjanus.shapes.world import RELATIONS

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class SpecError(ValueError):
    """A GenEval record is malformed; the message names the field."""


@dataclass(frozen=True)
class Requirement:
    """At least ``count`` objects of ``cls`` (of ``color``), each ``position[0]`` of group ``position[1]``."""

    cls: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """GenEval's record for this requirement."""
        d: dict[str, Any] = {"class": self.cls, "count": self.count}
        if self.color is not None:
            d["color"] = self.color
        if self.position is not None:
            d["position"] = [self.position[0], self.position[1]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "requirement") -> Requirement:
        """Parse and validate one GenEval include/exclude entry."""
        if not isinstance(d, dict) or "class" not in d:
            raise SpecError(f"{where}: expected an object with a 'class', got {d!r}")
        count = d.get("count", 1)
        if not isinstance(count, int) or count < 0:
            raise SpecError(f"{where}: 'count' must be a non-negative integer, got {count!r}")
        pos = d.get("position")
        if pos is not None:
            if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and isinstance(pos[1], int)):
                raise SpecError(f"{where}: 'position' must be [relation, index], got {pos!r}")
            if pos[0] not in RELATIONS:
                raise SpecError(f"{where}: unknown relation {pos[0]!r}; relations are {', '.join(RELATIONS)}")
            pos = (str(pos[0]), int(pos[1]))
        color = d.get("color")
        return cls(cls=str(d["class"]), count=count, color=None if color is None else str(color), position=pos)


@dataclass(frozen=True)
class Spec:
    """One GenEval prompt with its requirements."""

    tag: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = field(default=())
    prompt: str = ""

    def to_geneval(self) -> dict[str, Any]:
        """The record exactly as GenEval's ``evaluation_metadata.jsonl`` holds it."""
        d: dict[str, Any] = {"tag": self.tag, "include": [r.to_dict() for r in self.include]}
        if self.exclude:
            d["exclude"] = [r.to_dict() for r in self.exclude]
        d["prompt"] = self.prompt
        return d

    @classmethod
    def from_geneval(cls, d: dict[str, Any], where: str = "record") -> Spec:
        """Parse and validate a GenEval metadata record (extra keys are kept out, not refused)."""
        if not isinstance(d, dict):
            raise SpecError(f"{where}: expected a JSON object, got {type(d).__name__}")
        for key in ("tag", "include", "prompt"):
            if key not in d:
                raise SpecError(f"{where}: missing '{key}'")
        if not isinstance(d["include"], list) or not d["include"]:
            raise SpecError(f"{where}: 'include' must be a non-empty list")
        inc = tuple(Requirement.from_dict(r, f"{where} include[{k}]") for k, r in enumerate(d["include"]))
        exc = tuple(Requirement.from_dict(r, f"{where} exclude[{k}]") for k, r in enumerate(d.get("exclude") or []))
        for k, r in enumerate(inc):
            if r.position is not None and not 0 <= r.position[1] < len(inc):
                raise SpecError(f"{where} include[{k}]: position target {r.position[1]} is out of range")
        return cls(tag=str(d["tag"]), include=inc, exclude=exc, prompt=str(d["prompt"]))

    @property
    def classes(self) -> set[str]:
        return {r.cls for r in self.include} | {r.cls for r in self.exclude}
