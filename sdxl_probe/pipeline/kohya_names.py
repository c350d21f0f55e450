"""sd-scripts' (kohya) module names of SDXL components, both ways: the trainer writes them, the loader reads them.

- UNet: ``lora_unet_`` + the module's SAI/ldm path with dots as underscores
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``), from the one diffusers -> SAI
  table (:func:`sdxl_probe.models.ldm_names.unet_entries`);
- text encoders: ``lora_te1_text_model_encoder_*`` / ``lora_te2_text_model_encoder_*``; transformers 5
  drops ``text_model.`` from CLIPTextModel's paths, ComfyUI's kohya mapping (``model_lora_keys_clip``)
  wants it back.
"""

from __future__ import annotations

from typing import Any

from sdxl_probe.models.ldm_names import SAI_PREFIXES, unet_entries

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def kohya_module_name(model: str, path: str, unet_config: Any = None) -> str:
    """sd-scripts' LoRA name of module ``path`` of ``model`` ("unet" | "text_encoder" | "text_encoder_2")."""
    return kohya_module_names(model, [path], unet_config)[0]


def kohya_module_names(model: str, paths: list[str], unet_config: Any = None) -> list[str]:
    """:func:`kohya_module_name` of many modules at once (one pass over the SAI table)."""
    if model == "unet":
        entries = unet_entries([f"{p}.weight" for p in paths], unet_config)
        paths = [e.key.removeprefix(SAI_PREFIXES["unet"]).removesuffix(".weight") for e in entries]
    else:
        paths = [p if p.startswith("text_model.") else "text_model." + p for p in paths]
    return [PREFIXES[model] + p.replace(".", "_") for p in paths]


def weight_modules(components: Any) -> dict[str, tuple[str, str]]:
    """kohya name -> (model attribute, module path) for every Linear and Conv2d of the UNet and text encoders.

    A module already wrapped by peft is listed under the wrapper's path (its base layer's path less ``.base_layer``).
    """
    import torch

    out = {}
    for model in PREFIXES:
        module = getattr(components, model, None)
        if module is None:
            continue
        paths = [n.removesuffix(".base_layer") for n, m in module.named_modules()
                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and ".lora_" not in n]  # fmt: skip
        for name, path in zip(kohya_module_names(model, paths, module.config if model == "unet" else None),
                              paths, strict=True):  # fmt: skip
            out[name] = (model, path)
    return out
