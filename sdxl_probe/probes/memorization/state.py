"""Measure one model state (the base model, or the base with one LoRA loaded) on every image."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from sdxl_probe.probes.memorization.generate import GenerationCache, SamplerSettings, generate_all
from sdxl_probe.probes.memorization.measures import (
    coverage_of,
    denoising_losses,
    image_features,
    image_measures,
    to_unit,
)
from sdxl_probe.probes.memorization.scores import tiled_l2


@dataclass
class Reference:
    """The images every state is compared with, prepared once.

    Attributes:
        captions: per image.
        pixels: (M, H, W, 3) uint8.
        features: (M, D) features (VAE latents, or ``encoder``'s embeddings).
        train: indices of the training images.
        contents: the toy judge's content per image (toy model), else None.
        encoder: the image encoder of the copy cosine (:class:`features.ImageEncoder`); None = VAE latents.
    """

    captions: list[str]
    pixels: np.ndarray
    features: torch.Tensor
    train: list[int]
    contents: list | None = None
    encoder: object | None = None


@dataclass
class StateMeasures:
    """Raw measures of one state: per image, its nearest generation, coverage and timings."""

    per_image: list[dict[str, float]]
    nearest: list[np.ndarray]  # per image, (H, W, 3) uint8: the seed closest to the image
    coverage: float
    generated: int
    seconds: dict[str, float] = field(default_factory=dict)
    split_gap: list[float] = field(default_factory=list)  # per training image, |half A - half B| nearest L2


def measure_state(components, model_id: str, ref: Reference, seeds: list[int], settings: SamplerSettings,
                  cache: GenerationCache, *, batch_size: int, log=print) -> StateMeasures:  # fmt: skip
    """Generate (or read from the cache) N seeds per caption and measure them against the images."""
    t0 = time.perf_counter()
    jobs = [(c, s) for c in ref.captions for s in seeds]
    gens, made = generate_all(components, model_id, jobs, settings, cache, batch_size=batch_size)
    t1 = time.perf_counter()
    n = len(seeds)
    images = torch.stack([g.image for g in gens]).numpy()  # (M * N, H, W, 3)
    features = image_features(components, images, batch_size, ref.encoder)  # (M * N, D)
    losses = denoising_losses(components, ref.pixels, ref.captions, batch_size)
    with one_thread():
        per_image, nearest, split_gap, cov = _score_images(gens, ref, n, features)
    t2 = time.perf_counter()
    for i, loss, unc in zip(range(len(per_image)), losses["loss"], losses["loss_uncond"], strict=True):
        per_image[i] |= {"loss": loss, "loss_uncond": unc, "cond_gap": unc - loss}
    log(f"  {model_id[:40]}: {made} generated, {len(jobs) - made} from the cache; "
        f"generation {t1 - t0:.1f} s, scoring {t2 - t1:.1f} s")  # fmt: skip
    return StateMeasures(per_image, nearest, cov, made, {"generation": t1 - t0, "scoring": t2 - t1}, split_gap)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the many small scoring ops on one thread: on a busy CPU, a thread pool's wake-ups cost more than
    the ops themselves (measured: tiled L2 of 8 x 8 images at 64 px, 0.5 s on 2 threads under load, 3 ms on 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score_images(gens, ref: Reference, n: int, features: torch.Tensor):
    """Per image measures, nearest generation and split gap; then coverage over the training images."""
    per_image, nearest, split_gap = [], [], []
    for i in range(len(ref.captions)):
        mine = gens[i * n : (i + 1) * n]
        own = to_unit(ref.pixels[i : i + 1])
        per_image.append(image_measures(mine, own, ref.features[i : i + 1], features[i * n : (i + 1) * n],
                                        ref.contents[i] if ref.contents else None))  # fmt: skip
        d = tiled_l2(to_unit(torch.stack([g.image for g in mine])), own)[:, 0]  # (N,)
        nearest.append(mine[int(d.argmin())].image.numpy())
        if i in ref.train and n >= 2:
            split_gap.append(abs(float(d[: n // 2].min()) - float(d[n // 2 :].min())))
    train_gens = [g for i in ref.train for g in gens[i * n : (i + 1) * n]]
    return per_image, nearest, split_gap, coverage_of(train_gens, to_unit(ref.pixels[ref.train]))
