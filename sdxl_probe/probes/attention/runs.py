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


def time_ids(height: int, width: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """SDXL micro-conditioning (orig_h, orig_w, crop_top, crop_left, target_h, target_w): (B, 6)."""
    row = torch.tensor([height, width, 0, 0, height, width], dtype=like.dtype, device=like.device)
    return row.expand(batch, -1).clone()


def unet_eps(
    components: Any, x: torch.Tensor, t: Any, context: torch.Tensor, pooled: torch.Tensor, hw: tuple[int, int]
):
    """One UNet call: x (B, C, h, w), context (B, L, d), pooled (B, p) -> eps (B, C, h, w)."""
    added = {"text_embeds": pooled, "time_ids": time_ids(*hw, x.shape[0], pooled)}
    return components.unet(x, t, encoder_hidden_states=context, added_cond_kwargs=added).sample


def sample_images(
    components: Any, prompts: list[str], *, height: int, width: int, steps: int, guidance: float, seed: int,
    max_token_length: int | None,
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
                           max_token_length=max_token_length, batch_size=len(prompts))  # fmt: skip


@torch.no_grad()
def encode_images(components: Any, images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> (B, C, H/f, W/f) scaled latents (posterior mean)."""
    vae = components.vae
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor


@torch.no_grad()
def noised_forward(
    components: Any, latents: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor, *,
    timestep: int, seed: int, hw: tuple[int, int],
) -> None:  # fmt: skip
    """Noise clean latents to ``timestep`` (DDPM forward process, fixed seed) and run the UNet once.

    The noise is drawn from a CPU generator seeded with ``seed`` so every timestep and
    every model (base or LoRA) sees the same noise.
    """
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(components.scheduler.config)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g).to(latents)
    t = torch.full((latents.shape[0],), timestep, dtype=torch.long)
    x_t = ddpm.add_noise(latents, noise, t).to(context.dtype)
    unet_eps(components, x_t, t.to(latents.device), context, pooled, hw)
