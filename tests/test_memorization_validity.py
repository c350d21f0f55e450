"""Validity on the toy world (issue #14's acceptance): the scores separate a memorized set from an unmemorized one.

Ground truth by construction: a LoRA is trained on 4 toy images, each with its own caption (sizes and
positions make every caption unique), for many steps at a high rate, so it memorizes them; 4 further
images of the same distribution are held out (the trainer's validation split, never trained on).
Memorized set: the 4 training captions on the final checkpoint. Unmemorized set: the 4 held-out captions on
the final checkpoint, and the 4 training captions on the early checkpoint. Each score's AUC is printed
(oracle: the labels above; AUC by :func:`scores.auc`, itself checked against pair counting); the headline
must reach 0.95, and its training-image mean must rise from the early to the last checkpoint.
A second run on the same folder must reuse every cached generation (oracle: the sampler's call count).
"""

from __future__ import annotations

import time

import pytest
import torch

from sdxl_probe.config import from_dict
from sdxl_probe.pipeline import sampling
from sdxl_probe.probes.memorization.core import measure
from sdxl_probe.probes.memorization.result import MemorizationResult
from sdxl_probe.probes.memorization.scores import auc
from sdxl_probe.toy.dataset import read_metadata, write_dataset
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train

STEPS, EVERY, KEEP = 300, 50, (50, 150, 300)  # checkpoints scored: an early one, a middle one, the last


def train_run(tmp_path):
    write_dataset(tmp_path / "data", n=8, seed=3, style="sentence", details=True)
    captions = [r["caption"] for r in read_metadata(tmp_path / "data")]
    assert len(set(captions)) == len(captions)  # each image its own caption
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(tmp_path / "data"), "caption_extension": ".txt", "resolution": 64, "batch_size": 4,
                    "cache_latents": "memory", "cache_text_encoder_outputs": True, "validation_split": 0.5},
        "network": {"dim": 8, "alpha": 8.0},
        "optimizer": {"unet_lr": 3e-3, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10},
        "training": {"max_train_steps": STEPS, "seed": 0, "threads": 1},
        "saving": {"output_dir": str(tmp_path / "run"), "output_name": "mem", "save_every_n_steps": EVERY,
                   "save_last_k": STEPS // EVERY},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    train(cfg, tmp_path / "run", log=lambda s: None)
    for path in (tmp_path / "run").glob("mem-step*.safetensors"):
        if int(path.stem.rsplit("step", 1)[1]) not in KEEP:
            path.unlink()  # a user may keep only some checkpoints; three keep this test short
    return tmp_path / "run"


def print_aucs(result: MemorizationResult) -> dict[str, float]:
    early, last = result.checkpoints[0]["step"], result.checkpoints[-1]["step"]
    out = {}
    for name, sign in sorted(result.directions.items()):
        sign = sign or 1
        pos = [sign * v for v in result.image_scores(last, name, "train")]
        neg = [sign * v for v in result.image_scores(last, name, "held-out") + result.image_scores(early, name, "train")]
        out[name] = auc(pos, neg)
        means = [c["scores"].get(name) for c in result.checkpoints]
        print(f"{name:18s} AUC {out[name]:.3f}   training-image mean by step "
              + ", ".join(f"{c['step']}: {m:+.4f}" for c, m in zip(result.checkpoints, means, strict=True) if m is not None))
    return out


@pytest.mark.slow
def test_memorized_set_is_separated_and_scores_rise_with_steps(tmp_path, monkeypatch):
    torch.set_num_threads(1)  # one thread: on a shared CPU, 2 threads ran the sampler about 20x slower
    t0 = time.perf_counter()
    run = train_run(tmp_path)
    t_train = time.perf_counter() - t0
    result = measure(run, tmp_path / "mem", seeds=8, steps=20, sensitivity_seeds=2, significance_captions=2,
                     log=lambda s: print(s, flush=True))  # fmt: skip
    t_measure = time.perf_counter() - t0 - t_train
    print(f"\ntrain {t_train:.0f} s, measure {t_measure:.0f} s ({len(result.checkpoints)} checkpoints)")
    aucs = print_aucs(result)
    print(f"recommended: step {result.recommended['step']}: {result.recommended['rule']}")
    print("membership AUC (loss gap, train vs held-out) by step: "
          + ", ".join(f"{c['step']}: {c['membership_auc']}" for c in result.checkpoints))
    assert aucs[result.headline] >= 0.95
    head = [c["scores"][result.headline] for c in result.checkpoints]
    assert head[-1] > head[0]
    assert (tmp_path / "mem" / "memorization.html").is_file()
    assert "toy model" in (tmp_path / "mem" / "memorization.html").read_text(encoding="utf-8")

    calls: list[int] = []
    real = sampling.sample_latents
    monkeypatch.setattr(sampling, "sample_latents", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = measure(run, tmp_path / "mem2", seeds=8, steps=20, checkpoints="last", sensitivity_seeds=2,
                    significance_captions=2, cache_dir=tmp_path / "mem_cache", log=lambda s: None)  # fmt: skip
    assert calls == [] and again.checkpoints[-1]["generated"] == 0
    assert again.checkpoints[-1]["scores"][result.headline] == pytest.approx(head[-1], abs=1e-6)
