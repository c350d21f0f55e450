"""Tiny random SDXL-architecture components for tests, built from config in about a second.

Same structure as SDXL base (``text_time`` added conditioning, cross-attention width
``d1 + d2`` from two text encoders of DIFFERENT widths, real 49,408-token CLIP tokenizers,
SDXL's noise schedule) at a width small enough for CPU tests. Weights are random:
anything built on these parts is a toy model.
"""

from __future__ import annotations

from typing import Any

from sdxl_probe.models.components import SDXLComponents
from sdxl_probe.models.configs import base_config
from sdxl_probe.models.tokenizers import SDXL_MODEL_MAX_LENGTH, build_clip_tokenizer
from sdxl_probe.text.vocab import load_vocab

TE1_WIDTH = 32
TE2_WIDTH = 64  # deliberately unlike TE1: diffusers tells the encoders apart by width
TE2_PROJECTION = 48  # unlike TE2_WIDTH, so that code mixing up hidden and pooled widths fails
TIME_EMBED_DIM = 8


def tiny_text_encoder_config(width: int, *, projection_dim: int, hidden_act: str) -> dict[str, Any]:
    """A 5-layer CLIP text config (penultimate layer exists) with the real vocabulary size."""
    return {
        "vocab_size": len(load_vocab()),
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "max_position_embeddings": SDXL_MODEL_MAX_LENGTH,
        "hidden_act": hidden_act,
        "projection_dim": projection_dim,
        # Same ids as the published SDXL configs: eos_token_id 2 selects argmax pooling.
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def tiny_unet_config() -> dict[str, Any]:
    """SDXL's block pattern (plain block first, cross-attention below) at widths (32, 64)."""
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "transformer_layers_per_block": (1, 2),
        "cross_attention_dim": TE1_WIDTH + TE2_WIDTH,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": TIME_EMBED_DIM,
        # pooled TE2 vector + 6 micro-conditioning numbers (original size, crop, target size)
        "projection_class_embeddings_input_dim": TE2_PROJECTION + 6 * TIME_EMBED_DIM,
        "norm_num_groups": 32,
    }


def tiny_vae_config() -> dict[str, Any]:
    """A two-level AutoencoderKL (downsampling x2) with SDXL's latent channels and scaling factor."""
    vae = base_config("vae")
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": vae["latent_channels"],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": 32,
        "scaling_factor": vae["scaling_factor"],
    }


def build_tiny_components(seed: int = 0) -> SDXLComponents:
    """Random tiny SDXL-architecture parts (kind ``"tiny"``), deterministic for a seed.

    TE1 is 32 wide, TE2 64 wide with a 48-wide projection; UNet cross-attention is 96 wide.
    The global torch RNG is left untouched.
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        te1 = CLIPTextModel(
            CLIPTextConfig(
                **tiny_text_encoder_config(TE1_WIDTH, projection_dim=TE1_WIDTH, hidden_act="quick_gelu")
            )
        )
        te2_config = tiny_text_encoder_config(TE2_WIDTH, projection_dim=TE2_PROJECTION, hidden_act="gelu")
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config))
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config())
    return SDXLComponents(
        tokenizer=build_clip_tokenizer("eos"),
        tokenizer_2=build_clip_tokenizer("!"),
        text_encoder=te1.eval(),
        text_encoder_2=te2.eval(),
        unet=unet.eval(),
        vae=vae.eval(),
        scheduler=EulerDiscreteScheduler.from_config(base_config("scheduler")),
        source="tiny",
        kind="tiny",
    )
