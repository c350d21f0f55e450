"""Masked loss: masks from a folder or the alpha channel, their geometry, the loss formula, bad inputs.

Oracles: the image pipeline itself (a mask equal to the image's R channel must come out equal to the
loaded pixels' R channel through the same bucket resize, crop and flip); the toy world's label masks;
the mask files read back with PIL and block-averaged to the latent grid by hand, multiplied into the
element-wise loss before the mean over (C, h, w) (a transcription of sd-scripts' ``apply_masked_loss``
in ``NetworkTrainer.process_batch``); and two independent mask sources (a folder, the alpha channel)
that must agree.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.train.lora.data import Buckets, load_mask, load_pixels, read_images
from sdxl_probe.train.lora.masks import MaskSettings

BUCKETS = Buckets(64, True, 32, 128, 32, False)
NO_BUCKETS = Buckets(32, False, 32, 128, 32, False)


def read(path, masks: MaskSettings, buckets=NO_BUCKETS, log=lambda s: None, reg_path=None):
    return read_images(str(path), caption_extension=".txt", caption_settings={}, buckets=buckets,
                       on_bad_image="error", log=log, reg_path=reg_path, masks=masks)  # fmt: skip


def kohya_folder(root, sizes, name="1_thing"):
    """A kohya folder of random RGB images (h, w) named 0.png, 1.png, ... with captions."""
    sub = root / name
    sub.mkdir(parents=True)
    rng = np.random.default_rng(len(sizes))
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"{i}.png")
        (sub / f"{i}.txt").write_text("red circle\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy dataset (32 px, 2 images) and an RGBA copy whose alpha is its loss mask."""
    from sdxl_probe.toy.dataset import write_dataset

    root = tmp_path_factory.mktemp("masked")
    ds = write_dataset(root / "ds", n=2, seed=5, size=32, trigger="zkw")
    rgba = root / "rgba"
    shutil.copytree(root / "ds" / ds.image_dir, rgba / ds.image_dir)
    for png in sorted((rgba / ds.image_dir).glob("*.png")):
        _with_alpha(png, Image.open(root / "ds" / "loss_masks" / png.name))
    return root / "ds", rgba, ds.image_dir


def _with_alpha(png, mask):
    """Rewrite ``png`` as RGBA with ``mask`` (an "L" image) as its alpha channel."""
    im = Image.open(png).convert("RGBA")
    im.putalpha(mask)
    im.save(png)


# ----------------------------------------------------------------------------- the toy world's masks


def test_toy_loss_masks_are_the_object_labels(toy):
    """Oracle: the label masks (0 = background, i + 1 = object i): 255 exactly where a label is non-zero."""
    root, _, image_dir = toy
    for rec in (json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()):
        labels = np.asarray(Image.open(root / rec["mask"]))
        loss_mask = np.asarray(Image.open(root / rec["loss_mask"]))
        assert loss_mask.dtype == np.uint8 and set(np.unique(loss_mask)) <= {0, 255}
        assert np.array_equal(loss_mask == 255, labels > 0) and 0 < (labels > 0).mean() < 1
        assert rec["loss_mask"] == f"loss_masks/{rec['file'].split('/')[-1]}"  # named like the image


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("source", ["folder", "alpha"])
def test_mask_goes_through_the_images_resize_crop_and_flip(tmp_path, source):
    """Oracle: the image pipeline. Each mask equals its image's R channel, so through the same bucket
    resize (LANCZOS), centre crop and flip the loaded mask x 255 equals the loaded pixels' R channel;
    the images are not bucket-shaped, so resize and crop both act."""
    root = kohya_folder(tmp_path / "ds", [(60, 101), (90, 50)])
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    for png in sorted((root / "1_thing").glob("*.png")):
        red = Image.open(png).getchannel("R")
        if source == "folder":
            red.save(masks_dir / png.name)
        else:
            _with_alpha(png, red)
    settings = MaskSettings(True, source == "alpha", str(masks_dir) if source == "folder" else None)
    images = read(root, settings, buckets=BUCKETS)
    assert [im.masked for im in images] == [True, True]
    for im in images:
        assert im.bucket != im.original
        for flipped in (False, True):
            mask = load_mask(im, flipped)
            assert mask.shape == im.bucket and mask.dtype == np.float32
            np.testing.assert_array_equal(
                np.round(mask * 255).astype(np.uint8), load_pixels(im, flipped)[..., 0]
            )
        assert not np.array_equal(load_mask(im, True), load_mask(im, False))  # the flip acts on the mask


