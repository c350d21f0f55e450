"""Phase 1 of the toy recipe: the AutoencoderKL, then its latents.

Two stages, as measured in ``shared/reference/toy-world.md``: encoder and decoder jointly
(MSE + 0.5 L1 + 1e-6 KL), then the decoder alone with the encoder frozen, which removes the
colour shift of the joint stage without moving the latents the UNet will learn.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sdxl_probe.toy.checkpoint import TrainingStopped, graceful_stop, load_state, save_state
from sdxl_probe.toy.pretrain_data import step_rng

KL_WEIGHT = 1e-6
L1_WEIGHT = 0.5


def vae_loss(vae, pixels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mse) of one batch ``pixels (B, 3, H, W)`` in [-1, 1]."""
    posterior = vae.encode(pixels).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)  # (B, C, h, w)
    recon = vae.decode(z).sample
    mse = torch.nn.functional.mse_loss(recon, pixels)
    loss = mse + L1_WEIGHT * (recon - pixels).abs().mean() + KL_WEIGHT * posterior.kl().mean()
    return loss, mse


def _decoder_only(vae, step: int, joint_steps: int) -> None:
    """Freeze the encoder side (encoder, quant_conv) from ``joint_steps`` on."""
    frozen = step >= joint_steps
    for part in (vae.encoder, vae.quant_conv):
        part.requires_grad_(not frozen)


def train_vae(
    vae,
    pixels: torch.Tensor,
    *,
    seed: int,
    joint_steps: int,
    decoder_steps: int,
    batch_size: int,
    lr: float,
    state_path: Path,
    resume: bool,
    checkpoint_every: int,
    log=print,
) -> None:
    """Train ``vae`` on ``pixels (N, 3, H, W)`` in place; resumable from ``state_path``.

    AdamW with diffusers' cosine schedule over both stages. Ctrl-C or SIGTERM saves the state
    and raises :class:`TrainingStopped`.
    """
    from diffusers.optimization import get_scheduler

    total = joint_steps + decoder_steps
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, total // 10), num_training_steps=total)
    step = 0
    if resume and state_path.exists():
        step = load_state(state_path, {"vae": vae}, opt, sched, None)["step"]
        log(f"vae: resumed at step {step}/{total}")
    vae.train()
    t0, mse_avg = time.time(), None
    with graceful_stop() as stop:
        while step < total:
            _decoder_only(vae, step, joint_steps)
            _, gen = step_rng(seed, "vae", step)
            idx = torch.randint(0, len(pixels), (batch_size,), generator=gen)
            loss, mse = vae_loss(vae, pixels[idx], gen)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            mse_avg = mse.item() if mse_avg is None else 0.95 * mse_avg + 0.05 * mse.item()
            if step % 25 == 0 or step == total:
                psnr = 10 * torch.log10(torch.tensor(4.0 / mse_avg)).item()  # range [-1, 1] -> peak 2
                log(f"vae step {step}/{total} loss {loss.item():.4f} psnr~{psnr:.1f} dB {time.time() - t0:.0f}s")
            if stop.requested or step % checkpoint_every == 0 or step == total:
                save_state(state_path, {"vae": vae}, opt, sched, None, {"step": step, "seed": seed})
            if stop.requested and step < total:
                raise TrainingStopped(f"stopped at vae step {step}; state saved in {state_path}; rerun with --resume")
    _decoder_only(vae, 0, 1)
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


def object_weights(pixels: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``(B, 1, H, W)``: 1 on the background, ``1 + weight`` on objects.

    The background is the top-left pixel's colour (objects never reach the corners). Objects
    cover ~5-15% of a toy image, so an unweighted loss lets the decoder shift their colours.
    """
    bg = pixels[:, :, :1, :1]  # (B, 3, 1, 1)
    fg = ((pixels - bg).abs().sum(dim=1, keepdim=True) > 0.1).float()
    return 1.0 + weight * fg


def train_decoder(
    vae,
    latents: torch.Tensor,
    pixels: torch.Tensor,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    object_weight: float,
    state_path: Path,
    resume: bool,
    checkpoint_every: int,
    log=print,
) -> None:
    """Refine the decoder on cached posterior means ``latents (N, C, h, w)`` with object-weighted loss.

    The encoder is untouched, so the latents the UNet learns stay valid; this phase only fixes
    the colours the decoder gives small objects (reference: the decoder-only phase fixed a
    red-to-orange shift). Resumable like :func:`train_vae`.
    """
    from diffusers.optimization import get_scheduler

    decoder = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    opt = torch.optim.AdamW(decoder, lr=lr, weight_decay=0.0)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(20, steps // 10), num_training_steps=steps)
    step = 0
    if resume and state_path.exists():
        step = load_state(state_path, {"vae": vae}, opt, sched, None)["step"]
        log(f"decoder: resumed at step {step}/{steps}")
    vae.train()
    t0 = time.time()
    with graceful_stop() as stop:
        while step < steps:
            _, gen = step_rng(seed, "decoder", step)
            idx = torch.randint(0, len(latents), (batch_size,), generator=gen)
            target = pixels[idx]  # (B, 3, H, W)
            recon = vae.decode(latents[idx]).sample
            err = (recon - target).pow(2) + L1_WEIGHT * (recon - target).abs()
            loss = (object_weights(target, object_weight) * err).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % 25 == 0 or step == steps:
                log(f"decoder step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
            if stop.requested or step % checkpoint_every == 0 or step == steps:
                save_state(state_path, {"vae": vae}, opt, sched, None, {"step": step, "seed": seed})
            if stop.requested and step < steps:
                raise TrainingStopped(f"stopped at decoder step {step}; state saved in {state_path}; rerun with --resume")
    vae.eval()
