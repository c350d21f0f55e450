"""Typed config: dataclasses loaded from TOML, with unknown keys rejected by name.

Only the CLI and runners touch config objects; helpers take explicit arguments.
Sections of the TOML mirror the nesting of the dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from sdxl_probe.errors import ConfigError
from sdxl_probe.io import read_bounded
from sdxl_probe.options import check

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
MAX_TOML_BYTES = 16 * 2**20  # configs are a few KB; a bigger file is not a config


def nearest(name: str, options: typing.Iterable[str]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_key_message(key: str, valid: typing.Iterable[str], where: str) -> str:
    """A message naming an unknown key, where it was found, and the nearest valid key."""
    valid = sorted(valid)
    hint = nearest(key, valid)
    fix = f"did you mean '{hint}'?" if hint else f"valid keys: {', '.join(valid)}"
    return f"{where}: unknown key '{key}'; {fix}"


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into a ConfigError that names the file."""
    p = Path(path)
    try:
        data = read_bounded(p, MAX_TOML_BYTES, what="config file")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found; check the path") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file ({e.strerror or e}); check the path") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a UTF-8 text file (byte {e.start}); give a TOML text file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML ({e}); fix the syntax at that line") from None
    except RecursionError:
        raise ConfigError(f"{p}: TOML nested too deeply to read; flatten its tables") from None


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested dict, checking keys and simple types.

    Args:
        cls: a dataclass type; nested dataclass fields are built from sub-tables.
        data: the parsed TOML (or any mapping).
        where: a label for messages, e.g. the file name and section.

    Raises:
        ConfigError: on an unknown key (naming the nearest valid one), a wrongly typed value, or a
            value outside the bounds its field declares (:mod:`sdxl_probe.options`).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(unknown_key_message(key, fields, where))
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    check(cls, kwargs, lambda k: f"{where}: {k} =", lambda k, example: f"set {k} = {example} in {where}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(cls: type[T], path: str | Path) -> T:
    """Load dataclass ``cls`` from a TOML file."""
    return from_dict(cls, read_toml(path), where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (for saving the resolved config next to a result)."""
    return dataclasses.asdict(obj)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value