def test_a_colour_mask_file_is_read_by_its_red_channel(tmp_path):
    """sd-scripts reads the mask as an RGB conditioning image and keeps channel R / 255."""
    root = kohya_folder(tmp_path / "ds", [(32, 32)])
    (tmp_path / "m").mkdir()
    red = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = np.stack([red, np.zeros_like(red), np.full_like(red, 255)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "m" / "0.png")
    images = read(root, MaskSettings(True, False, str(tmp_path / "m")))
    np.testing.assert_array_equal(load_mask(images[0], False), red.astype(np.float32) / 255)


def test_an_image_without_alpha_gets_an_all_ones_mask(tmp_path):
    """sd-scripts: with alpha_mask an image that has no alpha channel trains on a mask of ones."""
    images = read(kohya_folder(tmp_path / "ds", [(32, 32)]), MaskSettings(False, True))
    assert images[0].alpha_mask
    np.testing.assert_array_equal(load_mask(images[0], False), np.ones((32, 32), np.float32))


# ----------------------------------------------------------------------------- the loss


def _setup(tiny_components, ds, out, dataset=None, optimizer=None):
    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora import loop
    from sdxl_probe.train.lora.config import TrainConfig

    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2, **(dataset or {})},
        "network": {"dim": 4, "alpha": 4.0, "target": "attn"},
        "optimizer": {"unet_lr": 1e-2, "type": "SGD", "max_grad_norm": 0.0, **(optimizer or {})},
        "training": {"max_train_steps": 2, "seed": 3, "threads": 1},
        "saving": {"output_dir": str(out)}, "logging": {"progress_bar": False},
    })  # fmt: skip
    return loop.setup(cfg, out, resume=False, log=lambda s: None, components=copy.deepcopy(tiny_components))


def _one_step(run, monkeypatch):
    """(loss, UNet output, the step's draws, gradient of each LoRA parameter) of optimizer step 0.

    The optimizer is plain SGD without clipping, so the gradient is (before - after) / lr.
    """
    from sdxl_probe.train.lora import loop

    seen, real = {}, loop.predict_noise

    def spy(unet, x, t, **kw):
        seen["out"] = real(unet, x, t, **kw)
        return seen["out"]

    monkeypatch.setattr(loop, "predict_noise", spy)
    draws = loop.draw_micro_batch(run, 0)
    before = [p.detach().clone() for p in run.network.all_params()]
    loss, _, _ = loop.optimizer_step(run, 0, 0)
    lr = run.cfg.optimizer.unet_lr
    grads = [(b - p.detach()) / lr for b, p in zip(before, run.network.all_params(), strict=True)]
    return loss, seen["out"].detach().float(), draws, grads


def sd_scripts_masked_loss(out, target, masks):
    """sd-scripts: ``loss = conditional_loss(..., "none"); loss = apply_masked_loss(loss, batch);
    loss.mean([1, 2, 3])``, then the batch mean; the area interpolation written as block means."""
    b, _, h, w = out.shape
    f = masks.shape[1] // h
    small = masks.reshape(b, h, f, w, f).mean(dim=(2, 4))[:, None]  # (B, 1, h, w)
    return ((out - target) ** 2 * small).mean(dim=(1, 2, 3)).mean()


