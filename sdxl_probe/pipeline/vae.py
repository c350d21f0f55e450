"""VAE encode and decode between uint8 images and the UNet's scaled latents.

Latents are ``(posterior - shift_factor) * scaling_factor`` (diffusers' convention; SDXL has
``scaling_factor`` 0.13025 and no shift). Encoding takes the posterior mean, so the same image
always gives the same latents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def encode_images(components: Any, images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 images -> (B, C, H/f, W/f) scaled latents (posterior mean), no gradients."""
    import torch

    vae = components.vae
    pixels = torch.from_numpy(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2) / 127.5 - 1  # a writable copy
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)  # (B, 3, H, W) in [-1, 1]
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        return (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor


def decode_latents(components: Any, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode scaled latents ``(B, C, h, w)`` to ``(B, H, W, 3)`` uint8, no gradients."""
    import torch

    vae = components.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z + vae.config.shift_factor
    with torch.no_grad():
        images = vae.decode(z.to(vae.device, vae.dtype)).sample.float().clamp(-1, 1)  # (B, 3, H, W)
    return ((images + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
