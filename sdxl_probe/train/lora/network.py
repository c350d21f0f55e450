"""The LoRA network through peft: which modules it targets, and its trainable parameters.

Targets follow sd-scripts ``networks/lora.py`` (docs/sd-scripts-compat.md §4):

- ``attn``: ``to_q/to_k/to_v/to_out.0`` of every attention in the UNet's Transformer2DModels;
- ``transformer`` (sd-scripts' default): every Linear (and 1x1 conv) inside each Transformer2DModel;
- ``full``: ``transformer`` plus the 3x3 convs of ResnetBlock2D/Downsample2D/Upsample2D, at
  ``conv_dim``/``conv_alpha``, and their Linears and 1x1 convs at ``dim`` (sd-scripts with ``conv_dim``);
- text encoders: the Linears of CLIPAttention and CLIPMLP (q/k/v/out_proj, fc1, fc2).

peft's LoRA is sd-scripts' LoRA: ``W + alpha/r * up @ down``, down initialised kaiming-uniform
(a = sqrt 5) and up zeros. Text encoders get peft's ``inject_adapter_in_model`` (transformers'
``add_adapter`` needs peft >= 0.22). One difference: peft applies ``dropout`` to the LoRA branch's
input, sd-scripts' ``network_dropout`` to the down projection's output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

ADAPTER = "default"
ATTN_LEAVES = ("to_q", "to_k", "to_v", "to_out.0")
CONV_OWNERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_LAYER = re.compile(r"(^|\.)encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")


def unet_targets(unet: torch.nn.Module, preset: str) -> tuple[list[str], list[str]]:
    """(linear-like targets, 3x3 conv targets) of the UNet for ``preset`` (attn | transformer | full)."""
    owners = [name for name, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    linear = []
    for name, module in unet.named_modules():
        if not any(name.startswith(o + ".") for o in owners):
            continue
        is_1x1 = isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1)
        if preset == "attn":
            if isinstance(module, torch.nn.Linear) and name.endswith(ATTN_LEAVES) and ".attn" in name:
                linear.append(name)
        elif isinstance(module, torch.nn.Linear) or is_1x1:
            linear.append(name)
    convs = []
    if preset == "full":  # sd-scripts with conv_dim: 3x3 convs at conv_dim, the owners' Linears/1x1 at dim
        for owner, m in unet.named_modules():
            if type(m).__name__ not in CONV_OWNERS:
                continue
            for n, c in m.named_modules():
                if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3):
                    convs.append(f"{owner}.{n}")
                elif isinstance(c, torch.nn.Linear) or (isinstance(c, torch.nn.Conv2d) and c.kernel_size == (1, 1)):
                    linear.append(f"{owner}.{n}")
    return linear, convs


def text_encoder_targets(encoder: torch.nn.Module) -> list[str]:
    """The CLIPAttention / CLIPMLP Linears of a text encoder."""
    return [n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and TE_LAYER.search(n)]


def inject_lora(model: torch.nn.Module, targets: list[str], *, dim: int, alpha: float, dropout: float,
                conv_targets: list[str] = (), conv_dim: int = 4, conv_alpha: float = 1.0) -> list[torch.nn.Parameter]:  # fmt: skip
    """Freeze ``model``, add LoRA layers on ``targets`` (and ``conv_targets`` at their own rank); returns
    the new trainable parameters in module order."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    names = list(targets) + list(conv_targets)
    config = LoraConfig(
        r=dim, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, init_lora_weights=True,
        rank_pattern={f"^{re.escape(n)}$": conv_dim for n in conv_targets},
        alpha_pattern={f"^{re.escape(n)}$": conv_alpha for n in conv_targets},
    )  # fmt: skip
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if ".lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


@dataclass
class LoraNetwork:
    """The models that carry LoRA layers and their trainable parameters, per model."""

    params: dict[str, list[torch.nn.Parameter]]  # "unet" | "text_encoder" | "text_encoder_2" -> params

    def all_params(self) -> list[torch.nn.Parameter]:
        return [p for ps in self.params.values() for p in ps]

    def state_module(self, models: dict[str, torch.nn.Module]) -> torch.nn.Module:
        """A module whose state dict is exactly the LoRA weights (for the resumable state)."""
        holder = torch.nn.Module()
        for model_name in self.params:
            sub = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in models[model_name].named_parameters()
                                          if ".lora_" in n})  # fmt: skip
            holder.add_module(model_name, sub)
        return holder


def build_network(components, *, preset: str, dim: int, alpha: float, dropout: float, conv_dim: int,
                  conv_alpha: float, train_unet: bool, train_te1: bool, train_te2: bool, seed: int) -> LoraNetwork:  # fmt: skip
    """Add LoRA layers to the chosen models; the base weights are frozen everywhere.

    The LoRA init draws from a generator forked from ``seed``, so a run's start is reproducible and
    leaves the global RNG untouched.
    """
    for _, model in components.models():
        model.requires_grad_(False)
    params = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if train_unet:
            linear, convs = unet_targets(components.unet, preset)
            params["unet"] = inject_lora(components.unet, linear, dim=dim, alpha=alpha, dropout=dropout,
                                         conv_targets=convs, conv_dim=conv_dim, conv_alpha=conv_alpha)  # fmt: skip
        for name, on in (("text_encoder", train_te1), ("text_encoder_2", train_te2)):
            if on:
                encoder = getattr(components, name)
                params[name] = inject_lora(encoder, text_encoder_targets(encoder), dim=dim, alpha=alpha,
                                           dropout=dropout)  # fmt: skip
    return LoraNetwork(params)
