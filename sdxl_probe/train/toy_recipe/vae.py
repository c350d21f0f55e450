"""Phase 1 of the toy recipe: the AutoencoderKL, then its latents.

One stage, encoder and decoder together, trained as a near-deterministic autoencoder:

- the decoder reads the posterior **mean** (the latents the UNet learns are posterior means
  too); sampling ``mean + std * noise`` from a freshly initialised encoder (std ~ 1) made the
  decoder learn to ignore noise and blur, and shifted object colours (measured: colour 0.845);
- the loss is MSE + 0.5 L1 with object pixels weighted ``1 + object_weight`` (objects cover
  5-15% of an image; unweighted, the decoder shifted their colours), plus 1e-6 KL, which only
  keeps the latents' scale bounded;
- the forward runs under CPU bf16 autocast (the recipe also switches the mid block to eager
  attention while training, see ``pretrain.set_training_attention``).

Measured on the 2-core machine (the judge on 200 single-object reconstructions): the recipe's
500 steps x 32 at lr 2e-3 (265 s) give colour 1.000, shape 0.920 (large objects 1.000; small
stars lose their points), 32 dB.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sdxl_probe.train.state import TrainingStopped, graceful_stop, load_state, save_state
from sdxl_probe.train.toy_recipe.data import step_rng

KL_WEIGHT = 1e-6
L1_WEIGHT = 0.5


def object_weights(pixels: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``(B, 1, H, W)``: 1 on the background, ``1 + weight`` on objects.

    The background is the top-left pixel's colour (objects never reach the corners).
    """
    bg = pixels[:, :, :1, :1]  # (B, 3, 1, 1)
    fg = ((pixels - bg).abs().sum(dim=1, keepdim=True) > 0.1).float()
    return 1.0 + weight * fg


def vae_loss(vae, pixels: torch.Tensor, object_weight: float, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mse) of one batch ``pixels (B, 3, H, W)`` in [-1, 1], decoded from the posterior mean."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.mean).sample.float()  # (B, 3, H, W)
    err = (recon - pixels).pow(2) + L1_WEIGHT * (recon - pixels).abs()
    loss = (object_weights(pixels, object_weight) * err).mean() + KL_WEIGHT * posterior.kl().float().mean()
    return loss, (recon - pixels).pow(2).mean()


def train_vae(
    vae,
    pixels: torch.Tensor,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    object_weight: float,
    bf16: bool,
    state_path: Path,
    resume: bool,
    checkpoint_every: int,
    log=print,
) -> None:
    """Train ``vae`` on ``pixels (N, 3, H, W)`` in place; resumable from ``state_path``.

    AdamW with diffusers' cosine schedule. Ctrl-C or SIGTERM saves the state and raises
    :class:`TrainingStopped`.
    """
    from diffusers.optimization import get_scheduler

    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, steps // 10), num_training_steps=steps)
    step = 0
    if resume and state_path.exists():
        step = load_state(state_path, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched, ema=None)["step"]
        log(f"vae: resumed at step {step}/{steps}")
    vae.train()
    t0, mse_avg = time.time(), None
    with graceful_stop() as stop:
        while step < steps:
            _, gen = step_rng(seed, "vae", step)
            idx = torch.randint(0, len(pixels), (batch_size,), generator=gen)
            loss, mse = vae_loss(vae, pixels[idx], object_weight, bf16)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            mse_avg = mse.item() if mse_avg is None else 0.95 * mse_avg + 0.05 * mse.item()
            if step % 25 == 0 or step == steps:
                psnr = 10 * torch.log10(torch.tensor(4.0 / mse_avg)).item()  # range [-1, 1] -> peak 2
                log(f"vae step {step}/{steps} loss {loss.item():.4f} psnr~{psnr:.1f} dB {time.time() - t0:.0f}s")
            if stop.requested or step % checkpoint_every == 0 or step == steps:
                save_state(state_path, modules={"vae": vae}, optimizer=opt, lr_scheduler=sched, ema=None,
                           info={"step": step, "seed": seed})
            if stop.requested and step < steps:
                raise TrainingStopped(f"stopped at vae step {step}; state saved in {state_path}; rerun with --resume")
    vae.eval()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Posterior means ``(N, C, h, w)`` of ``pixels``, unscaled, contiguous.

    The posterior mean is a channel slice of the encoder output; ``contiguous()`` gives the
    memory layout a reloaded cache has, so a resumed run computes bit-identical steps.
    """
    out = [vae.encode(pixels[i : i + batch_size]).latent_dist.mean for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).contiguous()


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, as SDXL's ``scaling_factor`` (0.13025) was chosen for unit variance."""
    return float(1.0 / latents.float().std())
