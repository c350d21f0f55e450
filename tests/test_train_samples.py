"""Sample prompts in sd-scripts syntax, and samples written during training through the project's sampler."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_probe.config import from_dict
from sdxl_probe.errors import ConfigError
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train
from sdxl_probe.train.lora.prompts import SamplePrompt, parse_prompt_line, read_prompt_file


def test_prompt_line_options_as_sd_scripts():
    got = parse_prompt_line("red zkw, white background --n blurry, text --w 64 --h 32 --d 7 --s 12 --l 4.5", 3)
    assert got == SamplePrompt("red zkw, white background", "blurry, text", 64, 32, 7, 12, 4.5)
    assert parse_prompt_line("a cat", 5) == SamplePrompt("a cat", seed=5)  # sd-scripts defaults: 30 steps, 7.5
    with pytest.raises(ConfigError, match="unknown option --q"):
        parse_prompt_line("a cat --q 3", 0)
    with pytest.raises(ConfigError, match="--w 'wide' is not a int"):
        parse_prompt_line("a cat --w wide", 0)


def test_samples_are_written_at_each_sample_step(tiny_components, tmp_path):
    write_dataset(tmp_path / "ds", n=2, seed=0, size=32, trigger="zkw")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nzkw red circle --d 11 --s 3 --l 1\n\nzkw blue square --s 3 --w 32 --h 32\n",
                       encoding="utf-8")  # fmt: skip
    assert len(read_prompt_file(prompts)) == 2
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp_path / "ds"), "caption_extension": ".txt", "resolution": 32, "batch_size": 2},
        "optimizer": {"unet_lr": 1e-2}, "training": {"max_train_steps": 4},
        "sampling": {"prompts": str(prompts), "every_n_steps": 2},
        "saving": {"output_dir": str(tmp_path / "run")}, "logging": {"progress_bar": False},
    })  # fmt: skip
    train(cfg, tmp_path / "run", components=copy.deepcopy(tiny_components), log=lambda s: None)
    steps = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert steps == ["step-00000002", "step-00000004"]
    first, last = (np.asarray(Image.open(tmp_path / "run" / "samples" / s / "000.png")) for s in steps)
    assert first.shape == (32, 32, 3) and not np.array_equal(first, last)  # same seed, the LoRA moved
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "Samples" in html and "loss and learning rate by step" in html and "step-00000002, step-00000004" in html
    from sdxl_probe.reports import render_report

    (tmp_path / "run" / "report.html").unlink()
    assert render_report("train", tmp_path / "run").is_file()  # re-rendered from saved files, no model


def test_validation_loss_at_fixed_pairs_on_held_out_images(tiny_components, tmp_path):
    from sdxl_probe.pipeline.conditioning import encode_captions, time_ids
    from sdxl_probe.pipeline.noising import seeded_noise
    from sdxl_probe.train.lora import batch, loop

    write_dataset(tmp_path / "ds", n=5, seed=0, size=32, trigger="zkw")
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp_path / "ds"), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "validation_split": 0.4},
        "training": {"max_train_steps": 2}, "saving": {"output_dir": str(tmp_path / "run"), "save_every_n_steps": 1},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    comps = copy.deepcopy(tiny_components)
    run = loop.setup(cfg, tmp_path / "run", resume=False, log=lambda s: None, components=comps)
    assert len(run.val_idx) == 2 and not set(run.val_idx) & {i for b in run.order.epoch(0) for i in b}
    for m in (comps.unet, comps.text_encoder, comps.text_encoder_2):
        m.eval()
    got = batch.validation_loss(run)
    assert got == batch.validation_loss(run)  # fixed (t, noise) pairs: the same number twice
    # by hand: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (Ho et al. 2020, eq. 4), betas from the scheduler config
    c = comps.scheduler.config
    betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    losses = []
    with torch.no_grad():
        for i in run.val_idx:
            x0 = batch.batch_latents(run, [i], [False])
            enc = encode_captions(comps, [run.images[i].caption])
            tids = time_ids(1, 32, 32, original=run.images[i].original)
            for t in (200, 400, 600, 800):
                eps = seeded_noise(tuple(x0.shape), seed=batch.hash_seed(0, i, t), like=x0)
                xt = (alpha_bar[t].sqrt() * x0 + (1 - alpha_bar[t]).sqrt() * eps).float()
                pred = comps.unet(xt, torch.tensor([t]), encoder_hidden_states=enc.context,
                                  added_cond_kwargs={"text_embeds": enc.pooled, "time_ids": tids}).sample
                losses.append((pred - eps).pow(2).mean().item())
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_bf16_autocast_and_gradient_checkpointing_train(tiny_components, tmp_path):
    from safetensors.torch import load_file

    write_dataset(tmp_path / "ds", n=2, seed=0, size=32, trigger="zkw")
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp_path / "ds"), "caption_extension": ".txt", "resolution": 32, "batch_size": 2},
        "optimizer": {"unet_lr": 1e-2}, "training": {"max_train_steps": 2, "mixed_precision": "bf16",
                                                     "gradient_checkpointing": True},
        "saving": {"output_dir": str(tmp_path / "run")}, "logging": {"progress_bar": False},
    })  # fmt: skip
    path = train(cfg, tmp_path / "run", components=copy.deepcopy(tiny_components), log=lambda s: None)
    ups = [v for k, v in load_file(str(path)).items() if k.endswith("lora_up.weight")]
    assert ups and all(torch.isfinite(v).all() for v in ups) and any(v.abs().sum() > 0 for v in ups)
