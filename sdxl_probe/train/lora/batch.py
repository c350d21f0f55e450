"""The parts of a training batch and the held-out validation loss, read from a :class:`~loop.Run`.

Latents come from the latent cache or the VAE, micro-conditioning from each image's true size and
crop, conditioning from a cached text-encoder variant or the caption pipeline and both encoders, all
through the model pipeline (``sdxl_probe.pipeline``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from sdxl_probe.pipeline.conditioning import encode_with, predict_noise, time_ids
from sdxl_probe.pipeline.noising import add_noise, seeded_noise
from sdxl_probe.pipeline.vae import encode_images
from sdxl_probe.text.captions import CaptionOptions, process_caption
from sdxl_probe.train.lora.data import load_mask, load_pixels, micro_conditioning
from sdxl_probe.train.lora.objectives import target_for

if TYPE_CHECKING:
    from sdxl_probe.train.lora.config import TrainConfig
    from sdxl_probe.train.lora.loop import Run


def token_length(cfg: TrainConfig) -> int | None:
    """``[dataset] max_token_length`` as the pipeline takes it (None for 75)."""
    return None if cfg.dataset.max_token_length == 75 else cfg.dataset.max_token_length


def batch_latents(run: Run, idx: list[int], flips: list[bool]) -> torch.Tensor:
    """(B, C, h, w) scaled latents of the batch, from the cache or the VAE."""
    if run.latents is not None:
        return torch.stack([run.latents.get(run.images[i], f) for i, f in zip(idx, flips, strict=True)])
    import numpy as np

    pixels = np.stack([load_pixels(run.images[i], f) for i, f in zip(idx, flips, strict=True)])  # (B, H, W, 3)
    return encode_images(run.components, pixels).float().cpu()


def batch_masks(run: Run, idx: list[int], flips: list[bool]) -> torch.Tensor | None:
    """(B, H, W) loss masks in [0, 1] at pixel size (ones for an image without one), or None when no image
    of the batch has a mask: its loss is then the plain one, as sd-scripts' ``apply_masked_loss`` leaves it."""
    if not any(run.images[i].masked for i in idx):
        return None
    import numpy as np

    masks = np.stack([load_mask(run.images[i], f) for i, f in zip(idx, flips, strict=True)])  # (B, H, W)
    return torch.from_numpy(masks)


def batch_time_ids(run: Run, idx: list[int], flips: list[bool]) -> torch.Tensor:
    """(B, 6) SDXL micro-conditioning: true original size, crop top-left, bucket size."""
    rows = []
    for i, f in zip(idx, flips, strict=True):
        original, crop = micro_conditioning(run.images[i], f)
        rows.append(time_ids(1, *run.images[i].bucket, original=original, crop=crop))
    return torch.cat(rows)


def batch_conditioning(run: Run, idx: list[int], rng, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context (B, L, D) and pooled (B, P): a cached variant, or the caption pipeline then both encoders."""
    if run.text is not None:
        context, pooled, _ = run.text.draw(idx, rng)
        return context.to(run.device), pooled.to(run.device)
    captions = [process_caption(run.images[i].caption, run.images[i].options, rng, epoch=epoch + 1, step=step,
                                max_train_steps=run.cfg.training.max_train_steps) for i in idx]  # fmt: skip
    c = run.components
    enc = encode_with(c.text_encoder, c.text_encoder_2, captions, model_max_length=c.tokenizer.model_max_length,
                      max_token_length=token_length(run.cfg), weighted=run.cfg.dataset.weighted_captions)  # fmt: skip
    return enc.context, enc.pooled


def validation_loss(run: Run) -> float | None:
    """Mean MSE on the held-out images at fixed (timestep, noise) pairs (sd-scripts: t = 200..800).

    The target is the run's (noise, or v with ``v_parameterization``); the loss is plain MSE, unweighted
    and unmasked, so runs with and without masked loss (or other loss settings) give comparable numbers.
    sd-scripts' validation goes through ``process_batch`` and so applies the training loss type, weights
    and ``apply_masked_loss``; this number deliberately does not.
    """
    if not run.val_idx:
        return None
    c, losses = run.components, []
    with torch.no_grad(), eval_mode(c):  # no LoRA dropout: the same number for the same weights
        for i in run.val_idx:
            im = run.images[i]
            x0 = batch_latents(run, [i], [False]).to(run.device)  # (1, C, h, w)
            opts = CaptionOptions(caption_prefix=im.options.caption_prefix, caption_suffix=im.options.caption_suffix)
            caption = process_caption(im.caption, opts, rng=None)  # deterministic: prefix and suffix only
            enc = encode_with(c.text_encoder, c.text_encoder_2, [caption], model_max_length=c.tokenizer.model_max_length,
                              max_token_length=token_length(run.cfg), weighted=run.cfg.dataset.weighted_captions)  # fmt: skip
            tids = batch_time_ids(run, [i], [False]).to(run.device)
            for t_val in run.cfg.logging.validation_timesteps:
                noise = seeded_noise(tuple(x0.shape), seed=hash_seed(run.cfg.training.seed, i, t_val), like=x0)
                t = torch.tensor([t_val], device=run.device)
                pred = predict_noise(c.unet, add_noise(run.noise_scheduler, x0, noise, t), t, context=enc.context,
                                     pooled=enc.pooled, tids=tids).float()  # fmt: skip
                target = target_for(run.objective.prediction_type, run.noise_scheduler, x0, noise, t)
                losses.append((pred - target).pow(2).mean().item())
    return sum(losses) / len(losses)


@contextmanager
def eval_mode(components) -> Iterator[None]:
    """Every network in eval mode for the block (no dropout), then back to its training mode."""
    modes = {name: m.training for name, m in components.models()}
    for _, m in components.models():
        m.eval()
    try:
        yield
    finally:
        for name, m in components.models():
            m.train(modes[name])


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1

