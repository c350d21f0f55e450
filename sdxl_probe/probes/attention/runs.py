"""Model passes that feed the attention recorder: CFG sampling and single noised forwards.

Shapes come from the components: latent channels from ``unet.config.in_channels``, the
latent size from ``vae_scale_factor``, context width from the text encoders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sdxl_probe.pipeline.conditioning import predict_noise, time_ids
from sdxl_probe.pipeline.noising import add_noise, seeded_noise, training_scheduler
from sdxl_probe.probes.attention.capture import AttentionRecorder, capture_cross_attention


@dataclass(frozen=True)
class CaptureOptions:
    """Which cross-attention calls to aggregate (DAAM defaults when left empty).

    Attributes:
        layers: attn2 module-path prefixes, e.g. ("up_blocks.0",); None = all but the mid block.
        heads: head indices; None = mean over all heads.
        steps: (start, stop) half-open window of denoising step indices; None = all steps.
        factors: map downsampling factors relative to the latent (1, 2, 4...); None = all.
        include_mid: also record the mid block.
        size: common (H, W) of the heat maps; None = the largest recorded map.
    """

    layers: tuple[str, ...] | None = None
    heads: tuple[int, ...] | None = None
    steps: tuple[int, int] | None = None
    factors: tuple[int, ...] | None = None
    include_mid: bool = False
    size: tuple[int, int] | None = None

    @contextmanager
    def capture(self, unet: torch.nn.Module, *, cfg_doubled: bool) -> Iterator[AttentionRecorder]:
        """``capture_cross_attention`` with these selections."""
        window = range(*self.steps) if self.steps is not None else None
        with capture_cross_attention(
            unet, layers=self.layers, heads=self.heads, cfg_doubled=cfg_doubled, steps=window,
            factors=set(self.factors) if self.factors else None, include_mid=self.include_mid,
        ) as recorder:  # fmt: skip
            yield recorder


def sample_images(
    components: Any, prompts: list[str], *, height: int, width: int, steps: int, guidance: float, seed: int,
    max_token_length: int | None, release: bool = False,
) -> np.ndarray:  # fmt: skip
    """The project's sampler (``sdxl_probe.pipeline.sampling``) on all prompts in ONE batch.

    One batch matters under capture: the recorder sums maps per batch row, so prompts
    split over several sampler batches would be added onto each other. CFG runs as one
    doubled batch [unconditional; conditional] per step (diffusers order).

    Returns:
        (B, height, width, 3) uint8 images.
    """
    from sdxl_probe.pipeline.sampling import generate_images

    return generate_images(components, prompts, seed=seed, steps=steps, cfg=guidance, height=height, width=width,
                           max_token_length=max_token_length, batch_size=len(prompts), release=release)  # fmt: skip


@torch.no_grad()
def noised_forward(
    components: Any, latents: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor, *,
    timestep: int, seed: int, hw: tuple[int, int],
) -> None:  # fmt: skip
    """Noise clean latents to ``timestep`` (DDPM forward process, fixed seed) and run the UNet once.

    The noise is drawn from a CPU generator seeded with ``seed`` so every timestep and
    every model (base or LoRA) sees the same noise.
    """
    ddpm = training_scheduler(components.scheduler.config)
    noise = seeded_noise(tuple(latents.shape), seed, like=latents)
    t = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
    x_t = add_noise(ddpm, latents, noise, t)
    predict_noise(components.unet, x_t, t, context=context, pooled=pooled,
                  tids=time_ids(latents.shape[0], *hw, like=pooled))
