"""diffusers/transformers state-dict names -> SAI/ldm single-file names (SDXL, sgm layout).

This is the inverse of diffusers' ``loaders/single_file_utils.py`` conversion
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), written for any block count and ``layers_per_block`` so it
serves both the real SDXL base shapes and the tiny test parts. Layout facts
(``scripts/convert_diffusers_to_original_sdxl.py`` in diffusers, Stability's ``sgm``):

- UNet ``model.diffusion_model.``: ``input_blocks.{1 + i*(L+1) + j}.{0 resnet | 1 attention}``,
  downsamplers at ``input_blocks.{(i+1)*(L+1)}.0.op``, ``middle_block.{0,1,2}``,
  ``output_blocks.{i*(L+1) + j}.{0 | 1}``, upsampler at ``.1`` or ``.2`` (after an attention).
- VAE ``first_stage_model.``: ``encoder.down.i.block.j``, ``decoder.up.{n-1-i}.block.j``,
  ``mid.block_{1,2}``, ``mid.attn_1`` with 1x1-conv q/k/v/proj_out weights.
- TE1 ``conditioner.embedders.0.transformer.text_model.`` + HF CLIP names.
- TE2 ``conditioner.embedders.1.model.`` in open_clip names: fused ``attn.in_proj_weight`` (q;k;v),
  ``text_projection`` stored transposed, plus ``logit_scale``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Component -> key prefix in a SAI/ldm SDXL single file.
SAI_PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}
# Keys a SAI file carries that are not weights of the diffusers/transformers modules.
TE1_POSITION_IDS = "text_model.embeddings.position_ids"
TE2_LOGIT_SCALE = "logit_scale"
# open_clip initialises logit_scale to log(1 / 0.07); SDXL never uses it (no image tower).
_LOGIT_SCALE_INIT = math.log(1 / 0.07)

Getter = Callable[[str], "torch.Tensor"]


@dataclass(frozen=True)
class LdmEntry:
    """One tensor of a SAI file: its key and how to make it from a module's state dict."""

    key: str  # full SAI key
    component: str  # "unet" | "vae" | "text_encoder" | "text_encoder_2"
    make: Callable[[Getter], torch.Tensor]  # get(diffusers key) -> tensor  ->  SAI tensor


def _copy(src: str) -> Callable[[Getter], torch.Tensor]:
    return lambda get: get(src)


def _conv1x1(src: str) -> Callable[[Getter], torch.Tensor]:
    return lambda get: get(src)[:, :, None, None] if get(src).ndim == 2 else get(src)


def _prefix_rename(key: str, prefixes: list[tuple[str, str]]) -> tuple[str, str] | None:
    """(ldm key, matched diffusers prefix) using the longest matching diffusers prefix."""
    best = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None:
        return None
    return best[1] + key[len(best[0]) :], best[0]


_UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, ldm prefix, is_resnet) for every block of a UNet2DConditionModel config."""
    per = config["layers_per_block"] + 1
    n = len(config["block_out_channels"])
    out: list[tuple[str, str, bool]] = []
    for i in range(len(config["down_block_types"])):
        for j in range(per - 1):
            out.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * per + j}.0.", True))
            out.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * per + j}.1.", False))
        if i < n - 1:
            out.append(
                (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op.", False)
            )
    for j, ldm in ((0, 0), (1, 2)):
        out.append((f"mid_block.resnets.{j}.", f"middle_block.{ldm}.", True))
    out.append(("mid_block.attentions.0.", "middle_block.1.", False))
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(per):
            out.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per + j}.0.", True))
            out.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per + j}.1.", False))
        if i < n - 1:
            slot = 2 if kind.startswith("CrossAttn") else 1
            out.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per + per - 1}.{slot}.", False))
    return out


def unet_entries(keys: list[str], config: Mapping[str, Any]) -> list[LdmEntry]:
    """SAI entries for a diffusers ``UNet2DConditionModel`` state dict."""
    blocks = _unet_prefixes(config)
    resnet = {d for d, _, r in blocks if r}
    pairs = [(d, ldm) for d, ldm, _ in blocks] + [(d + ".", ldm + ".") for d, ldm in _UNET_TOP.items()]
    entries = []
    for key in keys:
        renamed = _prefix_rename(key, pairs)
        if renamed is None:
            raise ValueError(f"UNet key {key!r} has no SAI/ldm name")
        ldm, prefix = renamed
        if prefix in resnet:  # ldm = <ldm block prefix> + <renamed layer inside the resnet>
            ldm = ldm.removesuffix(key[len(prefix) :]) + _rename_first(key[len(prefix) :], _UNET_RESNET)
        entries.append(LdmEntry(SAI_PREFIXES["unet"] + ldm, "unet", _copy(key)))
    return entries


def _rename_first(rest: str, table: list[tuple[str, str]]) -> str:
    for old, new in table:
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _vae_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    n = len(config["block_out_channels"])
    out = []
    for i in range(n):
        out.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        out.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        out.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))
        out.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        out += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
        out.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
        out.append((f"{part}.conv_norm_out.", f"{part}.norm_out."))
    return out


def vae_entries(keys: list[str], config: Mapping[str, Any]) -> list[LdmEntry]:
    """SAI entries for a diffusers ``AutoencoderKL`` state dict (attention weights as 1x1 convs)."""
    pairs = _vae_prefixes(config)
    entries = []
    for key in keys:
        renamed = _prefix_rename(key, pairs)
        ldm, prefix = renamed if renamed is not None else (key, "")
        make = _copy(key)
        if prefix.endswith("attentions.0."):
            ldm = ldm.removesuffix(key[len(prefix) :]) + _rename_first(key[len(prefix) :], _VAE_ATTN)
            make = _conv1x1(key) if key.endswith(".weight") and "group_norm" not in key else make
        ldm = ldm.replace("conv_shortcut", "nin_shortcut")
        entries.append(LdmEntry(SAI_PREFIXES["vae"] + ldm, "vae", make))
    return entries


def te1_entries(keys: list[str], max_positions: int) -> list[LdmEntry]:
    """SAI entries for TE1 (HF ``CLIPTextModel``; flattened names in transformers >= 5.6)."""
    import torch

    prefix = SAI_PREFIXES["text_encoder"]
    entries = [
        LdmEntry(prefix + "text_model." + k.removeprefix("text_model."), "text_encoder", _copy(k))
        for k in keys
    ]
    positions = LdmEntry(
        prefix + TE1_POSITION_IDS, "text_encoder", lambda get: torch.arange(max_positions)[None]
    )
    return entries + [positions]


_TE2_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_TE2_LAYER = [
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]


def te2_entries(keys: list[str]) -> list[LdmEntry]:
    """SAI (open_clip) entries for TE2 (HF ``CLIPTextModelWithProjection``)."""
    import torch

    prefix = SAI_PREFIXES["text_encoder_2"]
    entries = []
    for key in keys:
        if key in _TE2_TOP:
            entries.append(LdmEntry(prefix + _TE2_TOP[key], "text_encoder_2", _copy(key)))
        elif key == "text_projection.weight":
            entries.append(
                LdmEntry(
                    prefix + "text_projection", "text_encoder_2", lambda get: get("text_projection.weight").T
                )
            )
        elif ".self_attn.q_proj." in key:
            entries.append(_fused_qkv(prefix, key))
        elif ".self_attn.k_proj." not in key and ".self_attn.v_proj." not in key:
            layer, rest = _split_layer(key)
            entries.append(
                LdmEntry(
                    f"{prefix}transformer.resblocks.{layer}.{_rename_first(rest, _TE2_LAYER)}",
                    "text_encoder_2",
                    _copy(key),
                )
            )

    def scale(get: Getter) -> torch.Tensor:
        return torch.full((), _LOGIT_SCALE_INIT, dtype=get("text_model.final_layer_norm.weight").dtype)

    return entries + [LdmEntry(prefix + TE2_LOGIT_SCALE, "text_encoder_2", scale)]


def _split_layer(key: str) -> tuple[int, str]:
    """``text_model.encoder.layers.7.mlp.fc1.weight`` -> (7, ``mlp.fc1.weight``)."""
    parts = key.removeprefix("text_model.encoder.layers.").split(".", 1)
    return int(parts[0]), parts[1]


def _fused_qkv(prefix: str, q_key: str) -> LdmEntry:
    import torch

    layer, rest = _split_layer(q_key)
    kind = rest.rsplit(".", 1)[1]  # weight | bias
    srcs = [q_key.replace(".q_proj.", f".{p}_proj.") for p in "qkv"]
    return LdmEntry(
        f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}",
        "text_encoder_2",
        lambda get: torch.cat([get(s) for s in srcs], dim=0),
    )


def sai_entries(
    state_keys: Mapping[str, list[str]], configs: Mapping[str, Mapping[str, Any]]
) -> list[LdmEntry]:
    """All SAI entries for the four modules' state-dict keys (``state_keys[name]``) and their configs."""
    return (
        te1_entries(state_keys["text_encoder"], configs["text_encoder"]["max_position_embeddings"])
        + te2_entries(state_keys["text_encoder_2"])
        + unet_entries(state_keys["unet"], configs["unet"])
        + vae_entries(state_keys["vae"], configs["vae"])
    )
