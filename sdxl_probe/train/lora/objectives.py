"""The training objective's parts, as sd-scripts computes them, one small function each.

Every function takes explicit tensors and numbers and draws its randomness from the generator it is
given, so the loop stays bit-exact on resume. The names and formulas follow sd-scripts'
``library/train_util.py`` and ``library/custom_train_functions.py`` (cited per function):

- noise: :func:`offset_noise` (``apply_noise_offset``, with ``adaptive_noise_scale``),
  :func:`pyramid_noise` (``pyramid_noise_like``, sd-scripts' multires noise),
  :func:`perturbed_noise` (``ip_noise_gamma``, Ning et al. 2023: input perturbation);
- target: :func:`target_for` (epsilon, or v = alpha_t * eps - sigma_t * x0, Salimans & Ho 2022);
- loss: :func:`elementwise_loss` (``conditional_loss``: l2, l1, huber, smooth_l1) with
  :func:`huber_threshold` (``get_huber_threshold_if_needed``), :func:`masked` (``apply_masked_loss``);
- per-sample weights: :func:`snr_weights` (``apply_snr_weight``, ``apply_debiased_estimation``,
  ``scale_v_prediction_loss_like_noise_prediction``);
- :func:`weight_penalty`: an L1/L2 penalty on the LoRA weights (the seed's "regularization loss").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")
PREDICTION_TYPES = ("epsilon", "v_prediction")
SNR_CAP = 1000.0  # sd-scripts caps SNR at t = 0 (infinite) to 1000 in its debiased weighting


def offset_noise(noise: torch.Tensor, latents: torch.Tensor, offset: float, adaptive_scale: float,
                 random_strength: bool, gen: torch.Generator) -> torch.Tensor:  # fmt: skip
    """``noise + offset_bc * randn(B, C, 1, 1)`` (sd-scripts ``apply_noise_offset``).

    With ``random_strength`` the offset is first scaled by ``U[0, 1)`` (``noise_offset_random_strength``);
    with ``adaptive_scale`` it grows with each channel's mean latent magnitude:
    ``offset_bc = max(0, offset + adaptive_scale * |mean_hw(latents)|)``.

    Args:
        noise, latents: (B, C, h, w).
    """
    if offset == 0:
        return noise
    if random_strength:
        offset = float(torch.rand((), generator=gen)) * offset
    strength = torch.tensor(offset, dtype=noise.dtype)
    if adaptive_scale:
        strength = torch.clamp(offset + adaptive_scale * latents.mean(dim=(2, 3), keepdim=True).abs(), min=0.0)
    return noise + strength * torch.randn((*noise.shape[:2], 1, 1), generator=gen, dtype=noise.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, gen: torch.Generator) -> torch.Tensor:
    """Multi-resolution noise (sd-scripts ``pyramid_noise_like``; Whitaker's "multi-resolution noise").

    Adds upsampled coarser noise at random scale factors r_i in [2, 4), weighted ``discount**i``, stops
    at 1x1, and rescales to unit standard deviation. sd-scripts draws r_i from Python's ``random``;
    here from ``gen`` so a resumed run draws the same.

    Args:
        noise: (B, C, h, w).
    """
    if iterations == 0:
        return noise
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=gen)) * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, hn, wn), generator=gen, dtype=noise.dtype)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def perturbed_noise(noise: torch.Tensor, gamma: float, random_strength: bool, gen: torch.Generator) -> torch.Tensor:
    """The noise added to the latents under input perturbation: ``noise + gamma * randn`` (Ning et al. 2023).

    The loss target stays the unperturbed ``noise`` (sd-scripts ``ip_noise_gamma``); with
    ``random_strength`` gamma is scaled by ``U[0, 1)`` per batch, as ``ip_noise_gamma_random_strength``.
    """
    if gamma == 0:
        return noise
    if random_strength:
        gamma = float(torch.rand((), generator=gen)) * gamma
    return noise + gamma * torch.randn(noise.shape, generator=gen, dtype=noise.dtype)


def target_for(prediction_type: str, noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """What the UNet should predict: the noise, or v (diffusers ``DDPMScheduler.get_velocity``)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def huber_threshold(schedule: str, c: float, scale: float, timesteps: torch.Tensor, noise_scheduler) -> torch.Tensor:
    """Per-sample Huber threshold (B,) (sd-scripts ``get_huber_threshold_if_needed``).

    - "snr": ``(1 - c) / (1 + sigma_t)**2 + c`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)``;
    - "exponential": ``exp(-a t) * scale`` with ``a = -ln(c) / T``;
    - "constant": ``c * scale``.
    """
    t = timesteps.cpu()
    if schedule == "snr":
        abar = noise_scheduler.alphas_cumprod.index_select(0, t).double()
        sigma = ((1 - abar) / abar) ** 0.5
        return ((1 - c) / (1 + sigma) ** 2 + c).float()
    if schedule == "exponential":
        a = -math.log(c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-a * t.double()).float() * scale
    if schedule == "constant":
        return torch.full((len(t),), c * scale)
    raise ValueError(f"huber_schedule {schedule!r}; expected one of {HUBER_SCHEDULES}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """(B, C, h, w) loss before any reduction (sd-scripts ``conditional_loss`` with ``reduction="none"``).

    huber: ``2 c (sqrt(d^2 + c^2) - c)``; smooth_l1: ``2 (sqrt(d^2 + c^2) - c)``, c per sample.
    """
    d = pred - target
    if loss_type == "l2":
        return d.pow(2)
    if loss_type == "l1":
        return d.abs()
    if loss_type in ("huber", "smooth_l1"):
        c = huber_c.to(d).view(-1, 1, 1, 1)
        soft = torch.sqrt(d.pow(2) + c.pow(2)) - c
        return 2 * c * soft if loss_type == "huber" else 2 * soft
    raise ValueError(f"loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def masked(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loss weighted by a [0, 1] mask area-resized to the latent grid (sd-scripts ``apply_masked_loss``).

    Args:
        loss: (B, C, h, w).
        mask: (B, H, W) in [0, 1] at pixel size.
    """
    small = F.interpolate(mask[:, None].to(loss), size=loss.shape[2:], mode="area")  # (B, 1, h, w)
    return loss * small


def snr_weights(timesteps: torch.Tensor, noise_scheduler, *, min_snr_gamma: float, v_prediction: bool,
                debiased: bool, scale_v_like_noise: bool) -> torch.Tensor:  # fmt: skip
    """Per-sample loss weights (B,), applied in sd-scripts' order (``post_process_loss``).

    - min-SNR-gamma (Hang et al. 2023, ``apply_snr_weight``): ``min(SNR, g) / SNR``, or ``/ (SNR + 1)`` for v;
    - v scaled like noise prediction (``scale_v_prediction_loss_like_noise_prediction``): ``SNR / (SNR + 1)``;
    - debiased estimation (Yu et al. 2024, ``apply_debiased_estimation``): ``1 / sqrt(min(SNR, 1000))``,
      or ``1 / (min(SNR, 1000) + 1)`` for v.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps).float()  # (B,)
    weight = torch.ones_like(snr)
    if min_snr_gamma > 0:
        weight = weight * torch.clamp(snr, max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
    if scale_v_like_noise:
        weight = weight * snr / (snr + 1)
    if debiased:
        capped = torch.clamp(snr, max=SNR_CAP)
        weight = weight / (capped + 1 if v_prediction else torch.sqrt(capped))
    return weight


def weight_penalty(params: Iterable[torch.Tensor], l1: float, l2: float) -> torch.Tensor:
    """``l1 * sum|w| + l2 * sum w^2`` over the LoRA parameters (weight regularization; 0 when both are 0)."""
    params = list(params)
    terms = [l1 * p.abs().sum() for p in params if l1] + [l2 * p.pow(2).sum() for p in params if l2]
    return torch.stack(terms).sum() if terms else torch.zeros((), device=params[0].device if params else None)


@dataclass(frozen=True)
class Objective:
    """A run's loss settings (the ``[training]`` fields of the same meaning), built once in setup."""

    prediction_type: str = "epsilon"  # or "v_prediction"
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float = 0.0
    debiased: bool = False
    scale_v_like_noise: bool = False


def diffusion_loss(pred: torch.Tensor, x0: torch.Tensor | None, noise: torch.Tensor, timesteps: torch.Tensor,
                   noise_scheduler, objective: Objective, weights: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The batch loss, in sd-scripts' order (``NetworkTrainer.process_batch``, then ``post_process_loss``).

    Element-wise loss against the target, times the area-resized ``mask`` (:func:`masked`, sd-scripts'
    ``apply_masked_loss``: no renormalisation by the mask's mean), mean over (C, h, w), times ``weights``
    (B,) (sd-scripts' ``loss_weights``: prior_loss_weight on regularization images), times the SNR
    weights, then the batch mean.

    Args:
        pred: (B, C, h, w) UNet output; x0: clean latents (only read for v); noise: the added noise.
        mask: (B, H, W) loss masks in [0, 1] at pixel size, or None (masked loss off).
    """
    o = objective
    target = target_for(o.prediction_type, noise_scheduler, x0, noise, timesteps)
    huber_c = None
    if o.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(o.huber_schedule, o.huber_c, o.huber_scale, timesteps, noise_scheduler)
    loss = elementwise_loss(pred, target, o.loss_type, huber_c)  # (B, C, h, w)
    if mask is not None:
        loss = masked(loss, mask)
    per_sample = loss.mean(dim=(1, 2, 3))  # (B,)
    if weights is not None:
        per_sample = per_sample * weights
    if o.min_snr_gamma > 0 or o.debiased or o.scale_v_like_noise:
        per_sample = per_sample * snr_weights(timesteps, noise_scheduler, min_snr_gamma=o.min_snr_gamma,
                                              v_prediction=o.prediction_type == "v_prediction", debiased=o.debiased,
                                              scale_v_like_noise=o.scale_v_like_noise).to(per_sample)  # fmt: skip
    return per_sample.mean()
