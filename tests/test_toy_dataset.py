"""`sdxl-probe toy dataset`: the kohya-style folder, its ground truth, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxl_probe.errors import DatasetError
from sdxl_probe.toy.dataset import ToyDataset, read_metadata, write_dataset
from sdxl_probe.toy.world import ALL_COLOURS, BACKGROUNDS, HELDOUT_COMBOS


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folder_layout_and_ground_truth(tmp_path):
    ds = write_dataset(tmp_path / "out", n=8, seed=3, style="mixed", repeats=3)
    root = tmp_path / "out"
    assert ds.image_dir == "3_toy"
    records = read_metadata(root)
    assert len(records) == 8
    for i, rec in enumerate(records):
        stem = root / "3_toy" / f"{i:05d}"
        assert rec["file"] == f"3_toy/{i:05d}.png"
        assert (root / f"{stem}.txt").read_text().strip() == rec["caption"] == rec["mixed"]
        assert (root / f"{stem}.tags.txt").read_text().strip() == rec["tags"]
        assert (root / f"{stem}.sentence.txt").read_text().strip() == rec["sentence"]
        image = np.asarray(Image.open(f"{stem}.png"))
        labels = np.asarray(Image.open(root / rec["mask"]))
        assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
        assert np.array_equal(image[0, 0], BACKGROUNDS[rec["background"]])
        assert set(np.unique(labels)) == set(range(len(rec["objects"]) + 1))
        for k, obj in enumerate(rec["objects"], start=1):
            assert (obj["colour"], obj["shape"]) not in HELDOUT_COMBOS
            ys, xs = np.nonzero(labels == k)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == obj["bbox"]
            assert obj["area"] == len(xs)
            assert np.median(np.abs(image[ys, xs].astype(int) - ALL_COLOURS[obj["colour"]])) == 0
            assert f"{obj['colour']} {obj['shape']}" in rec["tags"]
    assert ToyDataset.load(root) == ds


def test_same_seed_same_bytes(tmp_path):
    write_dataset(tmp_path / "a", n=5, seed=11, style="long")
    write_dataset(tmp_path / "b", n=5, seed=11, style="long")
    write_dataset(tmp_path / "c", n=5, seed=12, style="long")
    a, b, c = (_files(tmp_path / x) for x in "abc")
    a.pop("toy_dataset.json"), b.pop("toy_dataset.json"), c.pop("toy_dataset.json")
    assert a == b
    assert a != c
    assert not list((tmp_path / "a").rglob(".*"))  # no temp files left behind


def test_concept_named_by_trigger(tmp_path):
    write_dataset(tmp_path / "h", n=6, seed=0, concept="heart", trigger="zkw", repeats=10)
    for rec in read_metadata(tmp_path / "h"):
        assert rec["objects"][0]["shape"] == "heart"
        assert f"{rec['objects'][0]['colour']} zkw" in rec["caption"]
        assert "heart" not in json.dumps([rec["tags"], rec["sentence"], rec["long"]])
    assert (tmp_path / "h" / "10_zkw").is_dir()
    write_dataset(tmp_path / "p", n=4, seed=0, concept="pink")
    for rec in read_metadata(tmp_path / "p"):
        assert rec["objects"][0]["colour"] == "pink" and rec["caption"].startswith("pink ")
    write_dataset(tmp_path / "t", n=4, seed=0, trigger="sks", style="sentence")
    assert all(r["caption"].startswith("sks, a") for r in read_metadata(tmp_path / "t"))


def test_heldout_split(tmp_path):
    write_dataset(tmp_path / "x", n=10, seed=0, split="heldout")
    objs = [o for r in read_metadata(tmp_path / "x") for o in r["objects"]]
    assert all((o["colour"], o["shape"]) in HELDOUT_COMBOS for o in objs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"style": "poem"}, "--style 'poem'"),
        ({"concept": "mauve"}, "--concept 'mauve'"),
        ({"trigger": "a,b"}, "--trigger"),
        ({"split": "test"}, "--split"),
        ({"n": 0}, "--n 0"),
    ],
)
def test_bad_settings_are_named(tmp_path, kwargs, message):
    args = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        write_dataset(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()


def test_refuses_non_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not an empty folder"):
        write_dataset(tmp_path / "full", n=2, seed=0)


def test_cli_writes_a_folder_the_dataset_reader_opens(tmp_path):
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.data.dataset import open_dataset

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["toy", "dataset", str(out), "--n", "4", "--seed", "1", "--style", "long",
                                      "--repeats", "5"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 images" in result.output
    ds = open_dataset(out)
    [subset] = ds.subsets
    assert (subset.name, subset.num_repeats, subset.caption_extension) == ("5_toy", 5, ".txt")
    captions = [r.caption for r in ds.records()]
    assert captions == [r["long"] for r in read_metadata(out)]
    bad = CliRunner().invoke(app, ["toy", "dataset", str(tmp_path / "b"), "--style", "poem"])
    assert bad.exit_code != 0 and isinstance(bad.exception, DatasetError)
