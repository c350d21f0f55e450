"""Write the trained LoRA as an sd-scripts (kohya) ``.safetensors`` file, with ``ss_*`` and ``modelspec.*`` metadata.

Key names as sd-scripts' ``networks/lora.py`` gives SDXL modules (docs/sd-scripts-compat.md §4):

- UNet: ``lora_unet_`` + the module's SAI/ldm path with dots as underscores
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``), not diffusers' ``down_blocks``
  path. The SAI path comes from the one diffusers -> SAI table (:func:`sdxl_probe.models.ldm_names.unet_entries`).
- text encoders: ``lora_te1_text_model_encoder_*`` / ``lora_te2_text_model_encoder_*``; transformers 5
  drops ``text_model.`` from CLIPTextModel's paths, ComfyUI's kohya mapping wants it back.
  (names from :mod:`sdxl_probe.pipeline.kohya_names`, shared with the loader).
- per module: ``.lora_down.weight`` (peft ``lora_A``), ``.lora_up.weight`` (``lora_B``) and
  ``.alpha`` as configured (diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank); DoRA's
  ``.dora_scale``, LoHa's ``.hada_*`` and LoKr's ``.lokr_*`` as LyCORIS writes them (:func:`layer_tensors`).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sdxl_probe.errors import ConfigError
from sdxl_probe.io import write_with
from sdxl_probe.pipeline.kohya_names import PREFIXES, kohya_module_name, kohya_module_names

__all__ = ["PREFIXES", "kohya_module_name", "kohya_metadata", "lora_tensors", "load_network_weights", "save_kohya"]

def lora_tensors(models: dict[str, torch.nn.Module], unet_config: Any = None) -> dict[str, torch.Tensor]:
    """The kohya tensors of every peft LoRA / LoHa / LoKr layer in ``models`` (name -> module)."""
    out = {}
    for model_name, model in models.items():
        layers = adapter_layers(model)
        names = kohya_module_names(model_name, list(layers), unet_config if model_name == "unet" else None)
        for name, module in zip(names, layers.values(), strict=True):
            out |= {f"{name}.{k}": v.detach().float().cpu().contiguous() for k, v in layer_tensors(module).items()}
    return out


def adapter_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """path -> peft layer carrying the trainer's adapter, in module order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdxl_probe.train.lora.network import ADAPTER

    return {path: m for path, m in model.named_modules()
            if isinstance(m, BaseTunerLayer) and ADAPTER in getattr(m, "scaling", {})}  # fmt: skip


