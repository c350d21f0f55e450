"""The LoRA training loop, read top to bottom: :func:`setup` builds the parts, :func:`train` runs the loop.

Objective (:mod:`~sdxl_probe.train.lora.objectives`, sd-scripts' formulas): epsilon or v prediction on
the model's own DDPM schedule (Ho et al. 2020), l2/l1/huber/smooth-l1, min-SNR-gamma, debiased or
v-scaled weights, noise offset (adaptive, random strength), pyramid noise and input perturbation, and an
optional L1/L2 penalty on the LoRA weights. The optimizer by sd-scripts name
(:mod:`~sdxl_probe.train.lora.optimizers`), diffusers' ``get_scheduler``, an optional EMA of the LoRA
weights. Precision (:mod:`~sdxl_probe.train.lora.precision`) through accelerate: its autocast (bf16/fp16)
around the forward, its backward and clipping (GradScaler for fp16); the frozen weights are loaded in
the mixed-precision dtype, the LoRA weights stay fp32. One optimizer step is :func:`optimizer_step`
(the benchmark times it too); the batch parts and the validation loss are in
:mod:`~sdxl_probe.train.lora.batch`.

Determinism: every micro-step draws its images (:class:`~sdxl_probe.train.lora.data.BatchOrder`),
flips, caption randomness, noise, timesteps and LoRA dropout from generators derived from
(seed, micro-step) alone (:func:`sdxl_probe.train.toy_recipe.data.step_rng`), so the resumable
state is just weights, the optimizer's state, the EMA and the LR schedule (no pickle, no RNG snapshots), and a
resumed run equals an uninterrupted one bit for bit on the CPU. Under ``accelerate launch`` with N processes,
process r draws with key ``m * N + r`` and the gradients are averaged over the processes
(:mod:`~sdxl_probe.train.lora.parallel`); with one process the key is ``m``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.pipeline.conditioning import predict_noise
from sdxl_probe.pipeline.noising import add_noise, training_scheduler
from sdxl_probe.text.captions import CaptionOptions
from sdxl_probe.train.lora import checkpoints
from sdxl_probe.train.lora.batch import (
    batch_conditioning,
    batch_latents,
    batch_masks,
    batch_time_ids,
    token_length,
    validation_loss,
)
from sdxl_probe.train.lora.caches import LatentCache, TextCache, build_text_cache, check_text_cache
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.data import (
    BatchOrder,
    Buckets,
    TrainImage,
    check_buckets,
    read_images,
    split_images,
)
from sdxl_probe.train.lora.network import LoraNetwork, network_from_config
from sdxl_probe.train.lora.objectives import (
    Objective,
    diffusion_loss,
    offset_noise,
    perturbed_noise,
    pyramid_noise,
    weight_penalty,
)
from sdxl_probe.train.lora.optimizers import (
    build_ema,
    build_optimizer,
    check_optimizer,
    eval_weights,
    optimizer_kwargs,
    start_training,
)
from sdxl_probe.train.lora.parallel import (
    any_process,
    average_gradients,
    batch_line,
    draw_key,
    lr_factor,
    main_first,
    mean_over_processes,
    step_epoch,
)
from sdxl_probe.train.lora.precision import (
    enable_checkpointing,
    make_accelerator,
    process_device,
    weight_dtype,
)
from sdxl_probe.train.state import TrainingStopped, graceful_stop
from sdxl_probe.train.toy_recipe.data import step_rng


class TrainingDiverged(ProbeError):
    """The loss became NaN or inf; the last good checkpoint was left as it was."""

    every_process = True  # data parallel: each process raises it at the same step; rank 0 alone prints it


@dataclass
class Run:
    """Everything :func:`train` needs, built by :func:`setup`."""

    cfg: TrainConfig
    run_dir: Path
    components: Any
    images: list[TrainImage]
    train_idx: list[int]
    val_idx: list[int]
    order: BatchOrder
    latents: LatentCache | None
    text: TextCache | None
    network: LoraNetwork
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    noise_scheduler: Any
    device: torch.device
    start_step: int
    started_at: float
    accelerator: Any  # accelerate.Accelerator: autocast, backward, clipping (see make_accelerator)
    objective: Objective
    ema: Any = None  # diffusers EMAModel of the LoRA weights ([training] ema_decay > 0), else None


# ----------------------------------------------------------------------------- setup


def setup(cfg: TrainConfig, run_dir: Path, *, resume: bool, log=print, components=None, accelerator=None) -> Run:
    """Build model, data, caches, network, optimizer and schedule; restore the latest state when resuming.

    Args:
        components: already-loaded components (tests); None loads ``[model] source``, the UNet and text
            encoders in the mixed-precision dtype (fp32 with "no"), the VAE in fp32.
        accelerator: the run's :func:`make_accelerator` (:func:`train` builds it first); None builds it.
    """
    from diffusers.optimization import get_scheduler

    from sdxl_probe.pipeline.checks import size_multiple
    from sdxl_probe.pipeline.device import resolve_device

    t = cfg.training
    device = torch.device(resolve_device(t.device, option="[training] device"))  # LoRA weights stay fp32 (peft keeps adapters fp32)
    if accelerator is None:
        accelerator = make_accelerator(device, t.mixed_precision)  # before any weight loads: fp16 on the CPU is refused
    device = process_device(accelerator, device)  # several processes on CUDA: this process's GPU
    if t.threads:
        torch.set_num_threads(t.threads)
    buckets = Buckets(cfg.dataset.resolution, cfg.dataset.enable_bucket, cfg.dataset.min_bucket_reso,
                      cfg.dataset.max_bucket_reso, cfg.dataset.bucket_reso_steps, cfg.dataset.bucket_no_upscale)  # fmt: skip
    if components is None:
        from sdxl_probe.models.load import load_components, read_configs

        configs = read_configs(cfg.model.source, allow_pickle=cfg.model.allow_pickle)
        check_buckets(buckets, size_multiple(configs["unet"], configs["vae"]))  # before any weight loads
        images = _images(cfg, buckets, log)
        components = load_components(cfg.model.source, dtype=weight_dtype(t.mixed_precision), vae_dtype=torch.float32,
                                     allow_pickle=cfg.model.allow_pickle)  # fmt: skip
    else:
        check_buckets(buckets, size_multiple(dict(components.unet.config), dict(components.vae.config)))
        images = _images(cfg, buckets, log)
    components.to(device=device)
    train_idx, val_idx = split_images(images, cfg.dataset.validation_split, cfg.dataset.validation_seed)
    order = BatchOrder(images, train_idx, cfg.dataset.batch_size, t.seed, cfg.dataset.prior_loss_weight)
    with main_first(accelerator, cfg.dataset.cache_latents == "disk"):  # one writer per cache file
        latents = _latent_cache(cfg, run_dir, components, images, log)
    with main_first(accelerator, cfg.dataset.cache_text_encoder_outputs_to_disk):
        text = _text_cache(cfg, run_dir, components, images, log)
    n = cfg.network
    network = network_from_config(components, n, seed=t.seed, log=log)
    if not network.params:
        raise ProbeError("[network] trains nothing: set train_unet, train_text_encoder_1 or train_text_encoder_2")
    if t.gradient_checkpointing:
        enable_checkpointing(components, network)
    o, world = cfg.optimizer, accelerator.num_processes
    factor = lr_factor(o.scale_lr, cfg.dataset.batch_size, t.gradient_accumulation_steps, world)
    log(batch_line(world, cfg.dataset.batch_size, t.gradient_accumulation_steps, _base_lrs(cfg, network), factor))
    optimizer = build_optimizer(o.type, _param_groups(cfg, network, scale=factor), optimizer_kwargs(o.type,
                                o.optimizer_args, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps),
                                device=str(device))  # fmt: skip
    ema = build_ema(network.all_params(), t.ema_decay)
    lr_scheduler = get_scheduler(cfg.optimizer.lr_scheduler, optimizer, num_warmup_steps=cfg.optimizer.lr_warmup_steps,
                                 num_training_steps=t.max_train_steps)  # fmt: skip
    start = 0
    if resume:
        start = checkpoints.restore(run_dir, network, components, optimizer, lr_scheduler, cfg, log,
                                    scaler=accelerator.scaler, ema=ema, processes=world)  # fmt: skip
    start_training(optimizer)  # schedule-free: weights to y (a saved state holds the average x)
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)  # fp16: steps skipped on overflow
    for _, model in components.models():  # dropout and checkpointing on where something trains
        model.train(any(p.requires_grad for p in model.parameters()))
    return Run(cfg, run_dir, components, images, train_idx, val_idx, order, latents, text, network, optimizer,
               lr_scheduler, training_scheduler(components.scheduler.config), device, start, time.time(),
               accelerator, objective_of(t), ema)  # fmt: skip


def objective_of(t) -> Objective:
    """The ``[training]`` loss settings as an :class:`Objective`."""
    return Objective(prediction_type="v_prediction" if t.v_parameterization else "epsilon", loss_type=t.loss_type,
                     huber_schedule=t.huber_schedule, huber_c=t.huber_c, huber_scale=t.huber_scale,
                     min_snr_gamma=t.min_snr_gamma, debiased=t.debiased_estimation_loss,
                     scale_v_like_noise=t.scale_v_pred_loss_like_noise_pred)  # fmt: skip


def _images(cfg: TrainConfig, buckets: Buckets, log) -> list[TrainImage]:
    from sdxl_probe.train.lora.masks import MaskSettings

    d = cfg.dataset
    settings = {f.name: getattr(d, f.name) for f in dataclasses.fields(CaptionOptions)}
    masks = MaskSettings(d.masked_loss, d.alpha_mask, d.conditioning_data_dir)
    return read_images(d.path, caption_extension=d.caption_extension, caption_settings=settings, buckets=buckets,
                       on_bad_image=d.on_bad_image, log=log, reg_path=d.reg_path, masks=masks)  # fmt: skip


def _latent_cache(cfg: TrainConfig, run_dir: Path, components, images: list[TrainImage], log) -> LatentCache | None:
    """Fill the latent cache for every (image, flip) training can draw; None when caching is off."""
    mode = cfg.dataset.cache_latents
    if mode == "none":
        return None
    folder = Path(cfg.dataset.cache_dir or run_dir / "latent_cache") if mode == "disk" else None
    cache = LatentCache(components, folder)
    for im in images:
        for flipped in (False, True) if cfg.dataset.flip_aug else (False,):
            cache.get(im, flipped)
    log(f"latent cache ({mode}): {len(cache.memory)} entries, {cache.encoded} encoded now")
    return cache


def _text_cache(cfg: TrainConfig, run_dir: Path, components, images: list[TrainImage], log) -> TextCache | None:
    d, n = cfg.dataset, cfg.network
    if not (d.cache_text_encoder_outputs or d.cache_text_encoder_outputs_to_disk):  # to_disk implies it (sd-scripts)
        return None
    folder = Path(d.text_encoder_cache_dir or run_dir / "text_cache") if d.cache_text_encoder_outputs_to_disk else None
    check_text_cache(images, d.cache_text_variants, n.train_text_encoder_1 or n.train_text_encoder_2)
    cache = build_text_cache(components.text_encoder, components.text_encoder_2, images,
                             n_variants=d.cache_text_variants, seed=cfg.training.seed,
                             model_max_length=components.tokenizer.model_max_length,
                             max_token_length=token_length(cfg), weighted=d.weighted_captions, folder=folder, log=log)  # fmt: skip
    log(f"text-encoder cache: {sum(len(c) for c in cache.captions)} captions for {len(images)} images, "
        f"{cache.encoded} images encoded now")
    return cache


def _base_lrs(cfg: TrainConfig, network: LoraNetwork) -> dict[str, float]:
    """The configured learning rate of each trained model."""
    lrs = {"unet": cfg.optimizer.unet_lr, "text_encoder": cfg.optimizer.text_encoder_1_lr,
           "text_encoder_2": cfg.optimizer.text_encoder_2_lr}  # fmt: skip
    return {name: lrs[name] for name in network.params}


def _param_groups(cfg: TrainConfig, network: LoraNetwork, scale: float = 1) -> list[dict]:
    """One group per trained model; with sd-scripts' block lr weights, one per UNet block (lr x weight).

    ``scale``: the ``[optimizer] scale_lr`` factor (:func:`~sdxl_probe.train.lora.parallel.lr_factor`).
    """
    from sdxl_probe.train.lora.blocks import block_lr_weights

    lrs = {name: lr * scale for name, lr in _base_lrs(cfg, network).items()}
    n = cfg.network
    weights = block_lr_weights(n.down_lr_weight, n.mid_lr_weight, n.up_lr_weight)
    groups = []
    for name, ps in network.params.items():
        if name == "unet" and weights is not None:
            groups += [{"params": bps, "lr": lrs[name] * weights[b], "name": f"unet_block{b:02d}"}
                       for b, bps in sorted(network.unet_blocks.items())]  # fmt: skip
        else:
            groups.append({"params": ps, "lr": lrs[name], "name": name})
    return groups


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, run_dir: Path, *, resume: bool = False, log=print, components=None) -> Path:
    """Train the LoRA; returns the final kohya file. Ctrl-C/SIGTERM save state, then raise TrainingStopped.

    A second run training into the same ``run_dir`` is refused (a lock beside it names the pid). Under
    ``accelerate launch`` with N processes (:mod:`~sdxl_probe.train.lora.parallel`) the main process
    alone takes the lock, opens the trackers, prints and writes ``run_dir``; the others train their
    share of each batch silently.
    """
    from sdxl_probe.outputs import hold_lock
    from sdxl_probe.pipeline.device import resolve_device
    from sdxl_probe.train.lora.trackers import Trackers, open_trackers

    _check_optimizer(cfg)  # its package, arguments and device, before any weight loads (trackers: their packages)
    device = torch.device(resolve_device(cfg.training.device, option="[training] device"))
    accelerator = make_accelerator(device, cfg.training.mixed_precision)  # joins the launcher's process group
    kwargs = {"resume": resume, "components": components, "accelerator": accelerator}
    if not accelerator.is_main_process:
        return _train(cfg, Path(run_dir), log=lambda _: None, trackers=Trackers({}), **kwargs)
    with hold_lock(Path(run_dir), option="[saving] output_dir"), open_trackers(
        cfg.logging, Path(run_dir), params=resolved_config(cfg), run_name=cfg.saving.output_name, resume=resume
    ) as trackers:
        return _train(cfg, Path(run_dir), log=log, trackers=trackers, **kwargs)


def _check_optimizer(cfg: TrainConfig) -> None:
    from sdxl_probe.pipeline.device import resolve_device

    o, n = cfg.optimizer, cfg.network
    lrs = [lr for lr, on in ((o.unet_lr, n.train_unet), (o.text_encoder_1_lr, n.train_text_encoder_1),
                             (o.text_encoder_2_lr, n.train_text_encoder_2)) if on]  # fmt: skip
    kwargs = optimizer_kwargs(o.type, o.optimizer_args, weight_decay=o.weight_decay, betas=o.betas, eps=o.eps)
    check_optimizer(o.type, kwargs, device=resolve_device(cfg.training.device, option="[training] device"),
                    lrs=tuple(lrs))  # fmt: skip


def _train(cfg: TrainConfig, run_dir: Path, *, resume: bool, log, components, trackers, accelerator) -> Path:
    """The loop (see the module docstring): setup, then one optimizer step per iteration.

    Validation, samples and saving see a schedule-free optimizer's average weights (``eval_weights``;
    every process swaps, so their weights stay equal) and run on the main process only (``main``). A
    stop request (Ctrl-C, SIGTERM) is shared by the processes, which stop after the same step; the
    others wait for main's save before they leave.
    """
    run = setup(cfg, run_dir, resume=resume, log=log, components=components, accelerator=accelerator)
    acc, t = run.accelerator, cfg.training
    main = acc.is_main_process
    if main:
        checkpoints.write_run_files(run, fresh=not resume)
    step, last_saved = run.start_step, run.start_step
    bar = _progress(cfg, step) if main else None
    t0 = time.time()
    with graceful_stop() as stop:
        while step < t.max_train_steps:
            loss_sum, grad_norm, _ = optimizer_step(run, step, last_saved)
            epoch = step_epoch(step, t.gradient_accumulation_steps, acc.num_processes, run.order.per_epoch)
            loss_sum = mean_over_processes(loss_sum, acc.num_processes, run.device)
            step += 1
            record = {"step": step, "epoch": epoch + 1, "loss": loss_sum, "lr": run.lr_scheduler.get_last_lr()[0],
                      "grad_norm": grad_norm}  # fmt: skip
            if _due(step, cfg.logging.validate_every_n_steps or cfg.saving.save_every_n_steps, t.max_train_steps):
                with eval_weights(run.optimizer):
                    record["val_loss"] = validation_loss(run) if main else None
            if main:
                checkpoints.append_metrics(run.run_dir, record)
            trackers.log_metrics(record)
            _show(bar, log, record, step, t.max_train_steps, cfg.logging.log_every_n_steps, t0, run.start_step)
            if _due(step, cfg.sampling.every_n_steps, t.max_train_steps) and cfg.sampling.prompts:
                with eval_weights(run.optimizer):
                    trackers.log_images(checkpoints.write_samples(run, step) if main else [], step)
            stopping = any_process(stop.requested, acc.num_processes, run.device)
            if stopping or _due(step, cfg.saving.save_every_n_steps, t.max_train_steps):
                with eval_weights(run.optimizer):
                    if main:
                        checkpoints.save(run, step, epoch + 1)
                last_saved = step
            if stopping and step < t.max_train_steps:
                acc.wait_for_everyone()  # the others leave once main has saved
                raise TrainingStopped(f"stopped at step {step}; state saved in {run.run_dir}; continue with "
                                      f"`sdxl-probe train CONFIG --resume {run.run_dir}`")  # fmt: skip
    if bar is not None:
        bar.close()
    with eval_weights(run.optimizer):
        out = checkpoints.finish(run, step) if main else checkpoints.final_path(run.run_dir, cfg.saving.output_name)
    trackers.log_files([out, checkpoints.ema_path(run.run_dir, cfg.saving.output_name)])
    acc.wait_for_everyone()  # every process returns once the final files exist
    return out


@dataclass
class MicroBatch:
    """The draws of one micro-step, on the training device."""

    epoch: int
    idx: list[int]  # image indices
    flips: list[bool]
    rng: random.Random  # continues with the caption draws
    x0: torch.Tensor  # (B, C, h, w) scaled clean latents
    noise: torch.Tensor  # (B, C, h, w) the loss's noise (offset and pyramid applied)
    input_noise: torch.Tensor  # (B, C, h, w) the noise added to x0: ``noise``, perturbed with ip_noise_gamma
    timesteps: torch.Tensor  # (B,)
    mask: torch.Tensor | None = None  # (B, H, W) loss masks at pixel size; None: no image of the batch has one


def draw_micro_batch(run: Run, m: int) -> MicroBatch:
    """Draw key ``m``'s images, flips, latents, noise and timesteps, from generators keyed by (seed, m).

    ``m`` is the global micro-step in one process, :func:`~sdxl_probe.train.lora.parallel.draw_key` with several.
    """
    t = run.cfg.training
    rng, gen = step_rng(t.seed, "lora", m)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))  # LoRA dropout
    epoch, idx = run.order.at(m)
    flips = [run.cfg.dataset.flip_aug and rng.random() < 0.5 for _ in idx]
    x0 = batch_latents(run, idx, flips)  # (B, C, h, w)
    noise = torch.randn(x0.shape, generator=gen)  # sd-scripts' order of draws: noise, offset, pyramid, t, perturbation
    noise = offset_noise(noise, x0, t.noise_offset, t.adaptive_noise_scale, t.noise_offset_random_strength, gen)
    noise = pyramid_noise(noise, t.multires_noise_iterations, t.multires_noise_discount, gen)
    timesteps = torch.randint(t.min_timestep, t.max_timestep, (len(idx),), generator=gen)
    input_noise = perturbed_noise(noise, t.ip_noise_gamma, t.ip_noise_gamma_random_strength, gen)
    mask = batch_masks(run, idx, flips)  # (B, H, W) or None; read from the files, never cached
    dev = run.device
    return MicroBatch(epoch, idx, flips, rng, x0.to(dev), noise.to(dev), input_noise.to(dev), timesteps.to(dev),
                      None if mask is None else mask.to(dev))  # fmt: skip


def optimizer_step(run: Run, step: int, last_saved: int) -> tuple[float, float | None, int]:
    """Optimizer step ``step`` (from 0): accumulate the micro-steps, clip, AdamW, LR schedule.

    accelerate's autocast runs the forward in ``[training] mixed_precision``; its ``backward`` scales
    the loss for fp16 (GradScaler), its ``clip_grad_norm_`` unscales first, and the prepared
    optimizer skips a step whose fp16 gradients overflowed. The LoRA weights stay fp32. Under
    ``accelerate launch`` each process draws its own micro-batches and the gradients are averaged
    over the processes before clipping (:mod:`~sdxl_probe.train.lora.parallel`).

    Returns:
        (mean loss over the micro-steps, gradient norm before clipping or None, epoch index).
    """
    cfg, acc, accum = run.cfg, run.accelerator, run.cfg.training.gradient_accumulation_steps
    loss_sum = 0.0
    for a in range(accum):
        m = draw_key(step * accum + a, acc.process_index, acc.num_processes)  # the key of every random draw
        b = draw_micro_batch(run, m)
        xt = add_noise(run.noise_scheduler, b.x0, b.input_noise, b.timesteps)
        with acc.autocast():
            context, pooled = batch_conditioning(run, b.idx, b.rng, b.epoch, step)  # (B, L, D), (B, P)
            tids = batch_time_ids(run, b.idx, b.flips).to(run.device)  # (B, 6)
            pred = predict_noise(run.components.unet, xt, b.timesteps, context=context, pooled=pooled,
                                 tids=tids).float()  # fmt: skip
        weights = torch.tensor(run.order.loss_weights(b.idx), device=run.device)  # (B,) prior_loss_weight on reg
        loss = diffusion_loss(pred, b.x0, b.noise, b.timesteps, run.noise_scheduler, run.objective, weights, b.mask)
        if cfg.training.lora_weight_l1 or cfg.training.lora_weight_l2:
            loss = loss + weight_penalty(run.network.all_params(), cfg.training.lora_weight_l1,
                                         cfg.training.lora_weight_l2)  # fmt: skip
        if any_process(not bool(torch.isfinite(loss)), acc.num_processes, run.device):  # every process stops
            raise TrainingDiverged(checkpoints.divergence_message(run, step, m, loss, b.timesteps, last_saved))
        if loss.requires_grad:  # module_dropout can skip every adapter of a micro-step: no gradient from it
            acc.backward(loss / accum)
        loss_sum += loss.item() / accum
    average_gradients(run.network.all_params(), acc.num_processes)  # several processes: their mean, before clipping
    grad_norm = None
    if cfg.optimizer.max_grad_norm > 0:
        grad_norm = float(acc.clip_grad_norm_(run.network.all_params(), cfg.optimizer.max_grad_norm))
    if any(p.grad is not None for p in run.network.all_params()):  # module_dropout may have dropped every adapter
        run.optimizer.step()  # (fp16's GradScaler refuses a step that recorded no gradient)
    if run.ema is not None:
        run.ema.step(run.network.all_params())
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, b.epoch


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _progress(cfg: TrainConfig, start: int):
    if not cfg.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.training.max_train_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _show(bar, log, record: dict, step: int, total: int, every: int, t0: float, start: int) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
    elif step % every == 0 or step == total:
        rate = (step - start) / max(time.time() - t0, 1e-9)
        left = (total - step) / max(rate, 1e-9)
        val = f" val {record['val_loss']:.4f}" if record.get("val_loss") is not None else ""
        log(f"step {step}/{total} loss {record['loss']:.4f}{val} lr {record['lr']:.2e} "
            f"{rate:.2f} step/s, {left:.0f}s left")  # fmt: skip


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved next to the run (JSON-ready)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
