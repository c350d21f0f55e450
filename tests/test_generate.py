"""The sampler core (sdxl_probe.pipeline.sampling) and the ``generate`` command, on tiny random components."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sdxl_probe.errors import ProbeError
from sdxl_probe.pipeline.conditioning import time_ids
from sdxl_probe.pipeline.sampling import (
    check_size,
    default_size,
    generate_images,
    initial_noise,
    make_scheduler,
)

FAST = {"steps": 2, "cfg": 3.0}


def test_images_have_the_model_native_size_and_dtype(tiny_components):
    images = generate_images(tiny_components, ["red circle", "a blue star"], seed=0, **FAST)
    side = tiny_components.unet.config.sample_size * tiny_components.vae_scale_factor
    assert default_size(tiny_components) == side
    assert images.shape == (2, side, side, 3) and images.dtype == np.uint8


def test_seeded_and_independent_of_batch_composition(tiny_components):
    both = generate_images(tiny_components, ["red circle", "a blue star"], seed=5, **FAST)
    alone = generate_images(tiny_components, ["a blue star"], seed=6, **FAST)
    again = generate_images(tiny_components, ["red circle", "a blue star"], seed=5, **FAST)
    other = generate_images(tiny_components, ["red circle", "a blue star"], seed=7, **FAST)
    np.testing.assert_array_equal(both[1], alone[0])  # prompt i uses seed + i whatever the batch
    np.testing.assert_array_equal(both, again)
    assert not np.array_equal(both, other)


def test_guidance_negative_and_samplers_change_the_image(tiny_components):
    base = generate_images(tiny_components, ["red circle"], seed=0, **FAST)
    no_cfg = generate_images(tiny_components, ["red circle"], seed=0, steps=2, cfg=1.0)
    negative = generate_images(tiny_components, ["red circle"], seed=0, negative="blue square", **FAST)
    ddim = generate_images(tiny_components, ["red circle"], seed=0, sampler="ddim", **FAST)
    zeros = generate_images(tiny_components, ["red circle"], seed=0, zero_empty_negative=True, **FAST)
    for other in (no_cfg, negative, ddim, zeros):
        assert not np.array_equal(base, other)


def test_size_from_config_and_bad_sizes(tiny_components):
    side = default_size(tiny_components)
    assert check_size(tiny_components, side, 2 * side) == (
        side // tiny_components.vae_scale_factor, 2 * side // tiny_components.vae_scale_factor)
    with pytest.raises(ProbeError, match="multiples of"):
        check_size(tiny_components, side + 1, side)
    with pytest.raises(ProbeError, match="sampler"):
        make_scheduler(tiny_components, "plms")
    with pytest.raises(ProbeError, match="no prompts"):
        generate_images(tiny_components, [], **FAST)


def test_helpers():
    noise = initial_noise(3, (4, 2, 2), seed=10)
    np.testing.assert_array_equal(noise[1].numpy(), initial_noise(1, (4, 2, 2), seed=11)[0].numpy())
    assert time_ids(2, 64, 32).tolist() == [[64, 32, 0, 0, 64, 32]] * 2
    assert time_ids(1, 64, 32, original=(80, 40), crop=(8, 4)).tolist() == [[80, 40, 8, 4, 64, 32]]


def test_generate_command_writes_a_png(tiny_components, tmp_path):
    from PIL import Image

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder

    folder = save_folder(tiny_components, tmp_path / "tiny")
    out = tmp_path / "img.png"
    result = CliRunner().invoke(app, ["generate", "red circle", "--model", str(folder), "--seed", "1",
                                      "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    side = default_size(tiny_components)
    assert Image.open(out).size == (side, side)
    assert "toy model" in result.output  # tiny parts are a toy: the output says so
    bad = CliRunner().invoke(app, ["generate", "x", "--model", str(folder), "--width", "42", "--out", str(out)])
    assert isinstance(bad.exception, ProbeError) and "multiples of" in str(bad.exception)


def test_prompt_file_and_n_equal_one_image_runs(tiny_components, tmp_path):
    """Oracle: each numbered PNG equals the single-PNG command run alone with that line's settings and seed.

    fp32: in bf16 (the CPU default) a batch of 2 and a batch of 1 round differently by one level.
    """
    import json

    from PIL import Image

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder

    folder = save_folder(tiny_components, tmp_path / "tiny")
    side = default_size(tiny_components)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# comment\nred circle --d 3 --s 2 --l 3\n\na blue star --n blue --w {2 * side} --h {side} "
                       "--d 10 --s 3 --l 1\n", encoding="utf-8")  # fmt: skip
    run = CliRunner().invoke(app, ["generate", "--prompt-file", str(prompts), "--n", "2", "--model", str(folder),
                                   "--dtype", "fp32", "--out", str(tmp_path / "many")])  # fmt: skip
    assert run.exit_code == 0, run.output
    alone = {"000": ["red circle", "--steps", "2", "--guidance", "3"],
             "001": ["a blue star", "--negative", "blue", "--width", str(2 * side), "--height", str(side),
                     "--steps", "3", "--guidance", "1"]}  # fmt: skip
    seeds = {"000": 3, "001": 10}
    for line, args in alone.items():
        for j in range(2):
            out = tmp_path / f"alone_{line}_{j}.png"
            r = CliRunner().invoke(app, ["generate", *args, "--seed", str(seeds[line] + j), "--model", str(folder),
                                         "--dtype", "fp32", "--out", str(out)])  # fmt: skip
            assert r.exit_code == 0, r.output
            np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "many" / f"{line}_0{j}.png")),
                                          np.asarray(Image.open(out)))  # fmt: skip
    rows = [json.loads(s) for s in (tmp_path / "many" / "prompts.jsonl").read_text().splitlines()]
    assert [(r["file"], r["seed"]) for r in rows] == [("000_00.png", 3), ("000_01.png", 4), ("001_00.png", 10),
                                                        ("001_01.png", 11)]  # fmt: skip
    r = CliRunner().invoke(app, ["generate", "red circle", "--n", "2", "--seed", "3", "--steps", "2", "--guidance", "3",
                                 "--model", str(folder), "--dtype", "fp32", "--out", str(tmp_path / "n")])  # fmt: skip
    assert r.exit_code == 0, r.output
    for j in range(2):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "n" / f"000_0{j}.png")),
                                      np.asarray(Image.open(tmp_path / f"alone_000_{j}.png")))  # fmt: skip


def test_prompt_file_bad_inputs(tmp_path):
    from sdxl_probe.cli import app

    bad = tmp_path / "bad.txt"
    bad.write_text("a cat --w 10000\n", encoding="utf-8")
    cases = [["generate", "--out", str(tmp_path / "o")],
             ["generate", "x", "--prompt-file", str(bad), "--out", str(tmp_path / "o")],
             ["generate", "x", "--n", "2", "--out", str(tmp_path / "o.png")],
             ["generate", "--prompt-file", str(bad), "--out", str(tmp_path / "o")],
             ["generate", "x", "--n", "0", "--out", str(tmp_path / "o")]]  # fmt: skip
    for args in cases:
        r = CliRunner().invoke(app, args)
        assert isinstance(r.exception, ProbeError), (args, r.output)
        assert "\n" not in str(r.exception).strip() or "width" in str(r.exception)
