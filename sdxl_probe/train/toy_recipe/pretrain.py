"""The toy-model recipe: VAE, then TE1 + TE2 + UNet jointly, from scratch, on two CPU cores.

``pretrain(out, config, seed=..., resume=...)`` runs three resumable phases and writes the
model as a diffusers folder (``out/model``) in fp16 safetensors:

1. the VAE (:mod:`sdxl_probe.train.toy_recipe.vae`), then the latents of every training image;
2. :func:`train_joint`: both text encoders and the UNet, epsilon prediction on SDXL's DDPM
   schedule with min-SNR weighting (Hang et al. 2023, diffusers ``compute_snr``), AdamW,
   diffusers' cosine LR schedule, an EMA of the weights (diffusers ``EMAModel``), and caption
   dropout to ``""`` so that classifier-free guidance works;
3. export of the EMA weights (:mod:`sdxl_probe.train.toy_recipe.export`).

Caption dropout trains the unconditional branch on the *encoded empty prompt*, so the
exported ``model_index.json`` sets ``force_zeros_for_empty_prompt: false``: samplers must
encode ``""`` for the negative branch rather than use zero embeddings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json, write_with
from sdxl_probe.options import Choice, Range, validate
from sdxl_probe.outputs import check_writable, clean_stale, hold_lock, output_folder
from sdxl_probe.pipeline.conditioning import encode_with, predict_noise, time_ids
from sdxl_probe.pipeline.noising import add_noise
from sdxl_probe.toy import model_config as mc
from sdxl_probe.train.state import TrainingStopped, graceful_stop, load_state, save_state
from sdxl_probe.train.toy_recipe.data import draw_caption, render_training_set, step_rng
from sdxl_probe.train.toy_recipe.vae import encode_latents, latent_scaling_factor, train_vae

ARCHITECTURES = {"toy": mc.TOY, "tiny": mc.TINY}


Count = Annotated[int, Range(1, 10**9)]
Rate = Annotated[float, Range(0.0, 1.0, hi_open=True)]
Positive = Annotated[float, Range(0.0, 1e6, lo_open=True)]


@dataclass
class PretrainConfig:
    """Recipe settings; the defaults are the recipe of the shipped toy model.

    Every field declares its bounds (:mod:`sdxl_probe.options`); a TOML or a constructor call
    outside them is refused before anything is rendered.
    """

    arch: Annotated[str, Choice(*ARCHITECTURES)] = "toy"  # "toy" (shipped) or "tiny" (tests)
    n_images: Annotated[int, Range(1, 10**6)] = 20000  # rendered once; about 13 passes over them at 4000 x 64
    vae_steps: Count = 500
    vae_batch_size: Annotated[int, Range(1, 4096)] = 32
    vae_lr: Positive = 2e-3
    vae_object_weight: Annotated[float, Range(0.0, 1e3)] = 4.0  # extra loss weight on object pixels
    steps: Count = 4000
    batch_size: Annotated[int, Range(1, 4096)] = 64
    lr: Positive = 1e-3
    warmup_steps: Annotated[int, Range(0, 10**9)] = 100
    caption_dropout: Rate = 0.1  # share of captions replaced by "" (unconditional branch for CFG)
    pooled_dropout: Rate = 0.25  # share of samples whose pooled vector is zeroed: text must flow through cross-attention
    min_snr_gamma: Positive = 5.0
    ema_decay: Rate = 0.998  # max decay; EMA warm-up ramps towards it
    checkpoint_every: Count = 100
    threads: Annotated[int, Range(0, 1024)] = 2  # torch intra-op threads (0: torch's default); 2 cores on the reference machine
    bf16_autocast: bool = True  # TE + UNet forward under CPU bf16 autocast: ~1.4x less CPU (AVX512-BF16)
    eager_attention: bool = True  # plain matmul attention while training: SDPA's CPU backward is ~2x slower here

    def __post_init__(self) -> None:
        validate(self)


def set_training_attention(models, eager: bool) -> None:
    """Eager (matmul + softmax) attention in every model, or back to their SDPA default.

    Same maths; on two CPU cores the flash-attention backward of SDPA took a third of a step.
    diffusers models swap attention processors, transformers models their implementation;
    neither is saved with the weights, so the exported model keeps the fast default.
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in models:
        if hasattr(model, "set_attn_processor"):
            model.set_attn_processor(AttnProcessor() if eager else AttnProcessor2_0())
        else:
            model.set_attn_implementation("eager" if eager else "sdpa")