def test_masked_step_loss_is_sd_scripts_formula_and_changes_the_gradients(tiny_components, toy, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """Oracle: the loss recomputed from the step's own UNet output and noise and the mask files read with
    PIL (32 px images at resolution 32: no resize, no flip); the plain run's loss and LoRA gradients differ."""
    root, _, image_dir = toy
    masked = _setup(tiny_components, root, tmp_path / "m",
                    {"masked_loss": True, "conditioning_data_dir": str(root / "loss_masks")})  # fmt: skip
    loss, out, b, grads = _one_step(masked, monkeypatch)
    files = [masked.images[i].path.name for i in b.idx]
    want_masks = torch.stack([torch.from_numpy(np.asarray(Image.open(root / "loss_masks" / f), np.float32) / 255)
                              for f in files])  # fmt: skip
    torch.testing.assert_close(b.mask, want_masks)
    assert loss == pytest.approx(float(sd_scripts_masked_loss(out, b.noise, want_masks)), rel=1e-5)
    plain = _setup(tiny_components, root, tmp_path / "p")
    loss_p, out_p, b_p, grads_p = _one_step(plain, monkeypatch)
    torch.testing.assert_close(out_p, out)  # the same draws and weights: only the loss differs
    assert b_p.mask is None and loss_p == pytest.approx(float((out - b.noise).pow(2).mean()), rel=1e-5)
    assert abs(loss - loss_p) > 0.05 * loss_p
    assert any(float(g.abs().max()) > 0 for g in grads)
    assert not all(torch.allclose(g, gp, rtol=1e-3, atol=1e-8) for g, gp in zip(grads, grads_p, strict=True))


@pytest.mark.parametrize("source", ["alpha of RGB images", "folder of 255s"])
def test_an_all_ones_mask_equals_the_unmasked_run_exactly(
    tiny_components, toy, tmp_path, monkeypatch, source
):
    """Oracle: the unmasked run. A mask of ones (RGB images under alpha_mask, or all-255 mask files)
    multiplies the loss by exactly 1: the same loss and the same LoRA update, bit for bit."""
    root, _, image_dir = toy
    if source.startswith("alpha"):
        dataset = {"alpha_mask": True}
    else:
        ones = tmp_path / "ones"
        ones.mkdir()
        for png in (root / image_dir).glob("*.png"):
            Image.fromarray(np.full((32, 32), 255, np.uint8)).save(ones / png.name)
        dataset = {"masked_loss": True, "conditioning_data_dir": str(ones)}
    loss, _, b, grads = _one_step(_setup(tiny_components, root, tmp_path / "m", dataset), monkeypatch)
    loss_p, _, _, grads_p = _one_step(_setup(tiny_components, root, tmp_path / "p"), monkeypatch)
    assert b.mask is not None and bool((b.mask == 1).all())
    assert loss == loss_p
    assert all(torch.equal(g, gp) for g, gp in zip(grads, grads_p, strict=True))


def test_toy_masks_end_to_end_folder_and_alpha_agree(tiny_components, toy, tmp_path):
    """Oracle: two independent mask sources. Two optimizer steps (with flips) of ``train`` on the toy
    dataset with conditioning_data_dir = its loss_masks, and on the RGBA copy whose alpha is that mask
    with alpha_mask = true, log the same losses; the unmasked run logs others."""
    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora import loop
    from sdxl_probe.train.lora.config import TrainConfig

    root, rgba, _ = toy

    def losses(name, path, dataset):
        cfg = from_dict(TrainConfig, {
            "dataset": {"path": str(path), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                        "flip_aug": True, **dataset},
            "network": {"dim": 4, "alpha": 4.0, "target": "attn"}, "optimizer": {"unet_lr": 1e-3},
            "training": {"max_train_steps": 2, "seed": 1, "threads": 1},
            "saving": {"output_dir": str(tmp_path / name)}, "logging": {"progress_bar": False},
        })  # fmt: skip
        loop.train(cfg, tmp_path / name, log=lambda s: None, components=copy.deepcopy(tiny_components))
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())["images"]
        return [r["loss"] for r in rows if "loss" in r], [m["mask"] for m in manifest]

    folder, folder_masks = losses("folder", root, {"masked_loss": True,
                                                   "conditioning_data_dir": str(root / "loss_masks")})  # fmt: skip
    alpha, alpha_masks = losses("alpha", rgba, {"alpha_mask": True})
    plain, plain_masks = losses("plain", root, {})
    assert len(folder) == 2 and folder == pytest.approx(alpha, rel=1e-6)
    assert all(abs(f - p) > 0.05 * p for f, p in zip(folder, plain, strict=True))
    assert alpha_masks == ["alpha", "alpha"] and plain_masks == [None, None]
    assert [m.split("/")[-2:] for m in folder_masks] == [
        ["loss_masks", "00000.png"],
        ["loss_masks", "00001.png"],
    ]


# ----------------------------------------------------------------------------- settings and bad inputs


def test_kohya_toml_subsets_take_their_own_mask_settings(tmp_path):
    """Oracle: sd-scripts' per-subset keys: one subset with conditioning_data_dir, one with alpha_mask
    (set in [general], inherited), one that turns it off; [dataset] settings apply only where unset."""
    for name in ("a", "b", "c"):
        kohya_folder(tmp_path / name, [(32, 32)], name="1_x")
    (tmp_path / "ma").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ma" / "0.png")
    (tmp_path / "ds.toml").write_text(
        '[general]\nalpha_mask = true\n[[datasets]]\n'
        '[[datasets.subsets]]\nimage_dir = "a/1_x"\nconditioning_data_dir = "ma"\n'
        '[[datasets.subsets]]\nimage_dir = "b/1_x"\n'
        '[[datasets.subsets]]\nimage_dir = "c/1_x"\nalpha_mask = false\n', encoding="utf-8")  # fmt: skip
    images = read(tmp_path / "ds.toml", MaskSettings(masked_loss=True))
    assert [(im.mask_file, im.alpha_mask) for im in images] == [(tmp_path / "ma" / "0.png", False),
                                                                (None, True), (None, False)]  # fmt: skip
    np.testing.assert_array_equal(load_mask(images[0], False), np.zeros((32, 32), np.float32))
    np.testing.assert_array_equal(load_mask(images[2], False), np.ones((32, 32), np.float32))  # no source