def layer_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One layer's kohya/LyCORIS tensors (key suffix -> tensor); ``.alpha`` so that alpha / rank is its scale.

    - LoRA: ``lora_down.weight`` (peft ``lora_A``), ``lora_up.weight`` (``lora_B``), ``alpha`` = scale * r,
      so rsLoRA's alpha / sqrt(r) reaches any kohya reader; DoRA adds ``dora_scale``, peft's magnitude
      ``m`` on the output axis, ``(out, 1)`` or ``(out, 1, 1, 1)`` (LyCORIS ``wd_on_out``; ComfyUI's
      ``weight_decompose`` picks the axis by ``dora_scale.shape[0] == out``).
    - LoHa: ``hada_w1_a (out, r)``, ``hada_w1_b (r, in*k*k)``, ``hada_w2_a``, ``hada_w2_b``, ``alpha``
      (LyCORIS ``LohaModule``; ComfyUI ``LoHaAdapter``: ``(w1a@w1b) * (w2a@w2b) * alpha / w1b.shape[0]``).
    - LoKr: ``lokr_w1`` or ``lokr_w1_a/_b``, ``lokr_w2`` or ``lokr_w2_a/_b``, ``alpha``. Readers
      (ComfyUI ``LoKrAdapter``, A1111) take alpha / r only when a factor is low-rank, else scale 1: then
      the scale is folded into ``lokr_w2`` and alpha written as 1.
    """
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    from sdxl_probe.train.lora.network import ADAPTER

    a, scale = ADAPTER, module.scaling[ADAPTER]
    if isinstance(module, LoHaLayer):
        out = {k: getattr(module, k)[a] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
        return out | {"alpha": torch.tensor(scale * out["hada_w1_b"].shape[0])}
    if isinstance(module, LoKrLayer):
        out = {k: getattr(module, k)[a] for k in LOKR_KEYS if a in getattr(module, k)}
        low = [out[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in out]
        if not low:
            return out | {"lokr_w2": out["lokr_w2"] * scale, "alpha": torch.tensor(1.0)}
        return out | {"alpha": torch.tensor(scale * low[-1])}
    down, up = module.lora_A[a].weight, module.lora_B[a].weight
    out = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(scale * down.shape[0])}
    if a in getattr(module, "lora_magnitude_vector", {}):
        m = module.lora_magnitude_vector[a].weight  # (out,) Linear, (1, out, 1, 1) Conv2d
        out["dora_scale"] = m.reshape(up.shape[0], *[1] * (up.dim() - 1))
    return out


LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def load_network_weights(path: Path, models: dict[str, torch.nn.Module], unet_config: Any = None) -> int:
    """Start from a kohya file (sd-scripts ``--network_weights``): copy its tensors into the built network.

    The file must have exactly the keys, shapes and alphas this network exports (same type, targets,
    ranks); the inverse of :func:`layer_tensors` is applied. Returns the number of tensors read.

    Raises:
        ConfigError: one line naming the file and the first key that does not fit.
    """
    from safetensors.torch import load_file

    from sdxl_probe.train.lora.network import ADAPTER

    where = f"[network] network_weights = {str(path)!r}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: file not found; pass a .safetensors LoRA written for this network")
    try:
        got = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ConfigError(f"{where}: not a safetensors file ({str(e)[:120]})") from None
    want = lora_tensors(models, unet_config)
    _check_fits(where, want, got)
    with torch.no_grad():
        for model_name, model in models.items():
            layers = adapter_layers(model)
            names = kohya_module_names(model_name, list(layers), unet_config if model_name == "unet" else None)
            for name, module in zip(names, layers.values(), strict=True):
                mine = layer_tensors(module)
                for suffix, target in _targets(module, ADAPTER).items():
                    value = got[f"{name}.{suffix}"].to(target.dtype)
                    if suffix == "lokr_w2" and "lokr_w1_b" not in mine and "lokr_w2_b" not in mine:
                        value = value / module.scaling[ADAPTER]  # undo the fold of layer_tensors
                    target.copy_(value.reshape(target.shape))
    return len(got)


def _check_fits(where: str, want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        first = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise ConfigError(f"{where}: its keys do not match the configured network ({len(missing)} missing, "
                          f"{len(extra)} unexpected, e.g. {first}); set the same [network] type, target and dims")  # fmt: skip
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape):
            raise ConfigError(f"{where}: {k} has shape {tuple(got[k].shape)}, the network {tuple(v.shape)}; "
                              "set the dims the file was trained with")  # fmt: skip
        if k.endswith(".alpha") and abs(float(got[k]) - float(v)) > 1e-6 * max(1.0, abs(float(v))):
            raise ConfigError(f"{where}: {k} = {float(got[k]):g}, the network has {float(v):g}; "
                              "set the alpha the file was trained with")  # fmt: skip


def _targets(module: torch.nn.Module, a: str) -> dict[str, torch.Tensor]:
    """key suffix -> the parameter of ``module`` it is read into (inverse of :func:`layer_tensors`)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    if isinstance(module, LoHaLayer):
        return {k: getattr(module, k)[a] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    if isinstance(module, LoKrLayer):
        return {k: getattr(module, k)[a] for k in LOKR_KEYS if a in getattr(module, k)}
    out = {"lora_down.weight": module.lora_A[a].weight, "lora_up.weight": module.lora_B[a].weight}
    if a in getattr(module, "lora_magnitude_vector", {}):
        out["dora_scale"] = module.lora_magnitude_vector[a].weight
    return out


def network_module_and_args(n) -> tuple[str, dict[str, str]]:
    """``ss_network_module`` and ``ss_network_args`` (strings, as ``--network_args k=v`` gives them).

    Plain LoRA and rsLoRA (its scale is in the exported alpha) are sd-scripts' ``networks.lora``;
    DoRA, LoHa and LoKr are LyCORIS's ``lycoris.kohya`` with ``algo`` (and ``dora_wd``, ``factor``,
    ``decompose_both``), the names LyCORIS reads back.
    """
    args = {"target": n.target}
    if n.target == "full":
        args |= {"conv_dim": str(n.conv_dim), "conv_alpha": str(n.conv_alpha)}
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                "down_lr_weight", "mid_lr_weight", "up_lr_weight"):  # fmt: skip
        if getattr(n, key) is not None:
            args[key] = ",".join(str(v) for v in getattr(n, key))
    if n.use_rslora:
        args["use_rslora"] = "True"  # informational: the exported alpha already is alpha * sqrt(dim)
    if n.type == "lora" and not n.use_dora:
        return "networks.lora", args
    args["algo"] = n.type
    if n.use_dora:
        args["dora_wd"] = "True"
    if n.type == "lokr":
        args |= {"factor": str(n.factor), "decompose_both": str(n.decompose_both)}
    return "lycoris.kohya", args


