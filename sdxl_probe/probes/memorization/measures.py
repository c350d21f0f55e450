"""Raw per-image measures of one model state (the base model, or the base with one LoRA loaded).

Generation-based (from :mod:`generate`): nearest tiled L2 to the caption's own image, a feature
cosine (VAE latents, or an image encoder: :mod:`features`), clique share and diversity among the N seeds, Wen's noise norm, Ren's attention entropy and
BOS mass, and on the toy model caption adherence. Generation-free: the denoising loss on a fixed bank
of (t, noise) pairs and its conditional gap (membership inference, Matsumoto et al. 2023; CLiD's
conditional-vs-unconditional discrepancy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sdxl_probe.probes.memorization import scores
from sdxl_probe.probes.memorization.generate import Generation

NEAR_COPY_L2 = 0.15  # Carlini et al. 2023: extracted when tiled L2 to the training image <= 0.15
CLIQUE_EDGE_L2 = 0.1  # LeakPro's default edge threshold (the paper does not publish one)
LOSS_TIMESTEPS = (100, 200, 300, 500)  # the reference's §C.9 bank, on a 1000-step schedule
LOSS_NOISE_SEED = 20_240_000  # the bank's noise seeds: one per timestep, the same for every model


def to_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> float32 in [0, 1]."""
    return torch.as_tensor(np.asarray(images)).float() / 255.0


def judged_content(image: np.ndarray) -> tuple[str, frozenset[tuple[str, str]]]:
    """The toy judge's (background, {(colour, shape)}) of an image (an exact pixel-rule oracle on renders)."""
    from sdxl_probe.toy.judge import judge_image

    j = judge_image(image)
    return j.background, frozenset((o.colour, o.shape) for o in j.objects)


def image_measures(gens: Sequence[Generation], own: torch.Tensor, own_feature: torch.Tensor,
                   gen_features: torch.Tensor, toy_content=None) -> dict[str, float]:  # fmt: skip
    """Measures of the N generations of one caption against that caption's own image.

    Args:
        gens: N generations (one per seed).
        own: (1, H, W, 3) the caption's image in [0, 1].
        own_feature: (1, D) its feature vector (VAE latents flattened, or the image encoder's embedding).
        gen_features: (N, D) the generations' features.
        toy_content: the judge's content of ``own`` on the toy model, else None.
    """
    pixels = to_unit(torch.stack([g.image for g in gens]))  # (N, H, W, 3)
    to_own = scores.tiled_l2(pixels, own)[:, 0]  # (N,)
    among = scores.tiled_l2(pixels, pixels)  # (N, N)
    first = torch.stack([g.mass[0] for g in gens])  # (N, T) step-0 token mass
    out = {
        "nearest_l2": float(to_own.min()),
        "copy_cosine": float(scores.cosine_matrix(gen_features, own_feature).max()),
        "clique": scores.clique_fraction(among, CLIQUE_EDGE_L2),
        "diversity": scores.diversity(among),
        "noise_norm": float(torch.stack([g.wen for g in gens]).mean()),
        "noise_norm_step0": float(torch.stack([g.wen[0] for g in gens]).mean()),
        "attn_entropy": float(scores.entropy(first).mean()),
        "bos_mass": float(first[:, 0].mean()),
    }
    if toy_content is not None:
        out["adherence"] = float(np.mean([judged_content(g.image.numpy()) == toy_content for g in gens]))
    return out


def coverage_of(gens: Sequence[Generation], train_pixels: torch.Tensor) -> float:
    """Share of training images that some generation reproduces within Carlini's near-copy distance."""
    if not gens or train_pixels.shape[0] == 0:
        return float("nan")
    pixels = to_unit(torch.stack([g.image for g in gens]))
    return scores.coverage(scores.tiled_l2(pixels, train_pixels), NEAR_COPY_L2)


def latent_features(components, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """(N, D) flattened VAE latents (posterior mean) of uint8 images: the default feature space."""
    from sdxl_probe.pipeline.vae import encode_images

    parts = [encode_images(components, images[s : s + batch_size]).float().flatten(1).cpu()
             for s in range(0, len(images), batch_size)]  # fmt: skip
    return torch.cat(parts)


def image_features(components, images: np.ndarray, batch_size: int, encoder=None) -> torch.Tensor:
    """(N, D) features of uint8 images: VAE latents, or the user's image encoder (:mod:`features`) when given."""
    return latent_features(components, images, batch_size) if encoder is None else encoder(images, batch_size)


def denoising_losses(components, pixels: np.ndarray, captions: list[str], batch_size: int) -> dict[str, list[float]]:
    """Per image, the mean epsilon-MSE over the fixed (t, noise) bank, with the caption and with "".

    ``loss = ||eps_theta(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t, c) - eps||^2`` (Ho et al. 2020's objective,
    used for membership inference by Matsumoto et al. 2023): lower on images the model was trained on.

    Returns:
        {"loss": [...], "loss_uncond": [...]} in image order.
    """
    from sdxl_probe.pipeline.conditioning import encode_captions, predict_noise, time_ids
    from sdxl_probe.pipeline.noising import add_noise, seeded_noise, training_scheduler
    from sdxl_probe.pipeline.vae import encode_images

    sched = training_scheduler(components.scheduler.config)
    scale = sched.config.num_train_timesteps / 1000
    out: dict[str, list[float]] = {"loss": [], "loss_uncond": []}
    for s in range(0, len(captions), batch_size):
        caps = captions[s : s + batch_size]
        with torch.no_grad():
            x0 = encode_images(components, pixels[s : s + batch_size])  # (B, C, h, w)
            cond = encode_captions(components, caps)
            unc = encode_captions(components, [""] * len(caps))
            tids = time_ids(len(caps), pixels.shape[1], pixels.shape[2], like=cond.context)
            for key, enc in (("loss", cond), ("loss_uncond", unc)):
                if key == "loss_uncond" and not components.is_toy:  # SDXL's empty prompt is zeros
                    ctx, pooled = torch.zeros_like(enc.context), torch.zeros_like(enc.pooled)
                else:
                    ctx, pooled = enc.context, enc.pooled
                per_t = []
                for k, t in enumerate(LOSS_TIMESTEPS):
                    noise = seeded_noise(tuple(x0.shape[1:]), LOSS_NOISE_SEED + k, like=x0).expand_as(x0)
                    tt = torch.full((len(caps),), int(t * scale), dtype=torch.long)
                    xt = add_noise(sched, x0, noise, tt)
                    eps = predict_noise(components.unet, xt, tt.to(xt.device), context=ctx, pooled=pooled, tids=tids)
                    per_t.append((eps.float() - noise.float()).pow(2).flatten(1).mean(dim=1))  # (B,)
                out[key].extend(torch.stack(per_t).mean(dim=0).cpu().tolist())
    return out
