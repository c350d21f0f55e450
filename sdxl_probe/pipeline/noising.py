"""DDPM forward noising: the one function that puts noise on clean latents at a timestep.

``x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps`` (Ho et al. 2020, eq. 4), on the
model's own training schedule (SDXL: scaled_linear betas 0.00085..0.012 over 1000 steps), through
diffusers' ``DDPMScheduler.add_noise``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def training_scheduler(scheduler_config: Any):
    """A ``DDPMScheduler`` built from a model's scheduler config (its training noise schedule)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config)


def add_noise(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise clean ``latents (B, C, h, w)`` with ``noise`` (same shape) to integer ``timesteps (B,)``."""
    return scheduler.add_noise(latents, noise, timesteps.to(latents.device))


def seeded_noise(shape: tuple[int, ...], seed: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` from a CPU generator seeded with ``seed``, so every device,
    timestep and model (base or LoRA) sees the same noise; moved to ``like``'s device and dtype."""
    import torch

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return noise if like is None else noise.to(like)
