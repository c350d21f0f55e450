"""The gate every option passes: declared bounds on dataclass fields, checked in one place.

A field declares its bounds in its type, ``steps: Annotated[int, Range(1, 10_000)] = 25``, or
a choice set, ``Annotated[str, Choice("euler", "ddim")]``. :func:`check` reads them and raises
one :class:`~sdxl_probe.errors.ConfigError` naming the option, the value, what is allowed and
the fix. Floats must be finite whether or not they declare a range. Bounds on a tuple or list
field apply to each item. A dataclass may add cross-field checks in a ``checks()`` method that
returns ``(field, problem, fix)`` triples.

Two entrances use it: :func:`sdxl_probe.config.from_dict` (TOML; labels like ``run.toml: steps``)
and :func:`gate` (command-line values; labels like ``--steps``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sdxl_probe.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Allowed numbers: ``lo <= v <= hi`` (either side may be open, or None for unbounded)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> str | None:
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return "too small"
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return "too large"
        return None

    def describe(self) -> str:
        if self.hi is None and self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is None and self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"{left}{_num(self.lo)}, {_num(self.hi)}{right}"

    def example(self) -> str:
        """A value inside the range, for the fix."""
        if self.lo is None:
            return _num(self.hi if not self.hi_open else (self.hi or 0) - 1)
        if not self.lo_open:
            return _num(self.lo)
        if self.hi is not None and self.hi - self.lo <= 1:
            return _num((self.lo + self.hi) / 2)
        return _num(self.lo + 1)


@dataclass(frozen=True)
class Choice:
    """Allowed values: one of a fixed set."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", values)

    def problem(self, value: Any) -> str | None:
        return None if value in self.values else "not a valid choice"

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)

    def example(self) -> str:
        return str(self.values[0])


@dataclass(frozen=True)
class SafeName:
    """A single path component: no separators, no ``..``, no control characters, not empty."""

    max_length: int = 120

    def problem(self, value: Any) -> str | None:
        if not value or value in (".", ".."):
            return "not a usable name"
        if "/" in value or "\\" in value or any(ord(c) < 32 for c in value):
            return "contains a path separator or control character"
        if len(value) > self.max_length:
            return "too long"
        return None

    def describe(self) -> str:
        return f"a plain name of 1 to {self.max_length} characters without '/', '\\' or '..'"

    def example(self) -> str:
        return "my-run"


@dataclass(frozen=True)
class Length:
    """Allowed text: between ``lo`` and ``hi`` characters, without NUL or newlines."""

    lo: int = 1
    hi: int = 1000

    def problem(self, value: Any) -> str | None:
        if not self.lo <= len(value) <= self.hi:
            return "empty" if not value else "wrong length"
        if "\0" in value or "\n" in value or "\r" in value:
            return "contains a NUL or newline character"
        return None

    def describe(self) -> str:
        return f"text of {self.lo} to {self.hi} characters on one line"

    def example(self) -> str:
        return "x" * max(self.lo, 1)


Bound = Range | Choice | SafeName | Length


def bounds_of(cls: type) -> dict[str, list[Bound]]:
    """``{field: [bounds]}`` declared through ``Annotated`` in the fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, list[Bound]] = {}
    for f in dataclasses.fields(cls):
        meta = getattr(hints.get(f.name), "__metadata__", ())
        out[f.name] = [m for m in meta if isinstance(m, (Range, Choice, SafeName, Length))]
    return out


def problem_with(value: Any, bounds: list[Bound]) -> tuple[Any, str, str, str] | None:
    """``(bad value, problem, allowed, example)`` for the first bound broken, or None when all hold.

    For a tuple or list the bad value is the first item out of bounds.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return next((p for v in value if (p := problem_with(v, bounds))), None)
    ranges = [b for b in bounds if isinstance(b, Range)]
    if isinstance(value, float) and not math.isfinite(value):
        if ranges:
            return value, "not a finite number", ranges[0].describe(), ranges[0].example()
        return value, "not a finite number", "a finite number", "1.0"
    for b in bounds:
        if isinstance(b, Range) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            continue
        if isinstance(b, (SafeName, Length)) and not isinstance(value, str):
            continue
        if (p := b.problem(value)) is not None:
            return value, p, b.describe(), b.example()
    return None


def check(cls: type, values: Mapping[str, Any], label: Callable[[str], str], fix: Callable[[str, str], str]) -> None:
    """Raise ConfigError for the first value in ``values`` outside its field's declared bounds.

    Args:
        cls: the dataclass declaring the bounds.
        values: field name -> value (fields absent here are not checked).
        label: field name -> how the user wrote it (``--n-prompts``, ``run.toml: steps``).
        fix: (field name, example value) -> the fix sentence.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, bounds in bounds_of(cls).items():
        if name in values and (found := problem_with(values[name], bounds)) is not None:
            bad, problem, allowed, example = found
            default = defaults.get(name)
            if isinstance(default, (int, float, str)) and problem_with(default, bounds) is None:
                example = str(default)
            raise ConfigError(f"{label(name)} {_show(bad)}: {problem}; allowed: {allowed}; {fix(name, example)}")


def check_object(obj: Any, label: Callable[[str], str], fix: Callable[[str, str], str]) -> None:
    """:func:`check` every field of dataclass instance ``obj``, then its ``checks()`` (cross-field)."""
    check(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, label, fix)
    for name, problem, fix_text in getattr(obj, "checks", lambda: [])():
        raise ConfigError(f"{label(name)} {_show(getattr(obj, name))}: {problem}; {fix_text}")


# Fields that are part of another option's value, by the spelling a user typed.
FLAG_SPELLINGS = {"lora_weights": "--lora FILE:weight"}


def flag(name: str) -> str:
    """The command-line spelling of a field: ``n_prompts`` -> ``--n-prompts``."""
    return FLAG_SPELLINGS.get(name, "--" + name.replace("_", "-"))


def gate(cls: type[T], /, **values: Any) -> T:
    """Build options dataclass ``cls`` from command-line values, refusing any value out of bounds.

    Call it first in a command, before any model loads or file is written.
    """
    obj = cls(**values)
    check_object(obj, flag, lambda name, example: f"pass e.g. {flag(name)} {example}")
    return obj


def validate(obj: Any, where: str = "") -> None:
    """Check a config object built in code (labels are its field names, after ``where``)."""
    prefix = f"{where}: " if where else ""
    check_object(obj, lambda n: f"{prefix}{n}", lambda n, example: f"set {n} = {example}")


def _num(x: float | None) -> str:
    if x is None:
        return "inf"
    if float(x).is_integer() and abs(x) < 1e15:
        return f"{int(x):_}" if abs(x) >= 100_000 else str(int(x))
    return f"{x:g}"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."
