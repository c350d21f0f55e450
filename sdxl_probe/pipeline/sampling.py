"""Text-to-image sampling for SDXL-architecture models (the toy model and real SDXL).

The loop is ``StableDiffusionXLPipeline.__call__`` reduced to what the probes need:
classifier-free guidance (Ho & Salimans 2022) with the unconditional and conditional
halves in one batch (diffusers order: unconditional first), SDXL micro-conditioning
``time_ids`` = (orig_h, orig_w, crop_top, crop_left, target_h, target_w) with original =
target and no crop (sd-scripts' sampling, compat notes §5), and text conditioning from
:func:`sdxl_probe.pipeline.conditioning.encode_captions` in sd-scripts mode, so long prompts
(``max_token_length`` 150/225) and weighted prompts work as in kohya's sampler.

Each prompt's starting noise comes from its own generator (``seed + index``), so an image
does not depend on which other prompts share its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdxl_probe.errors import ProbeError

if TYPE_CHECKING:
    import torch

    from sdxl_probe.models.components import SDXLComponents

SAMPLERS = ("euler", "ddim")


def default_size(components: SDXLComponents) -> int:
    """The model's native pixel size: UNet ``sample_size`` x VAE scale factor (1024 on SDXL, 64 on the toy)."""
    return int(components.unet.config.sample_size) * components.vae_scale_factor


def make_scheduler(components: SDXLComponents, sampler: str):
    """A fresh Euler or DDIM scheduler built from the model's own scheduler config."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    classes = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}
    if sampler not in classes:
        raise ProbeError(f"sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    config = {k: v for k, v in components.scheduler.config.items() if k != "clip_sample" or sampler == "ddim"}
    return classes[sampler].from_config(config)


def check_size(components: SDXLComponents, height: int, width: int) -> tuple[int, int]:
    """Latent (h, w) of an image size; a ProbeError when the UNet cannot take it."""
    multiple = components.vae_scale_factor * 2 ** (len(components.unet.config.block_out_channels) - 1)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ProbeError(
            f"image size {height}x{width} does not fit this model; height and width must be positive "
            f"multiples of {multiple} (VAE factor x UNet downsampling), e.g. {default_size(components)}"
        )
    return height // components.vae_scale_factor, width // components.vae_scale_factor


def initial_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """(n, C, h, w) standard normal noise, row i from ``torch.Generator().manual_seed(seed + i)``."""
    import torch

    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def time_ids(batch: int, height: int, width: int) -> torch.Tensor:
    """SDXL micro-conditioning ``(B, 6)`` for an uncropped image generated at its original size."""
    import torch

    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(batch, 1)


def encode_pair(components, prompts, negative: str, *, max_token_length, weighted: bool, zero_negative: bool):
    """(context (2B, L, D), pooled (2B, P)) with the negative half first; zeros when ``zero_negative``."""
    import torch

    from sdxl_probe.pipeline.conditioning import encode_captions

    cond = encode_captions(components, prompts, max_token_length=max_token_length, weighted=weighted)
    if zero_negative:
        uncond_ctx, uncond_pool = torch.zeros_like(cond.context), torch.zeros_like(cond.pooled)
    else:
        unc = encode_captions(components, [negative] * len(prompts), max_token_length=max_token_length,
                              weighted=weighted)
        uncond_ctx, uncond_pool = unc.context, unc.pooled
    return torch.cat([uncond_ctx, cond.context]), torch.cat([uncond_pool, cond.pooled])


def decode_latents(components: SDXLComponents, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode scaled latents ``(B, C, h, w)`` to ``(B, H, W, 3)`` uint8."""
    import torch

    vae = components.vae
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z + vae.config.shift_factor
    images = vae.decode(z.to(vae.dtype)).sample.float().clamp(-1, 1)  # (B, 3, H, W)
    return ((images + 1) * 127.5).round().permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def _denoise(components, latents, context, pooled, tids, *, steps: int, cfg: float, sampler: str):
    """Run the sampler from ``latents`` (already scaled by init_noise_sigma); returns final latents."""
    import torch

    scheduler = make_scheduler(components, sampler)
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    unet = components.unet
    guided = cfg != 1.0
    if not guided:  # only the conditional half
        half = context.shape[0] // 2
        context, pooled, tids = context[half:], pooled[half:], tids[half:]
    cond_kwargs = {"text_embeds": pooled.to(unet.dtype), "time_ids": tids.to(unet.dtype)}
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        eps = unet(x.to(unet.dtype), t, context.to(unet.dtype), added_cond_kwargs=cond_kwargs).sample.float()
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def generate_images(
    components: SDXLComponents,
    prompts: list[str],
    *,
    seed: int = 0,
    steps: int = 25,
    cfg: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    negative: str = "",
    sampler: str = "euler",
    max_token_length: int | None = None,
    weighted: bool = False,
    zero_empty_negative: bool | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """Generate one image per prompt.

    Args:
        components: the model (toy or SDXL), in eval mode.
        prompts: B prompts; prompt i starts from the noise of seed ``seed + i``.
        seed: base seed.
        steps: sampler steps.
        cfg: guidance scale; 1.0 runs the conditional branch only.
        height, width: pixels; default the model's native size (``default_size``).
        negative: the negative prompt (the unconditional branch).
        sampler: "euler" (SDXL's default, EulerDiscreteScheduler) or "ddim".
        max_token_length: None (75 tokens), 150 or 225, as sd-scripts.
        weighted: parse ``(word:1.2)`` weights (sd-scripts ``--weighted_captions``).
        zero_empty_negative: use zero embeddings for an empty negative, as the SDXL pipeline's
            ``force_zeros_for_empty_prompt``. None = True for real SDXL, False for the toy
            model (trained with caption dropout to the encoded ``""``).
        batch_size: prompts per forward batch (CFG doubles it).

    Returns:
        (B, H, W, 3) uint8 RGB.
    """
    import torch

    if not prompts:
        raise ProbeError("no prompts to generate: pass at least one prompt")
    if steps < 1:
        raise ProbeError(f"steps={steps} must be >= 1")
    height = height or default_size(components)
    width = width or default_size(components)
    lh, lw = check_size(components, height, width)
    zero = (not components.is_toy) if zero_empty_negative is None else zero_empty_negative
    channels = components.unet.config.in_channels
    noise = initial_noise(len(prompts), (channels, lh, lw), seed)  # (B, C, h, w)
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            context, pooled = encode_pair(components, chunk, negative, max_token_length=max_token_length,
                                          weighted=weighted, zero_negative=zero and negative == "")
            tids = time_ids(2 * len(chunk), height, width)
            lat = _denoise(components, noise[start : start + len(chunk)], context, pooled, tids,
                           steps=steps, cfg=cfg, sampler=sampler)
            out.append(decode_latents(components, lat))
    return np.concatenate(out)