def drop_pooled(pooled: torch.Tensor, gen: torch.Generator, rate: float) -> torch.Tensor:
    """Zero the pooled vector ``(B, P)`` of a random ``rate`` share of the samples."""
    keep = (torch.rand(pooled.shape[0], 1, generator=gen) >= rate).to(pooled.dtype)  # (B, 1)
    return pooled * keep


def caption_batch(scenes, idx: torch.Tensor, rng, dropout: float) -> list[str]:
    """A caption of each sampled scene in a random style (``""`` for a ``dropout`` share, for CFG)."""
    return [draw_caption(scenes[i], rng, dropout) for i in idx.tolist()]


def train_joint(
    unet,
    te1,
    te2,
    latents: torch.Tensor,
    scenes: list,
    *,
    cfg: PretrainConfig,
    seed: int,
    image_size: int,
    state_path: Path,
    resume: bool,
    log=print,
):
    """Train TE1, TE2 and the UNet together on scaled ``latents (N, C, h, w)``; returns the EMA.

    The whole loop is here: draw a batch (scene indices, captions, noise and timesteps from
    the step's own generators), noise the latents with the DDPM schedule, predict the noise,
    weight the MSE by min(SNR, gamma) / SNR, step AdamW, the LR schedule and the EMA.
    Besides caption dropout (for CFG), the pooled vector alone is zeroed for a share of the
    samples, so the UNet cannot get the whole caption through ``text_embeds`` and must read it
    through cross-attention, which is what the per-word maps show.
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr

    noise_scheduler = mc.build_scheduler()
    params = [p for m in (unet, te1, te2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    lr_sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    modules = {"unet": unet, "te1": te1, "te2": te2}
    step = 0
    if resume and state_path.exists():
        step = load_state(state_path, modules=modules, optimizer=opt, lr_scheduler=lr_sched, ema=ema)["step"]
        log(f"joint: resumed at step {step}/{cfg.steps}")
    for m in modules.values():
        m.train()
    max_length = te1.config.max_position_embeddings
    n_train = noise_scheduler.config.num_train_timesteps
    t0, loss_avg = time.time(), None
    with graceful_stop() as stop:
        while step < cfg.steps:
            rng, gen = step_rng(seed, "joint", step)
            idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
            captions = caption_batch(scenes, idx, rng, cfg.caption_dropout)
            x0 = latents[idx]  # (B, C, h, w)
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, n_train, (cfg.batch_size,), generator=gen)
            xt = add_noise(noise_scheduler, x0, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                enc = encode_with(te1, te2, captions, model_max_length=max_length)  # context (B, 77, d1 + d2)
                pooled = drop_pooled(enc.pooled, gen, cfg.pooled_dropout)
                tids = time_ids(cfg.batch_size, image_size, image_size)
                pred = predict_noise(unet, xt, t, context=enc.context, pooled=pooled, tids=tids).float()  # (B, C, h, w)
            snr = compute_snr(noise_scheduler, t)
            weight = torch.clamp(snr, max=cfg.min_snr_gamma) / snr  # epsilon objective
            loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(params)
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if step % 25 == 0 or step == cfg.steps:
                rate = step / max(time.time() - t0, 1e-9)
                log(f"joint step {step}/{cfg.steps} loss {loss_avg:.4f} lr {lr_sched.get_last_lr()[0]:.2e} "
                    f"{time.time() - t0:.0f}s ({rate:.2f} step/s this session)")
            if stop.requested or step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_state(state_path, modules=modules, optimizer=opt, lr_scheduler=lr_sched, ema=ema,
                           info={"step": step, "seed": seed})
            if stop.requested and step < cfg.steps:
                raise TrainingStopped(f"stopped at joint step {step}; state saved in {state_path}; rerun with --resume")
    return ema, params


def _vae_phase(cfg: PretrainConfig, arch, pixels, seed: int, state: Path, resume: bool, log):
    """Train (or reload) the VAE; returns it with ``scaling_factor`` set, and the scaled latents."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    vae = mc.build_vae(arch)
    final, lat_path = state / "vae_final.safetensors", state / "latents.safetensors"
    if resume and final.exists() and lat_path.exists():
        vae.load_state_dict(load_file(str(final)))
        latents = load_file(str(lat_path))["latents"]
    else:
        set_training_attention([vae], eager=cfg.eager_attention)
        train_vae(vae, pixels, seed=seed, steps=cfg.vae_steps, batch_size=cfg.vae_batch_size, lr=cfg.vae_lr,
                  object_weight=cfg.vae_object_weight, bf16=cfg.bf16_autocast,
                  state_path=state / "vae_state.safetensors", resume=resume,
                  checkpoint_every=cfg.checkpoint_every, log=log)
        set_training_attention([vae], eager=False)
        latents = encode_latents(vae, pixels)
        write_with(final, lambda tmp: save_file(vae.state_dict(), str(tmp)))
        write_with(lat_path, lambda tmp: save_file({"latents": latents}, str(tmp)))
    vae.eval()
    scale = latent_scaling_factor(latents)
    vae.register_to_config(scaling_factor=scale)
    log(f"vae: latents {tuple(latents.shape)}, scaling_factor {scale:.4f}")
    return vae, latents * scale


