"""The pipeline's sampler and noising against independent oracles.

Oracles: diffusers' ``StableDiffusionXLPipeline.__call__`` (given the same scheduler, starting latents and
prompt embeddings; it builds the negative branch itself, so ``force_zeros_for_empty_prompt`` is exercised
both ways), and the DDPM forward formula ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``
(Ho et al. 2020, eq. 4) computed from the scheduler's betas by hand.
"""

from __future__ import annotations

import pytest
import torch

from sdxl_probe.pipeline.conditioning import encode_captions
from sdxl_probe.pipeline.noising import add_noise, training_scheduler
from sdxl_probe.pipeline.sampling import initial_noise, make_scheduler, sample_latents

PROMPTS = ["red circle, white background", "a blue square to the left of a green star"]
SIZE = 64


def diffusers_latents(components, noise, *, steps, cfg, sampler, force_zeros):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=make_scheduler(components, sampler), force_zeros_for_empty_prompt=force_zeros,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        enc = encode_captions(components, PROMPTS)
        out = pipe(prompt_embeds=enc.context, pooled_prompt_embeds=enc.pooled, height=SIZE, width=SIZE,
                   num_inference_steps=steps, guidance_scale=cfg, latents=noise.clone(), output_type="latent")
    return out.images


@pytest.mark.parametrize(
    ("cfg", "force_zeros", "sampler"),
    [(5.0, True, "euler"), (5.0, False, "euler"), (1.0, False, "euler"), (3.0, False, "ddim"), (3.0, True, "ddim")],
)
def test_sampler_equals_diffusers_pipeline(tiny_components, cfg, force_zeros, sampler):
    lh = SIZE // tiny_components.vae_scale_factor
    noise = initial_noise(len(PROMPTS), (tiny_components.unet.config.in_channels, lh, lh), seed=3)
    with torch.no_grad():
        ours = sample_latents(tiny_components, PROMPTS, noise, steps=4, cfg=cfg, height=SIZE, width=SIZE,
                              negative="", sampler=sampler, max_token_length=None, weighted=False,
                              zero_negative=force_zeros)  # fmt: skip
    theirs = diffusers_latents(tiny_components, noise, steps=4, cfg=cfg, sampler=sampler, force_zeros=force_zeros)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_zero_and_encoded_negatives_differ(tiny_components):
    """Guards the test above: the two negative branches must give different latents, or it proves nothing."""
    lh = SIZE // tiny_components.vae_scale_factor
    noise = initial_noise(len(PROMPTS), (tiny_components.unet.config.in_channels, lh, lh), seed=3)
    kw = dict(steps=4, cfg=5.0, height=SIZE, width=SIZE, negative="", sampler="euler", max_token_length=None,
              weighted=False)
    with torch.no_grad():
        zeros = sample_latents(tiny_components, PROMPTS, noise, zero_negative=True, **kw)
        encoded = sample_latents(tiny_components, PROMPTS, noise, zero_negative=False, **kw)
    assert (zeros - encoded).abs().max() > 1e-3


def test_add_noise_is_the_ddpm_forward_formula(tiny_components):
    scheduler = training_scheduler(tiny_components.scheduler.config)
    cfg = scheduler.config
    # alpha_bar from the config's betas, by hand (scaled_linear: linspace of sqrt(beta), squared).
    assert cfg.beta_schedule == "scaled_linear"
    betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=gen)
    eps = torch.randn(4, 4, 8, 8, generator=gen)
    t = torch.tensor([0, 250, 500, cfg.num_train_timesteps - 1])
    expected = (alpha_bar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar[t]).sqrt().view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(add_noise(scheduler, x0, eps, t), expected.float(), atol=1e-6, rtol=1e-5)
