"""Regularization images and ``prior_loss_weight``, as sd-scripts trains them.

Oracles: a closed form of the reg balancing rule of sd-scripts' ``DreamBoothDataset.__init__``
(derived below, independent of the loop that transcribes it), per-sample MSE and SNR computed by hand
from ``alphas_cumprod``, and for ``prior_loss_weight = 0`` the gradient of the training images alone.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_probe.config import from_dict
from sdxl_probe.errors import DatasetError
from sdxl_probe.pipeline.conditioning import encode_with, predict_noise, time_ids
from sdxl_probe.pipeline.noising import training_scheduler
from sdxl_probe.text.captions import CaptionOptions
from sdxl_probe.train.lora import loop as loop_module
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.data import (
    BatchOrder,
    Buckets,
    TrainImage,
    balanced_repeats,
    read_images,
    split_images,
)
from sdxl_probe.train.lora.network import build_network
from sdxl_probe.train.lora.objectives import Objective, diffusion_loss


def images(n_train: int, train_repeats: int, n_reg: int, reg_repeats: int) -> list[TrainImage]:
    make = lambda i, r, reg: TrainImage(Path(f"{i}.png"), "c", CaptionOptions(), r, "s", str(i), (32, 32),  # noqa: E731
                                        (32, 32), reg)  # fmt: skip
    return [make(i, train_repeats, False) for i in range(n_train)] + [
        make(n_train + j, reg_repeats, True) for j in range(n_reg)]  # fmt: skip


def expected_reg_repeats(total_train: int, n_reg: int, r: int) -> list[int]:
    """Closed form of the rule: with R*r >= T the first ceil(T / r) reg images keep their r repeats and
    the rest are unused; with R*r < T every image gets r, and the T - R*r extra repeats go round-robin
    from the first image."""
    if n_reg * r >= total_train:
        used = math.ceil(total_train / r)
        return [r if j < used else 0 for j in range(n_reg)]
    extra = total_train - n_reg * r
    return [r + extra // n_reg + (1 if j < extra % n_reg else 0) for j in range(n_reg)]


@pytest.mark.parametrize("n_train, tr, n_reg, rr", [
    (5, 2, 3, 1), (5, 2, 20, 1), (4, 1, 4, 1), (3, 10, 7, 1), (6, 1, 2, 3), (2, 5, 9, 4), (1, 1, 3, 5), (8, 3, 3, 2),
])  # fmt: skip
def test_reg_repeats_follow_dreambooth_dataset(n_train, tr, n_reg, rr):
    """Oracle: the closed form above; with reg repeats 1 the reg count is exactly the training count."""
    ims = images(n_train, tr, n_reg, rr)
    got = balanced_repeats(ims, list(range(len(ims))))
    assert [got[i] for i in range(n_train)] == [tr] * n_train
    reg = [got[n_train + j] for j in range(n_reg)]
    assert reg == expected_reg_repeats(n_train * tr, n_reg, rr)
    if rr == 1:
        assert sum(reg) == n_train * tr
    order = BatchOrder(ims, list(range(len(ims))), 3, seed=1)
    assert Counter(i for b in order.epoch(0) for i in b) == Counter({i: n for i, n in got.items() if n})


def test_reg_sources_and_the_split(tmp_path):
    """Oracle: the folders as written: ``reg_path`` subsets and TOML ``is_reg`` subsets are reg, the
    rest is not; validation holds out training images only."""
    def sub(name, n, seed):
        d = tmp_path / name
        d.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
        return d

    sub("train/2_ohwx", 4, 0)
    sub("reg/1_thing", 3, 1)
    buckets = Buckets(32, False, 32, 32, 32, False)
    read = lambda path, **kw: read_images(str(path), caption_extension=".txt", caption_settings={},  # noqa: E731
                                          buckets=buckets, on_bad_image="error", log=print, **kw)  # fmt: skip
    ims = read(tmp_path / "train", reg_path=str(tmp_path / "reg"))
    assert [im.is_reg for im in ims] == [False] * 4 + [True] * 3
    toml = tmp_path / "ds.toml"
    toml.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "train/2_ohwx"}"\nnum_repeats = 2\n'
                    f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "reg/1_thing"}"\nis_reg = true\n')  # fmt: skip
    assert [im.is_reg for im in read(toml)] == [False] * 4 + [True] * 3
    train, held = split_images(ims, 0.5, seed=0)
    assert len(held) == 2 and not any(ims[i].is_reg for i in held) and {4, 5, 6} <= set(train)
    assert sorted(train + held) == list(range(7))
    only_reg = tmp_path / "reg.toml"
    only_reg.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{tmp_path / "reg/1_thing"}"\nis_reg = true\n')
    with pytest.raises(DatasetError, match="only regularization images") as e:
        read(only_reg)
    assert "\n" not in str(e.value)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> list[float]:
    return [float(((p - t) ** 2).sum()) / p.numel() for p, t in zip(pred.double(), target.double(), strict=True)]


@pytest.mark.parametrize("w, gamma", [(1.0, 0.0), (0.3, 0.0), (2.5, 5.0), (0.0, 5.0)])
def test_loss_is_the_weighted_mean_of_per_sample_mse(tiny_components, w, gamma):
    """Oracle: sum_i weight_i * mse_i * min(snr_i, gamma) / snr_i / B, with mse and snr by hand
    (snr = a / (1 - a), a = alphas_cumprod[t]; sd-scripts multiplies loss_weights before the mean)."""
    ims = images(2, 1, 2, 1)
    order = BatchOrder(ims, [0, 1, 2, 3], 4, seed=0, prior_loss_weight=w)
    idx = [2, 0, 3, 1]
    weights = order.loss_weights(idx)
    assert weights == [w, 1.0, w, 1.0]
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 300, 600, 999])
    sched = training_scheduler(tiny_components.scheduler.config)
    got = diffusion_loss(pred, None, target, t, sched, Objective(min_snr_gamma=gamma), torch.tensor(weights))
    terms = []
    for mse, wi, ti in zip(per_sample_mse(pred, target), weights, t.tolist(), strict=True):
        a = float(sched.alphas_cumprod[ti])
        snr = a / (1 - a)
        terms.append(wi * mse * (min(snr, gamma) / snr if gamma > 0 else 1.0))
    assert float(got) == pytest.approx(sum(terms) / 4, rel=1e-5)


def test_prior_loss_weight_zero_gives_the_gradient_of_the_training_images(tiny_components):
    """Oracle: the gradient of the 2 training images alone, times 2/4 (sd-scripts' mean runs over the
    whole batch, the zero-weighted reg samples included); so reg images then have no effect."""
    comps = copy.deepcopy(tiny_components)
    network = build_network(comps, preset="attn", dim=4, alpha=4.0, dropout=0.0, conv_dim=4, conv_alpha=1.0,
                            train_unet=True, train_te1=False, train_te2=False, seed=0)  # fmt: skip
    with torch.no_grad():
        for p in network.all_params():
            p.normal_(0, 0.1)  # up starts at zero: give both factors a gradient
        enc = encode_with(comps.text_encoder, comps.text_encoder_2, ["a red circle", "a blue square", "a dog",
                          "a cat"], model_max_length=77)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    xt, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t, tids = torch.tensor([100, 400, 700, 900]), time_ids(4, 16, 16)
    sched = training_scheduler(comps.scheduler.config)

    def grads(rows: list[int], weights: list[float] | None) -> list[torch.Tensor]:
        for p in network.all_params():
            p.grad = None
        pred = predict_noise(comps.unet, xt[rows], t[rows], context=enc.context[rows], pooled=enc.pooled[rows],
                             tids=tids[rows])  # fmt: skip
        w = torch.tensor(weights) if weights is not None else None
        diffusion_loss(pred.float(), None, noise[rows], t[rows], sched, Objective(min_snr_gamma=5.0), w).backward()
        return [p.grad.clone() for p in network.all_params()]

    order = BatchOrder(images(2, 1, 2, 1), [0, 1, 2, 3], 4, seed=0, prior_loss_weight=0.0)
    weighted = grads([0, 1, 2, 3], order.loss_weights([0, 1, 2, 3]))
    alone = grads([0, 1], None)
    assert any(float(a.abs().max()) > 0 for a in alone)
    for a, b in zip(weighted, alone, strict=True):
        torch.testing.assert_close(a, b * 2 / 4, rtol=1e-4, atol=1e-7)
    with_reg = grads([0, 1, 2, 3], [1.0] * 4)
    assert not all(torch.allclose(a, b * 2 / 4, rtol=1e-3) for a, b in zip(with_reg, alone, strict=True))


def test_the_loop_weights_reg_samples_by_prior_loss_weight(tiny_components, tmp_path, monkeypatch):
    """Oracle: the dataset as written: 2 training images x 2 repeats = 4, so the 3 reg images train
    2, 1, 1 times (closed form above); one epoch of 8 samples carries 4 weights 1 and 4 prior_loss_weight."""
    for name, n in (("train/2_ohwx", 2), ("reg/1_thing", 3)):
        d = tmp_path / name
        d.mkdir(parents=True)
        rng = np.random.default_rng(n)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp_path / "train"), "reg_path": str(tmp_path / "reg"), "prior_loss_weight": 0.25,
                    "resolution": 32, "batch_size": 4, "cache_latents": "memory"},
        "network": {"target": "attn"}, "training": {"max_train_steps": 2, "seed": 0},
        "saving": {"output_dir": str(tmp_path / "run")}, "logging": {"progress_bar": False},
    })  # fmt: skip
    seen, real = [], loop_module.diffusion_loss
    monkeypatch.setattr(loop_module, "diffusion_loss", lambda *a: seen.append(a[6].tolist()) or real(*a))
    loop_module.train(cfg, tmp_path / "run", log=lambda s: None, components=copy.deepcopy(tiny_components))
    assert len(seen) == 2 and sorted(seen[0] + seen[1]) == [0.25] * 4 + [1.0] * 4
    rows = json.loads((tmp_path / "run" / "manifest.json").read_text())["images"]
    assert [(r["is_reg"], r["trained_repeats"]) for r in rows] == [(False, 2)] * 2 + [(True, 2), (True, 1), (True, 1)]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "lora.safetensors"), "pt") as f:
        meta = f.metadata()
    # sd-scripts' DreamBoothDataset counts: 2 images x 2 repeats trained, 3 reg images x 1 repeat
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == ("4", "3")