def pretrain(out: Path, cfg: PretrainConfig, *, seed: int = 0, resume: bool = False, log=print) -> Path:
    """Run the recipe into ``out`` (``out/state`` holds resumable state); returns ``out/model``."""
    out = Path(out)
    check_writable(out / "state", "--out")
    with hold_lock(out):  # a second run into the same folder is refused, naming this pid
        return _pretrain(out, cfg, seed=seed, resume=resume, log=log)


def _pretrain(out: Path, cfg: PretrainConfig, *, seed: int, resume: bool, log) -> Path:
    from sdxl_probe.train.toy_recipe.export import export_diffusers

    state = out / "state"
    if state.exists() and any(state.iterdir()) and not resume:
        raise ProbeError(f"{state} already holds training state; pass --resume to continue it or choose another --out")
    clean_stale(state)  # temp checkpoints of a killed run
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    arch = ARCHITECTURES[cfg.arch]
    t_start = time.time()
    data = render_training_set(cfg.n_images, seed, arch.image_size)
    log(f"rendered {cfg.n_images} scenes in {time.time() - t_start:.0f}s")
    vae, latents = _vae_phase(cfg, arch, data.pixels, seed, state, resume, log)
    torch.manual_seed(seed + 1)
    te1, te2 = mc.build_text_encoders(arch)
    unet = mc.build_unet(arch)
    set_training_attention([unet, te1, te2], eager=cfg.eager_attention)
    ema, params = train_joint(unet, te1, te2, latents, data.scenes, cfg=cfg, seed=seed, image_size=arch.image_size,
                              state_path=state / "joint_state.safetensors", resume=resume, log=log)
    ema.copy_to(params)
    set_training_attention([unet, te1, te2], eager=False)
    with output_folder(out / "model", owns=("model_index.json",)) as tmp:
        export_diffusers(tmp, vae=vae, text_encoder=te1, text_encoder_2=te2, unet=unet, kind=cfg.arch)
    model_dir = out / "model"
    elapsed = time.time() - t_start
    write_json(out / "pretrain.json", {"config": asdict(cfg), "seed": seed, "seconds_this_session": elapsed,
                                       "resumed": resume})
    log(f"done: {model_dir} ({elapsed / 60:.1f} min this session)")
    return model_dir


__all__ = ["PretrainConfig", "TrainingStopped", "pretrain", "train_joint"]
