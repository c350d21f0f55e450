"""Precision of a training run: accelerate's autocast and scaler, the frozen weights' dtype, checkpointing.

sd-scripts' ``train_network.py`` casts the frozen UNet and text encoders to the mixed-precision dtype
(``weight_dtype``) and keeps the network's weights fp32; :func:`weight_dtype` is that rule (the VAE
stays fp32, as with ``--no_half_vae``: SDXL's VAE overflows in fp16). peft keeps LoRA weights fp32 on
a half-precision base (``autocast_adapter_dtype``).
"""

from __future__ import annotations

import torch

from sdxl_probe.errors import ConfigError

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the frozen UNet and text encoders are loaded in for ``[training] mixed_precision``."""
    return WEIGHT_DTYPES[mixed_precision]


def make_accelerator(device: torch.device, mixed_precision: str):
    """accelerate's ``Accelerator`` for ``device``: its autocast, backward (GradScaler for fp16), clipping.

    It places nothing (``device_placement=False``: the trainer moved the models) and draws no
    randomness (every draw comes from the (seed, micro-step) generators), so CPU resume stays
    bit-exact. In a single process the shared accelerate state is reset first, so one process can
    train runs of different precisions one after another (tests, studies); under ``accelerate
    launch`` with N processes the launcher's process group is kept (gloo on the CPU, NCCL on GPUs;
    :mod:`~sdxl_probe.train.lora.parallel`). ``split_batches=True``: the prepared LR scheduler steps once
    per optimizer step; accelerate's default steps it N times, as if each process's dataloader
    batch were N times smaller than the global one, which is not how the trainer splits data.
    """
    from sdxl_probe.train.lora.parallel import check_launch

    check_launch()
    if mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError('[training] mixed_precision = "fp16" on the CPU: fp16 autocast is about 8x slower than '
                          'fp32 there; use "bf16" or "no", or a CUDA device')  # fmt: skip
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState, PartialState

    if not PartialState._shared_state or PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=device.type == "cpu", device_placement=False,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))  # fmt: skip


def process_device(accelerator, device: torch.device) -> torch.device:
    """The training device of this process: ``device``, or with several processes on CUDA, the launcher's GPU.

    ``accelerate launch --multi_gpu`` gives process ``r`` the GPU ``LOCAL_RANK``; a configured index
    (``cuda:1``) would put every process on one GPU, so it is replaced by that one.
    """
    if accelerator.num_processes > 1 and device.type == "cuda":
        return accelerator.device
    return device


def enable_checkpointing(components, network) -> None:
    """Recompute activations in backward: the UNet, and each text encoder that trains.

    diffusers checkpoints only while gradients are enabled and transformers only in train mode, so
    validation and sampling (``no_grad``, eval mode) run plain forwards. Non-reentrant checkpointing:
    the frozen inputs need no ``requires_grad`` for the LoRA weights inside to get gradients.
    """
    components.unet.enable_gradient_checkpointing()
    kwargs = {"use_reentrant": False}
    for name in ("text_encoder", "text_encoder_2"):
        if name not in network.params:
            continue
        encoder = getattr(components, name)
        if hasattr(encoder, "activation_checkpointing_enable"):  # transformers 5 name
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