def tag_frequency(images: list) -> dict[str, dict[str, int]]:
    """sd-scripts ``ss_tag_frequency``: subset -> tag -> count, raw captions split on ",", once per image."""
    freq: dict[str, Counter] = {}
    for im in images:
        tags = [t.strip().lower() for t in im.caption.split(",") if t.strip()]
        freq.setdefault(im.subset, Counter()).update(tags)
    return {k: dict(v) for k, v in freq.items()}


def kohya_metadata(cfg, *, images: list, train_idx: list[int], optimizer: str, steps: int, epoch: int,
                   started: float, resolution: str, title: str) -> dict[str, str]:  # fmt: skip
    """``ss_*`` (every value a string, as sd-scripts) and ``modelspec.*`` metadata of a checkpoint.

    Args:
        images: every image of the dataset (``ss_tag_frequency`` counts them all, as sd-scripts).
        train_idx: the images trained on (not held out); regularization images are counted apart.
        optimizer: sd-scripts' ``ss_optimizer`` text, ``module.Class(args)``.
    """
    trained = [images[i] for i in train_idx]
    n, o, t, d = cfg.network, cfg.optimizer, cfg.training, cfg.dataset
    module, args = network_module_and_args(n)
    meta = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_network_module": module,
        "ss_network_dim": str(n.dim),
        "ss_network_alpha": str(n.alpha * math.sqrt(n.dim) if n.use_rslora else n.alpha),  # the alpha written
        "ss_network_dropout": str(n.dropout),
        "ss_network_args": json.dumps(args),
        "ss_network_train_unet_only": str(not (n.train_text_encoder_1 or n.train_text_encoder_2)),
        "ss_learning_rate": str(o.unet_lr),
        "ss_unet_lr": str(o.unet_lr),
        "ss_text_encoder_lr": str([o.text_encoder_1_lr, o.text_encoder_2_lr]),
        "ss_lr_scheduler": o.lr_scheduler,
        "ss_lr_warmup_steps": str(o.lr_warmup_steps),
        "ss_optimizer": optimizer,
        "ss_max_grad_norm": str(o.max_grad_norm),
        "ss_mixed_precision": t.mixed_precision,
        "ss_seed": str(t.seed),
        "ss_min_snr_gamma": str(t.min_snr_gamma or None),
        "ss_noise_offset": str(t.noise_offset or None),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_max_train_steps": str(t.max_train_steps),
        "ss_steps": str(steps),
        "ss_epoch": str(epoch),
        "ss_num_train_images": str(sum(im.repeats for im in trained if not im.is_reg)),
        "ss_num_reg_images": str(sum(im.repeats for im in trained if im.is_reg)),
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
