"""Audit inputs: kohya TOML, and every bad-input message the issue names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from audit_data import PNG_1X1, write_kohya_folder
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.probes.audit.core import AuditSettings, run_audit

TOML = """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = 1024
batch_size = 2

  [[datasets.subsets]]
  image_dir = "{a}"
  num_repeats = 5
  class_tokens = "sks dog"

  [[datasets.subsets]]
  image_dir = "{b}"
  keep_tokens = 2
  caption_extension = ".caption"
"""


def _audit(ds, tmp_path):
    return run_audit(ds, tmp_path / "out", AuditSettings(), name="x", header={"title": "x"})


def test_kohya_toml_accepted_unchanged(tmp_path):
    write_kohya_folder(tmp_path, {"a": ["red cat, blue dog"]})
    (tmp_path / "b").mkdir()
    (tmp_path / "b/0.png").write_bytes(PNG_1X1)
    (tmp_path / "b/0.caption").write_text("sky, sun, tree")
    (tmp_path / "ds.toml").write_text(TOML.format(a=tmp_path / "a", b="b"))  # "b": relative to the TOML
    ds = open_dataset(tmp_path / "ds.toml", cli_defaults={"keep_tokens": 7})
    a, b = ds.subsets
    assert (a.num_repeats, a.class_tokens, a.caption_extension) == (5, "sks dog", ".txt")
    assert a.caption_options == {"shuffle_caption": True, "keep_tokens": 1}  # general beats the command line
    assert b.caption_options["keep_tokens"] == 2 and b.caption_extension == ".caption"
    assert _audit(ds, tmp_path).n_captions == 2


def test_toml_unknown_key_names_nearest(tmp_path):
    (tmp_path / "ds.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "x"\nnum_repeat = 3\n')
    with pytest.raises(ConfigError, match=r"ds.toml.*unknown key 'num_repeat'; did you mean 'num_repeats'\?"):
        open_dataset(tmp_path / "ds.toml")
    cmd = [sys.executable, "-m", "sdxl_probe.cli", "audit", str(tmp_path / "ds.toml"), "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "unknown key 'num_repeat'" in res.stderr and "Traceback" not in res.stderr


def test_missing_image_dir_reported_and_audit_goes_on(tmp_path):
    write_kohya_folder(tmp_path, {"a": ["red cat"]})
    (tmp_path / "ds.toml").write_text(TOML.format(a=tmp_path / "a", b=tmp_path / "nope"))
    res = _audit(open_dataset(tmp_path / "ds.toml"), tmp_path)
    assert res.n_captions == 1
    msg = res.stats["issues"]["missing_image_dir"]["examples"][0]["message"]
    assert msg == f"{tmp_path / 'nope'}: image directory not found; check image_dir / the path"


def test_non_utf8_caption_decoded_and_flagged(tmp_path):
    write_kohya_folder(tmp_path / "d", {"1_x": ["red cat", "blue dog"]})
    (tmp_path / "d/1_x/00001.txt").write_bytes(b"blue \xe9t\xe9, dog")
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "d"), "--out", str(out), "--name", "n"])
    assert res.exit_code == 0, res.output
    assert "00001.txt: not valid UTF-8 (byte 5); decoded with U+FFFD replacement" in res.output
    page = (out / "n/index.html").read_text()
    assert "not UTF-8" in page and "00001.txt: not valid UTF-8" in page
    assert "blue \ufffdt\ufffd, dog" in (out / "n/audit.csv").read_text(encoding="utf-8")


def test_unreadable_caption_file_skipped_with_message(tmp_path):
    write_kohya_folder(tmp_path / "d", {"1_x": ["red cat", "blue dog"]})
    bad = tmp_path / "d/1_x/00001.txt"
    bad.unlink()
    bad.mkdir()  # a directory where a caption file should be: reading it fails even as root
    res = _audit(open_dataset(tmp_path / "d", caption_extension=".txt"), tmp_path)
    assert res.n_captions == 1
    msg = res.stats["issues"]["unreadable"]["examples"][0]["message"]
    assert msg.startswith(f"{bad}: cannot read caption file (") and msg.endswith("); caption skipped")


def test_empty_dataset_message(tmp_path):
    (tmp_path / "d/1_x").mkdir(parents=True)
    with pytest.raises(
        DatasetError, match=r"d: empty dataset, no captions found \(1 subset\(s\)\).*no images found"
    ):
        _audit(open_dataset(tmp_path / "d"), tmp_path)
    (tmp_path / "e").mkdir()
    with pytest.raises(DatasetError, match=r"e: empty dataset, no captions found \(no 'N_name' subfolder"):
        _audit(open_dataset(tmp_path / "e"), tmp_path)
    assert not (tmp_path / "out/audit.csv").exists()
    write_kohya_folder(tmp_path / "f", {"3_y": ["red cat"]})
    with pytest.raises(DatasetError, match=r"'3_y' is itself an N_name folder: pass its parent"):
        _audit(open_dataset(tmp_path / "f/3_y"), tmp_path)


def test_missing_and_unknown_dataset_paths(tmp_path):
    with pytest.raises(DatasetError, match="nothere: dataset not found"):
        open_dataset(tmp_path / "nothere")
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(DatasetError, match=r"x.parquet: unknown dataset type '.parquet'"):
        open_dataset(tmp_path / "x.parquet")


def test_bad_jsonl_line_skipped_with_message(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "red cat"}\n{not json\n[1]\n{"text": "blue dog"}\n')
    res = _audit(open_dataset(tmp_path / "m.jsonl"), tmp_path)
    assert res.n_captions == 2
    messages = [e["message"] for e in res.stats["issues"]["bad_row"]["examples"]]
    assert messages[0].startswith(f"{tmp_path / 'm.jsonl'}:2: invalid JSON (")
    assert messages[1] == f"{tmp_path / 'm.jsonl'}:3: expected a JSON object, got list; line skipped"


def test_bad_max_token_length_is_a_config_error():
    with pytest.raises(ConfigError, match="max_token_length=100 is not supported; use 75, 150 or 225"):
        AuditSettings(max_token_length=100)


def test_sd_scripts_metadata_json_subset(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img/a.png").write_bytes(PNG_1X1)
    meta = {"a": {"caption": "a photo of a cat", "tags": "red, Cat"}, "b": {"tags": "blue, dog"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    toml = f'[[datasets]]\n[[datasets.subsets]]\nmetadata_file = "{tmp_path / "meta.json"}"\nimage_dir = "{tmp_path / "img"}"\n'
    (tmp_path / "ft.toml").write_text(toml)
    res = _audit(open_dataset(tmp_path / "ft.toml"), tmp_path)
    assert res.n_captions == 2
    # sd-scripts FineTuningDataset: caption + ", " + tags; ss_tag_frequency counts the tags only.
    assert res.stats["tag_frequency"] == {"meta.json": {"red": 1, "cat": 1, "blue": 1, "dog": 1}}
    assert res.stats["histograms"]["te1"] == {"3": 1, "9": 1}  # "a photo of a cat, red, Cat": 5 + 2 + 2
    assert res.stats["issues"]["caption_without_image"]["count"] == 1  # "b" has no image


def test_non_utf8_and_bad_csv_lists(tmp_path):
    (tmp_path / "c.csv").write_bytes(b"caption\nred cat\nblue \xe9t\xe9\n")
    res = _audit(open_dataset(tmp_path / "c.csv"), tmp_path)
    assert res.n_captions == 2
    msg = res.stats["issues"]["non_utf8"]["examples"][0]["message"]
    assert msg.startswith(
        f"{tmp_path / 'c.csv'}:3: not valid UTF-8 (byte 5); decoded with U+FFFD replacement"
    )
    (tmp_path / "n.csv").write_text("file_name,words\na.png,red\n")
    with pytest.raises(DatasetError, match=r"n.csv: no caption column; expected one of caption, text"):
        _audit(open_dataset(tmp_path / "n.csv"), tmp_path)


def test_alternate_caption_files_are_not_orphans(tmp_path):
    sub = tmp_path / "1_toy"
    sub.mkdir()
    (sub / "00000.png").write_bytes(PNG_1X1)
    (sub / "00000.txt").write_text("red circle")
    (sub / "00000.tags.txt").write_text("red circle")
    (sub / "orphan.txt").write_text("blue square")
    ds = open_dataset(tmp_path, caption_extension=".txt")
    records = list(ds.records())
    assert [r.caption for r in records] == ["red circle"]
    assert ds.issues.counts["caption_without_image"] == 1
    assert "orphan.txt" in ds.issues.examples["caption_without_image"][0][0]
