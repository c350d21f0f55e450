"""Score a list of checkpoints against the base model, then calibrate and recommend (``core._measure``'s body)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sdxl_probe.probes.memorization import compare
from sdxl_probe.probes.memorization.generate import GenerationCache, SamplerSettings
from sdxl_probe.probes.memorization.inputs import Checkpoint, ScoredImage
from sdxl_probe.probes.memorization.result import IMAGE_DIR, MemorizationResult
from sdxl_probe.probes.memorization.settings import MemorizationSettings
from sdxl_probe.probes.memorization.state import Reference, StateMeasures, measure_state


def reference(components, images: list[ScoredImage], batch_size: int, encoder=None) -> Reference:
    """Pixels, features (VAE latents, or ``encoder``'s) and (toy model) judged contents of the images, once."""
    from sdxl_probe.probes.memorization.measures import image_features, judged_content

    pixels = np.stack([im.pixels for im in images])  # (M, H, W, 3)
    contents = [judged_content(p) for p in pixels] if components.is_toy else None
    return Reference([im.caption for im in images], pixels, image_features(components, pixels, batch_size, encoder),
                     [i for i, im in enumerate(images) if im.split == "train"], contents, encoder)  # fmt: skip


def sampler_settings(settings: MemorizationSettings, size: tuple[int, int], noise: float = 0.0) -> SamplerSettings:
    return SamplerSettings(steps=settings.steps, cfg=settings.cfg, sampler=settings.sampler, height=size[0],
                           width=size[1], first_steps=min(settings.first_steps, settings.steps),
                           embedding_noise=noise)  # fmt: skip


def checkpoint_entry(ckpt: Checkpoint, state: StateMeasures, base: StateMeasures, ref: Reference,
                     metrics: list[dict]) -> tuple[dict, list[dict[str, float]]]:  # fmt: skip
    """The checkpoint's summary and its per-image scores (LoRA minus base)."""
    per_image = [compare.lora_minus_base(lo, ba) for lo, ba in zip(state.per_image, base.per_image, strict=True)]
    splits = ["train" if i in ref.train else "held-out" for i in range(len(per_image))]
    names = sorted({n for s in per_image for n in s})
    scores = {n: compare.mean([s[n] for s, sp in zip(per_image, splits, strict=True) if sp == "train" and n in s])
              for n in names}  # fmt: skip
    scores["coverage"] = state.coverage - base.coverage
    held = {n: [s[n] for s, sp in zip(per_image, splits, strict=True) if sp != "train" and n in s] for n in names}
    entry = {
        "step": ckpt.step, "file": str(ckpt.path), "sha256": ckpt.sha256, "scores": scores, "held_out": held,
        "raw_coverage": state.coverage,
        "split_auc": {n: compare.split_auc(per_image, splits, n) for n in names} if len(set(splits)) > 1 else {},
        "membership_auc": compare.split_auc(per_image, splits, "loss_gap") if len(set(splits)) > 1 else None,
        "train_loss": compare.metric_at(metrics, ckpt.step, "loss"),
        "val_loss": compare.metric_at(metrics, ckpt.step, "val_loss"),
        "generated": state.generated, "seconds": state.seconds,
    }  # fmt: skip
    return entry, per_image


def score_run(components, ckpts: list[Checkpoint], images: list[ScoredImage], metrics: list[dict],
              settings: MemorizationSettings, cache: GenerationCache, folder: Path, *, source: str, origin: str,
              log=print, encoder=None) -> MemorizationResult:  # fmt: skip
    """Measure the base model and every checkpoint; returns the result (figures written into ``folder``).

    ``encoder``: the copy cosine's image encoder (:class:`features.ImageEncoder`); None = VAE latents.
    """
    from sdxl_probe.pipeline.lora import lora_loaded

    size = images[0].pixels.shape[:2]
    ref = reference(components, images, settings.batch_size, encoder)
    sampler, seeds = sampler_settings(settings, size), settings.seed_list()
    prec = model_entry(components, source)
    where = f"{prec.get('device')}:{prec.get('dtype')}:{prec.get('vae_dtype')}"  # images differ by precision
    base_id = f"base:{components.model_hash()}:{where}"
    log(f"base model {source}: {len(images)} images x {len(seeds)} seeds")
    base = measure_state(components, base_id, ref, seeds, sampler, cache, batch_size=settings.batch_size, log=log)
    entries, per_image, states = [], {}, {}
    for ckpt in ckpts:
        log(f"checkpoint step {ckpt.step}: {ckpt.path.name}")
        with lora_loaded(components, ckpt.path):
            states[ckpt.step] = measure_state(components, f"lora:{ckpt.sha256}:{base_id}", ref, seeds, sampler, cache,
                                              batch_size=settings.batch_size, log=log)  # fmt: skip
            if ckpt is ckpts[-1]:
                extra = last_checkpoint_probes(components, ref, settings, size, cache, f"lora:{ckpt.sha256}:{base_id}",
                                               log)  # fmt: skip
        entry, per_image[ckpt.step] = checkpoint_entry(ckpt, states[ckpt.step], base, ref, metrics)
        entries.append(entry)
    base_extra = last_checkpoint_probes(components, ref, settings, size, cache, base_id, log)
    limit, how = compare.threshold(entries, base.split_gap)
    recommended = compare.recommend(entries, limit, how)
    panels = write_panels(folder, ref, base, states, recommended["step"], ckpts[-1].step)
    return MemorizationResult(
        toy_model=bool(components.is_toy), headline=compare.HEADLINE, checkpoints=entries, recommended=recommended,
        images=[{"file": im.file, "caption": im.caption, "split": im.split, "base": base.per_image[i],
                 "scores": {str(s): per_image[s][i] for s in per_image}, "panels": panels[i]}
                for i, im in enumerate(images)],
        model=prec, settings=settings_entry(settings, size, encoder),
        directions=compare.DIRECTION | {"coverage": 1}, sensitivity=sensitivity_entry(extra, base_extra),
        token_significance=significance_entry(extra, base_extra), source=origin,
    )  # fmt: skip


def last_checkpoint_probes(components, ref: Reference, settings: MemorizationSettings, size, cache, model_id,
                           log) -> dict:  # fmt: skip
    """Caption-sensitivity copies and token significance of the loaded state, on the training captions."""
    from sdxl_probe.probes.memorization.generate import generate_all
    from sdxl_probe.probes.memorization.measures import to_unit
    from sdxl_probe.probes.memorization.scores import tiled_l2
    from sdxl_probe.probes.memorization.sensitivity import (
        EMBEDDING_NOISE,
        PERTURBATIONS,
        perturbed_caption,
        token_significance,
    )

    t0 = time.perf_counter()
    seeds = settings.seed_list(settings.sensitivity_seeds)
    out: dict = {"nearest": {}, "tokens": []}
    if seeds:
        for kind in ("exact", *PERTURBATIONS):
            caps = [ref.captions[i] if kind in ("exact", "embedding_noise")
                    else perturbed_caption(kind, ref.captions[i], i, settings.class_caption) for i in ref.train]  # fmt: skip
            sampler = sampler_settings(settings, size, EMBEDDING_NOISE if kind == "embedding_noise" else 0.0)
            gens, _ = generate_all(components, model_id, [(c, s) for c in caps for s in seeds], sampler, cache,
                                   batch_size=settings.batch_size)  # fmt: skip
            n = len(seeds)
            out["nearest"][kind] = [float(tiled_l2(to_unit(np.stack([g.image.numpy() for g in gens[j * n:(j + 1) * n]])),
                                                   to_unit(ref.pixels[i : i + 1])).min()) for j, i in enumerate(ref.train)]  # fmt: skip
    for i in ref.train[: settings.significance_captions]:
        out["tokens"].append(token_significance(components, ref.captions[i], settings.seed_list(2), settings.steps,
                                                settings.sampler, size))  # fmt: skip
    log(f"  caption sensitivity and token significance: {time.perf_counter() - t0:.1f} s")
    return out


def sensitivity_entry(lora: dict, base: dict) -> dict:
    """Per perturbation, the mean rise of the nearest tiled L2 over the exact caption (LoRA minus base)."""
    from sdxl_probe.probes.memorization.compare import mean

    if not lora["nearest"]:
        return {}

    def drop(side: dict, kind: str) -> float:
        return mean([p - e for p, e in zip(side["nearest"][kind], side["nearest"]["exact"], strict=True)])

    kinds = [k for k in lora["nearest"] if k != "exact"]
    return {k: {"lora": drop(lora, k), "base": drop(base, k), "lora_minus_base": drop(lora, k) - drop(base, k)}
            for k in kinds}  # fmt: skip


def significance_entry(lora: dict, base: dict) -> list[dict]:
    """Per training caption, (token, LoRA minus base gradient norm), highest first."""
    out = []
    for lo, ba in zip(lora["tokens"], base["tokens"], strict=True):
        rows = [{"token": t, "lora": v, "base": b, "lora_minus_base": v - b} for (t, v), (_, b) in zip(lo, ba, strict=True)]
        out.append({"tokens": sorted(rows, key=lambda r: -r["lora_minus_base"])})
    return out


def write_panels(folder: Path, ref: Reference, base: StateMeasures, states: dict[int, StateMeasures],
                 recommended: int, last: int) -> list[dict[str, str]]:  # fmt: skip
    """Per image, PNGs of the image and of its nearest generation (last, recommended, base checkpoint).

    Returns:
        Per image, panel -> PNG name under ``images/``; panels "training", "last", "recommended", "base".
    """
    from PIL import Image

    from sdxl_probe.io import write_with

    out = []
    for i in range(len(ref.captions)):
        pictures = {"training": ref.pixels[i], "last": states[last].nearest[i],
                    "recommended": states[recommended].nearest[i], "base": base.nearest[i]}  # (H, W, 3) each
        names = {}
        for panel, pixels in pictures.items():
            names[panel] = f"{IMAGE_DIR}/{i:05d}_{panel}.png"
            write_with(folder / names[panel], lambda p, a=pixels: Image.fromarray(a).save(p, format="PNG"))
        out.append(names)
    return out


def model_entry(components, source: str) -> dict:
    from sdxl_probe.pipeline.device import precision_of

    return {"source": source, "kind": components.kind, "is_toy": bool(components.is_toy),
            "hash": components.model_hash(), **precision_of(components)}  # fmt: skip


def settings_entry(settings: MemorizationSettings, size, encoder=None) -> dict:
    from dataclasses import asdict

    from sdxl_probe.probes.memorization.features import VAE_FEATURES
    from sdxl_probe.probes.memorization.measures import CLIQUE_EDGE_L2, LOSS_TIMESTEPS, NEAR_COPY_L2

    return asdict(settings) | {"height": int(size[0]), "width": int(size[1]), "near_copy_l2": NEAR_COPY_L2,
                               "clique_edge_l2": CLIQUE_EDGE_L2, "loss_timesteps": list(LOSS_TIMESTEPS),
                               "features": VAE_FEATURES if encoder is None else encoder.label}  # fmt: skip
