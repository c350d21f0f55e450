"""Datasets that leave nothing to train on: one line naming the folder or subset and the fix, before
any weight loads (issue #12, "an empty bucket"), in the style of tests/test_bad_inputs.py.

Every row runs ``sdxl-probe train`` in-process on the toy model with ``load_components`` replaced by a
function that fails the row: the error must come first. Oracle: the dataset each row builds (which
folder is empty, undecodable or too small, known by construction).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.errors import ProbeError
from sdxl_probe.text.captions import CaptionOptions
from sdxl_probe.train.lora.data import BatchOrder, TrainImage


def images(folder: Path, n: int, size: int = 64, garbage: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        if garbage:
            (folder / f"{i}.png").write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("red circle\n", encoding="utf-8")


def layout_empty_subset(d: Path) -> str:
    images(d / "ds" / "1_good", 2)
    (d / "ds" / "2_empty").mkdir()
    return f'path = "{d / "ds"}"'


def layout_all_undecodable(d: Path) -> str:
    images(d / "ds" / "1_good", 2)
    images(d / "ds" / "1_broken", 2, garbage=True)
    return f'path = "{d / "ds"}"\non_bad_image = "skip"'


def layout_all_too_small(d: Path) -> str:
    images(d / "ds" / "1_tiny", 3, size=20)
    return (f'path = "{d / "ds"}"\nenable_bucket = true\nbucket_no_upscale = true\nmin_bucket_reso = 32\n'
            "max_bucket_reso = 128\nbucket_reso_steps = 32")  # fmt: skip


def layout_only_reg(d: Path) -> str:
    images(d / "reg" / "1_thing", 2)
    (d / "ds.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{d / "reg" / "1_thing"}"\n'
                               "is_reg = true\n", encoding="utf-8")  # fmt: skip
    return f'path = "{d / "ds.toml"}"'


def layout_empty_reg_subset(d: Path) -> str:
    images(d / "ds" / "1_good", 2)
    (d / "reg" / "1_person").mkdir(parents=True)
    return f'path = "{d / "ds"}"\nreg_path = "{d / "reg"}"'


def layout_toml_subset_without_images(d: Path) -> str:
    images(d / "a", 2)
    (d / "b").mkdir()
    (d / "ds.toml").write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{d / "a"}"\n'
                               f'[[datasets.subsets]]\nimage_dir = "{d / "b"}"\n', encoding="utf-8")  # fmt: skip
    return f'path = "{d / "ds.toml"}"'


def layout_no_subfolders(d: Path) -> str:
    images(d / "ds" / "no_number", 2)
    return f'path = "{d / "ds"}"'


ROWS = [
    ("empty-subset", layout_empty_subset, ("2_empty", "subset '2_empty' has no images", "remove the subset")),
    ("all-undecodable", layout_all_undecodable,
     ("1_broken", "no usable image (2 found: 2 undecodable, 0 too small)", "fix or replace")),
    ("all-too-small", layout_all_too_small,
     ("1_tiny", "3 found: 0 undecodable, 3 too small", "lower bucket_reso_steps (now 32)", "bucket_no_upscale = false")),
    ("only-reg", layout_only_reg, ("ds.toml", "only regularization images", "add a subset of training images without is_reg")),
    ("empty-reg-subset", layout_empty_reg_subset, ("1_person", "(is_reg) has no images")),
    ("toml-subset-empty", layout_toml_subset_without_images, ("subset 'b' has no images",)),
    ("no-subfolders", layout_no_subfolders, ("no trainable images found", "N_name subfolders")),
]  # fmt: skip


@pytest.mark.parametrize("name, layout, expected", ROWS, ids=[r[0] for r in ROWS])
def test_nothing_to_train_on_is_one_line_before_weights_load(tmp_path, monkeypatch, name, layout, expected):
    import sdxl_probe.models.load as load

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the dataset was checked")

    monkeypatch.setattr(load, "load_components", no_weights)
    config = tmp_path / "run.toml"
    config.write_text(f'[dataset]\n{layout(tmp_path)}\ncaption_extension = ".txt"\nresolution = 64\n'
                      f'[saving]\noutput_dir = "{tmp_path / "run"}"\n', encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(config)])
    assert isinstance(result.exception, ProbeError), (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_a_batch_larger_than_the_training_set_is_one_short_batch_never_an_empty_one(tmp_path):
    """Oracle: sd-scripts' bucket batching: ceil(images x repeats / batch_size) batches per bucket."""
    ims = [TrainImage(tmp_path / f"{i}.png", "c", CaptionOptions(), 2, "s", str(i), (32, 32), (32, 32))
           for i in range(3)]  # fmt: skip
    order = BatchOrder(ims, [0, 1, 2], 8, seed=0)
    assert order.per_epoch == 1 and Counter(order.epoch(0)[0]) == Counter({0: 2, 1: 2, 2: 2})
    order = BatchOrder(ims, [0, 1, 2], 4, seed=0)
    assert sorted(len(b) for b in order.epoch(0)) == [2, 4]