def test_dataset_mask_folder_per_subset_and_not_for_reg_images(tmp_path):
    """``[dataset] conditioning_data_dir`` serves DIR/<subset folder>/ when it exists, else DIR; reg_path
    images take no folder mask."""
    root = kohya_folder(tmp_path / "ds", [(32, 32)], name="1_a")
    kohya_folder(root, [(32, 32)], name="1_b")
    kohya_folder(tmp_path / "reg", [(32, 32)], name="1_r")
    masks = tmp_path / "masks"
    (masks / "1_a").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(masks / "1_a" / "0.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(masks / "0.png")
    lines = []
    images = read(
        root, MaskSettings(True, False, str(masks)), reg_path=str(tmp_path / "reg"), log=lines.append
    )
    assert [im.mask_file for im in images] == [masks / "1_a" / "0.png", masks / "0.png", None]
    assert "2 images with a mask file, 0 with their alpha channel, 1 without a mask" in "\n".join(lines)


def test_wrong_size_mask_is_one_line_naming_both_files_and_sizes(tmp_path):
    root = kohya_folder(tmp_path / "ds", [(32, 40)])
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m" / "0.png")
    with pytest.raises(DatasetError) as e:
        read(root, MaskSettings(True, False, str(tmp_path / "m")))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "m" / "0.png") in msg and str(root / "1_thing" / "0.png") in msg
    assert "32x32 px" in msg and "40x32 px" in msg and "save the mask at its image's size" in msg


def test_missing_mask_is_one_line_naming_the_image_and_the_expected_path(tmp_path):
    root = kohya_folder(tmp_path / "ds", [(32, 32), (32, 32)])
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m" / "0.png")
    with pytest.raises(DatasetError) as e:
        read(root, MaskSettings(True, False, str(tmp_path / "m")))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{root / '1_thing' / '1.png'}: no loss mask found")
    assert f"{tmp_path / 'm' / '1'}.{{png," in msg


def test_mask_named_like_no_image_is_one_line_naming_the_file(tmp_path):
    """Oracle: sd-scripts' ``ControlNetDataset`` refuses extra conditioning images; the same folder without the
    stray file reads."""
    root = kohya_folder(tmp_path / "ds", [(32, 32)])
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m" / "0.png")
    assert read(root, MaskSettings(True, False, str(tmp_path / "m")))[0].mask_file == tmp_path / "m" / "0.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "m" / "0 copy.png")
    with pytest.raises(DatasetError) as e:
        read(root, MaskSettings(True, False, str(tmp_path / "m")))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'm' / '0 copy.png'}: loss mask named like no training image")


@pytest.mark.parametrize("settings, words", [
    (MaskSettings(masked_loss=True), ["masked_loss = true but no image has a mask", "conditioning_data_dir",
                                      "alpha_mask = true"]),
    (MaskSettings(False, False, "MASKS"), ["conditioning_data_dir = 'MASKS' is set but [dataset] masked_loss is false",
                                           "set masked_loss = true"]),
])  # fmt: skip
def test_mask_settings_without_effect_are_refused_in_one_line(tmp_path, settings, words):
    root = kohya_folder(tmp_path / "ds", [(32, 32)])
    with pytest.raises(ConfigError) as e:
        read(root, settings)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)


def test_bad_mask_settings_stop_setup_before_the_model_loads(tmp_path, monkeypatch):
    """The data is read before any weight: a missing mask folder stops ``setup`` with the model loader untouched."""
    from sdxl_probe.config import from_dict
    from sdxl_probe.models import load
    from sdxl_probe.train.lora import loop
    from sdxl_probe.train.lora.config import TrainConfig

    monkeypatch.setattr(load, "load_components", lambda *a, **k: pytest.fail("weights loaded"))
    root = kohya_folder(tmp_path / "ds", [(64, 64)])
    cfg = from_dict(TrainConfig, {"dataset": {"path": str(root), "resolution": 64, "masked_loss": True,
                                              "conditioning_data_dir": str(tmp_path / "nowhere")},
                                  "training": {"threads": 1}})  # fmt: skip
    with pytest.raises(DatasetError, match="conditioning_data_dir is not a folder"):
        loop.setup(cfg, tmp_path / "run", resume=False, log=lambda s: None)
