"""Datasets degrade per record (issue #11): a bad record is skipped, counted and named; reads are bounded."""

from __future__ import annotations

import json
import os

import pytest

from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.errors import ConfigError


def _captions(path, **kw):
    ds = open_dataset(path, **kw)
    return [r.caption for r in ds.records()], ds.issues.to_dict()


def test_csv_over_long_field_skips_that_row_only(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('caption\n"good one"\n"' + "x" * 300_000 + '"\n"good two"\n')
    caps, issues = _captions(p)
    assert caps == ["good one", "good two"]
    assert issues["bad_row"]["count"] == 1 and "field larger than field limit" in issues["bad_row"]["examples"][0]["message"]


def test_deeply_nested_jsonl_line_is_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps({"caption": "a"}), "[" * 100_000 + "]" * 100_000, json.dumps({"caption": "b"})]
    p.write_text("\n".join(lines) + "\n")
    caps, issues = _captions(p)
    assert caps == ["a", "b"]
    assert issues["bad_row"]["count"] == 1 and f"{p}:2" in issues["bad_row"]["examples"][0]["path"]


def test_metadata_json_non_object_entries_are_skipped(tmp_path):
    p = tmp_path / "meta.json"
    p.write_text(json.dumps({"a.png": {"caption": "ok"}, "b.png": "just text", "c.png": [1, 2],
                             "d.png": {"caption": 5}, "e.png": None, "f.png": {"tags": "t1, t2"}}))
    caps, issues = _captions(p)
    assert caps == ["ok", "", "t1, t2"]  # e.png: no caption at all, as sd-scripts reads an empty entry
    assert issues["bad_row"]["count"] == 3
    assert {e["path"].rsplit(":", 1)[1] for e in issues["bad_row"]["examples"]} == {"b.png", "c.png", "d.png"}


def test_binary_toml_is_one_config_error(tmp_path):
    p = tmp_path / "ds.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        open_dataset(p)


def test_caption_fifo_and_oversized_file_are_counted_not_read(tmp_path):
    sub = tmp_path / "1_x"
    sub.mkdir()
    for name in ("a", "b", "c"):
        (sub / f"{name}.png").write_bytes(b"")
    (sub / "a.txt").write_text("fine\n")
    os.mkfifo(sub / "b.txt")  # reading it would block forever
    with open(sub / "c.txt", "wb") as f:
        f.truncate(5 * 2**20)  # over the 4 MiB caption cap (sparse: costs no disk)
    caps, issues = _captions(tmp_path, caption_extension=".txt")
    assert "fine" in caps
    messages = " ".join(e["message"] for e in issues["unreadable"]["examples"])
    assert issues["unreadable"]["count"] == 2 and "not a regular file" in messages and "MiB" in messages


def test_table_that_is_a_fifo_is_a_bad_file(tmp_path):
    p = tmp_path / "d.csv"
    os.mkfifo(p)
    caps, issues = _captions(p)
    assert caps == [] and "not a regular file" in issues["bad_file"]["examples"][0]["message"]
