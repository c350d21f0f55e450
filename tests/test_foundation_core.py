"""Unit tests for the shared core: typed config, atomic writes, CLI error handling."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from sdxl_probe import io
from sdxl_probe.config import from_dict, load_config
from sdxl_probe.errors import ConfigError


@dataclasses.dataclass
class _Inner:
    rate: float = 0.0
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass
class _Outer:
    name: str = "x"
    steps: int = 1
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    tags: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None


def test_from_dict_builds_nested_and_coerces_int_to_float():
    cfg = from_dict(_Outer, {"name": "run", "inner": {"rate": 1, "mode": "b"}, "tags": ["a"], "limit": 5})
    assert cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.mode == "b" and cfg.tags == ["a"] and cfg.limit == 5


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown key 'stpes'.*did you mean 'steps'"):
        from_dict(_Outer, {"stpes": 3})
    with pytest.raises(ConfigError, match=r"config.inner: unknown key 'rat'.*'rate'"):
        from_dict(_Outer, {"inner": {"rat": 0.1}})


def test_wrong_types_and_literals_are_rejected():
    with pytest.raises(ConfigError, match=r"config.steps: expected int"):
        from_dict(_Outer, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"config.steps: expected int"):
        from_dict(_Outer, {"steps": True})
    with pytest.raises(ConfigError, match=r"'c' is not one of"):
        from_dict(_Outer, {"inner": {"mode": "c"}})


def test_load_config_reports_bad_toml_with_file_name(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_config(_Outer, bad)
    with pytest.raises(ConfigError, match=r"not found"):
        load_config(_Outer, tmp_path / "missing.toml")
    good = tmp_path / "good.toml"
    good.write_text('name = "g"\n[inner]\nrate = 0.5\n')
    assert load_config(_Outer, good).inner.rate == 0.5


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{")
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_help_does_not_import_torch():
    code = "import sys; from sdxl_probe.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_lists_commands():
    from typer.testing import CliRunner

    from sdxl_probe.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_atomic_write_gives_normal_file_mode(tmp_path: Path):
    mask = os.umask(0o022)
    try:
        path = io.write_text(tmp_path / "report.html", "<p>x</p>")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
