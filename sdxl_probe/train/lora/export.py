"""Write the trained LoRA as an sd-scripts (kohya) ``.safetensors`` file, with ``ss_*`` and ``modelspec.*`` metadata.

Key names as sd-scripts' ``networks/lora.py`` gives SDXL modules (docs/sd-scripts-compat.md §4):

- UNet: ``lora_unet_`` + the module's SAI/ldm path with dots as underscores
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``), not diffusers' ``down_blocks``
  path. The SAI path comes from the one diffusers -> SAI table (:func:`sdxl_probe.models.ldm_names.unet_entries`).
- text encoders: ``lora_te1_text_model_encoder_*`` / ``lora_te2_text_model_encoder_*``; transformers 5
  drops ``text_model.`` from CLIPTextModel's paths, ComfyUI's kohya mapping wants it back.
- per module: ``.lora_down.weight`` (peft ``lora_A``), ``.lora_up.weight`` (``lora_B``) and
  ``.alpha`` as configured (diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sdxl_probe.io import write_with
from sdxl_probe.models.ldm_names import SAI_PREFIXES, unet_entries

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def kohya_module_name(model: str, path: str, unet_config: Any = None) -> str:
    """sd-scripts' LoRA name of module ``path`` of ``model`` ("unet" | "text_encoder" | "text_encoder_2")."""
    if model == "unet":
        sai = unet_entries([f"{path}.weight"], unet_config)[0].key
        path = sai.removeprefix(SAI_PREFIXES["unet"]).removesuffix(".weight")
    elif not path.startswith("text_model."):
        path = "text_model." + path
    return PREFIXES[model] + path.replace(".", "_")


def lora_tensors(models: dict[str, torch.nn.Module], unet_config: Any = None) -> dict[str, torch.Tensor]:
    """The kohya tensors of every peft LoRA layer in ``models`` (name -> module)."""
    from peft.tuners.lora import LoraLayer

    from sdxl_probe.train.lora.network import ADAPTER

    out = {}
    for model_name, model in models.items():
        for path, module in model.named_modules():
            if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
                continue
            name = kohya_module_name(model_name, path, unet_config)
            out[f"{name}.lora_down.weight"] = module.lora_A[ADAPTER].weight.detach().float().cpu().contiguous()
            out[f"{name}.lora_up.weight"] = module.lora_B[ADAPTER].weight.detach().float().cpu().contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(module.lora_alpha[ADAPTER]))
    return out


def tag_frequency(images: list) -> dict[str, dict[str, int]]:
    """sd-scripts ``ss_tag_frequency``: subset -> tag -> count, raw captions split on ",", once per image."""
    freq: dict[str, Counter] = {}
    for im in images:
        tags = [t.strip().lower() for t in im.caption.split(",") if t.strip()]
        freq.setdefault(im.subset, Counter()).update(tags)
    return {k: dict(v) for k, v in freq.items()}


def kohya_metadata(cfg, *, images: list, steps: int, epoch: int, started: float, resolution: str,
                   title: str) -> dict[str, str]:  # fmt: skip
    """``ss_*`` (every value a string, as sd-scripts) and ``modelspec.*`` metadata of a checkpoint."""
    n, o, t, d = cfg.network, cfg.optimizer, cfg.training, cfg.dataset
    conv = {"conv_dim": str(n.conv_dim), "conv_alpha": str(n.conv_alpha)} if n.target == "full" else {}
    meta = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(n.dim),
        "ss_network_alpha": str(n.alpha),
        "ss_network_dropout": str(n.dropout),
        "ss_network_args": json.dumps({"target": n.target, **conv}),
        "ss_network_train_unet_only": str(not (n.train_text_encoder_1 or n.train_text_encoder_2)),
        "ss_learning_rate": str(o.unet_lr),
        "ss_unet_lr": str(o.unet_lr),
        "ss_text_encoder_lr": str([o.text_encoder_1_lr, o.text_encoder_2_lr]),
        "ss_lr_scheduler": o.lr_scheduler,
        "ss_lr_warmup_steps": str(o.lr_warmup_steps),
        "ss_optimizer": f"torch.optim.AdamW(weight_decay={o.weight_decay},betas={tuple(o.betas)})",
        "ss_max_grad_norm": str(o.max_grad_norm),
        "ss_mixed_precision": t.mixed_precision,
        "ss_seed": str(t.seed),
        "ss_min_snr_gamma": str(t.min_snr_gamma or None),
        "ss_noise_offset": str(t.noise_offset or None),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_max_train_steps": str(t.max_train_steps),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(sum(im.repeats for im in images)),
        "ss_num_epochs": str(epoch),
        "ss_batch_size_per_device": str(d.batch_size),
        "ss_resolution": resolution,
        "ss_enable_bucket": str(d.enable_bucket),
        "ss_min_bucket_reso": str(d.min_bucket_reso),
        "ss_max_bucket_reso": str(d.max_bucket_reso),
        "ss_bucket_no_upscale": str(d.bucket_no_upscale),
        "ss_flip_aug": str(d.flip_aug),
        "ss_cache_latents": str(d.cache_latents != "none"),
        "ss_max_token_length": str(None if d.max_token_length == 75 else d.max_token_length),
        "ss_weighted_captions": str(d.weighted_captions),
        "ss_shuffle_caption": str(d.shuffle_caption),
        "ss_keep_tokens": str(d.keep_tokens),
        "ss_caption_dropout_rate": str(d.caption_dropout_rate),
        "ss_caption_dropout_every_n_epochs": str(d.caption_dropout_every_n_epochs),
        "ss_caption_tag_dropout_rate": str(d.caption_tag_dropout_rate),
        "ss_tag_frequency": json.dumps(tag_frequency(images)),
        "ss_dataset_dirs": json.dumps({s: {"n_repeats": r, "img_count": c} for s, (r, c) in _dirs(images).items()}),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(time.time()),
        "ss_sd_model_name": str(cfg.model.source),
        "ss_output_name": cfg.saving.output_name,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title,
        "modelspec.resolution": resolution,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "modelspec.prediction_type": "epsilon",
    }
    return meta


def _dirs(images: list) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for im in images:
        repeats, count = out.get(im.subset, (im.repeats, 0))
        out[im.subset] = (repeats, count + 1)
    return out


def save_kohya(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write the file atomically (a killed run never leaves half a LoRA)."""
    from safetensors.torch import save_file

    return write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
