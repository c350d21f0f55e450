"""Text-to-image sampling for SDXL-architecture models (the toy model and real SDXL).

The loop is ``StableDiffusionXLPipeline.__call__`` reduced to what the probes need:
classifier-free guidance (Ho & Salimans 2022) with the unconditional and conditional
halves in one batch (diffusers order: unconditional first), SDXL micro-conditioning
``time_ids`` with original = target and no crop (sd-scripts' ``sample_image_inference``), and
text conditioning from :func:`sdxl_probe.pipeline.conditioning.encode_captions` in sd-scripts mode, so long prompts
(``max_token_length`` 150/225) and weighted prompts work as in kohya's sampler.

Each prompt's starting noise comes from its own generator (``seed + index``), so an image
does not depend on which other prompts share its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sdxl_probe.errors import ProbeError
from sdxl_probe.pipeline.checks import check_image_size, native_size
from sdxl_probe.pipeline.conditioning import encode_pair, predict_noise, time_ids
from sdxl_probe.pipeline.device import trim_heap
from sdxl_probe.pipeline.vae import decode_latents

if TYPE_CHECKING:
    import torch

    from sdxl_probe.models.components import SDXLComponents

SAMPLERS = ("euler", "ddim")


def default_size(components: SDXLComponents) -> int:
    """The model's native pixel size: UNet ``sample_size`` x VAE scale factor (1024 on SDXL, 64 on the toy)."""
    return native_size(components.unet.config, components.vae.config)


def make_scheduler(components: SDXLComponents, sampler: str):
    """A fresh Euler or DDIM scheduler built from the model's own scheduler config."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    classes = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler}
    if sampler not in classes:
        raise ProbeError(f"sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
    config = {k: v for k, v in components.scheduler.config.items() if k != "clip_sample" or sampler == "ddim"}
    return classes[sampler].from_config(config)


def check_size(components: SDXLComponents, height: int, width: int) -> tuple[int, int]:
    """Latent (h, w) of an image size; a ProbeError when the UNet cannot take it (``checks.check_image_size``)."""
    height, width = check_image_size(components.unet.config, components.vae.config, height, width)
    return height // components.vae_scale_factor, width // components.vae_scale_factor


def initial_noise(n: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """(n, C, h, w) standard normal noise, row i from ``torch.Generator().manual_seed(seed + i)``."""
    import torch

    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def denoise(
    unet, scheduler, latents: torch.Tensor, *, context: torch.Tensor, pooled: torch.Tensor, tids: torch.Tensor,
    steps: int, cfg: float,
) -> torch.Tensor:  # fmt: skip
    """Run ``scheduler`` for ``steps`` from unit-variance ``latents (B, C, h, w)``; returns final latents.

    ``context``, ``pooled`` and ``tids`` hold 2B rows, unconditional first (diffusers' order).
    With ``cfg == 1`` only the conditional half runs; else both halves run as one doubled batch and
    ``eps = eps_u + cfg * (eps_c - eps_u)`` (Ho & Salimans 2022), as ``StableDiffusionXLPipeline``.
    """
    import torch

    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    guided = cfg != 1.0
    if not guided:
        half = context.shape[0] // 2
        context, pooled, tids = context[half:], pooled[half:], tids[half:]
    for t in scheduler.timesteps:
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        eps = predict_noise(unet, x, t, context=context, pooled=pooled, tids=tids).float()  # (B or 2B, C, h, w)
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + cfg * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def sample_latents(
    components: SDXLComponents, prompts: list[str], noise: torch.Tensor, *, steps: int, cfg: float,
    height: int, width: int, negative: str, sampler: str, max_token_length: int | None, weighted: bool,
    zero_negative: bool,
) -> torch.Tensor:  # fmt: skip
    """Denoise ``noise (B, C, h, w)`` for ``prompts`` into final latents (no decoding)."""
    context, pooled = encode_pair(components, prompts, negative, max_token_length=max_token_length,
                                  weighted=weighted, zero_negative=zero_negative)  # fmt: skip
    return _denoise_chunk(components, context, pooled, noise, steps=steps, cfg=cfg, height=height, width=width,
                          sampler=sampler)  # fmt: skip


def _denoise_chunk(components, context, pooled, noise, *, steps, cfg, height, width, sampler) -> torch.Tensor:
    tids = time_ids(2 * noise.shape[0], height, width, like=context)
    return denoise(components.unet, make_scheduler(components, sampler), noise.to(context.device), context=context,
                   pooled=pooled, tids=tids, steps=steps, cfg=cfg)  # fmt: skip


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
    release: bool = False,
) -> np.ndarray:
    """Generate one image per prompt: encode every prompt, then denoise, then decode.

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
        release: drop each network from ``components`` after its last use (text encoders after
            encoding, UNet before decoding), for one-shot commands: the VAE's full-size activations
            (2.3 GB at 1024 px in bf16) then never sit beside the UNet.

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
    starts = range(0, len(prompts), batch_size)
    with torch.no_grad():
        conditioning = [encode_pair(components, prompts[s : s + batch_size], negative, max_token_length=max_token_length,
                                    weighted=weighted, zero_negative=zero and negative == "") for s in starts]  # fmt: skip
        if release:
            release_parts(components, "text_encoder", "text_encoder_2")
        latents = [_denoise_chunk(components, context, pooled, noise[s : s + batch_size], steps=steps, cfg=cfg,
                                  height=height, width=width, sampler=sampler)
                   for s, (context, pooled) in zip(starts, conditioning, strict=True)]  # fmt: skip
        if release:
            release_parts(components, "unet")
        return np.concatenate([decode_latents(components, lat) for lat in latents])


def release_parts(components: SDXLComponents, *names: str) -> None:
    """Drop networks the rest of a one-shot run does not need, so their memory returns to the OS."""
    for name in names:
        setattr(components, name, None)
    trim_heap()
