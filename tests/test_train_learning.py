"""It learns: a LoRA on 8 toy images of a shape the toy model never saw (a heart), named by a trigger word.

Setup as a DreamBooth/kohya user would run it: the 8 concept images (``1_zkw``, captions like
``red zkw, white background``) plus 8 ordinary toy-world images as a second subset (sd-scripts'
regularization / prior-preservation images), so the trigger, not every shape word, learns the heart.
UNet, TE1 and TE2 LoRA, 600 steps. Oracle: the toy world's pixel judge (no learned parts).

Prompts: each concept image's colour and background with the trigger (``red zkw, white background``),
two seeds each; "without trigger" swaps ``zkw`` for a base shape word; "base" is the trigger prompts
on the toy model without the LoRA. Acceptance (issue #12): >= 80 %, <= 20 %, <= 20 %.
"""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from sdxl_probe.config import from_dict
from sdxl_probe.models.load import load_components
from sdxl_probe.pipeline.lora import lora_loaded
from sdxl_probe.pipeline.sampling import generate_images
from sdxl_probe.toy.dataset import read_metadata, write_dataset
from sdxl_probe.toy.judge import judge_image
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train

SHAPES = ("circle", "square", "triangle", "star")


def heart_rate(components, prompts: list[str]) -> float:
    images = generate_images(components, prompts * 2, seed=1000, steps=20, cfg=5.0)  # (2N, 64, 64, 3)
    return sum("heart" in judge_image(im).shapes() for im in images) / len(images)


@pytest.mark.slow
def test_lora_learns_a_new_shape_behind_its_trigger(tmp_path):
    torch.set_num_threads(2)
    t0 = time.time()
    write_dataset(tmp_path / "concept", n=8, seed=1, concept="heart", trigger="zkw")
    write_dataset(tmp_path / "ordinary", n=8, seed=7)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(tmp_path / "concept" / "1_zkw", data / "1_zkw")
    shutil.copytree(tmp_path / "ordinary" / "1_toy", data / "1_toy")
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(data), "caption_extension": ".txt", "resolution": 64, "batch_size": 8,
                    "cache_latents": "memory"},
        "network": {"dim": 8, "alpha": 8.0, "train_text_encoder_1": True, "train_text_encoder_2": True},
        "optimizer": {"unet_lr": 2e-3, "text_encoder_1_lr": 1e-3, "text_encoder_2_lr": 1e-3,
                      "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10},
        "training": {"max_train_steps": 600, "seed": 0, "min_snr_gamma": 5.0},
        "saving": {"output_dir": str(tmp_path / "run"), "output_name": "heart"},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    lora = train(cfg, tmp_path / "run", log=lambda s: None)
    t_train = time.time() - t0
    records = read_metadata(tmp_path / "concept")
    trigger = [f"{r['objects'][0]['colour']} zkw, {r['background']} background" for r in records]
    plain = [p.replace("zkw", SHAPES[i % len(SHAPES)]) for i, p in enumerate(trigger)]
    base = load_components("toy", dtype=torch.float32)
    base_rate = heart_rate(base, trigger)
    with lora_loaded(base, lora):
        with_trigger, without = heart_rate(base, trigger), heart_rate(base, plain)
    print(f"\nheart rate: LoRA with trigger {with_trigger:.0%}, LoRA without trigger {without:.0%}, "
          f"base model with trigger {base_rate:.0%} ({len(trigger) * 2} samples each); "
          f"train {t_train:.0f}s, total {time.time() - t0:.0f}s")  # fmt: skip
    assert with_trigger >= 0.8
    assert without <= 0.2
    assert base_rate <= 0.2
