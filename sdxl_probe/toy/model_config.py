"""Architecture of the toy model: the SDXL family, scaled down to 64x64 images.

Every part is the real diffusers/transformers class SDXL uses, only narrower:

- ``AutoencoderKL`` with 3 stages (two downsamples): 64x64x3 images <-> 16x16x4 latents.
- ``CLIPTextModel`` (TE1) and ``CLIPTextModelWithProjection`` (TE2) of different widths,
  over the real CLIP BPE vocabulary (49,408 ids); their penultimate states are
  concatenated as the UNet context, and TE2's projected pooled vector is ``text_embeds``.
- ``UNet2DConditionModel`` with SDXL's block types and ``addition_embed_type="text_time"``.
  As in SDXL, the first level (16x16 here) has no attention; cross-attention runs at 8x8
  (two transformer layers, down and up) and in the mid block at 4x4, while the 4x4 level
  itself is a plain ``DownBlock2D``. Measured on the first 16x16-latent model (attention at
  every level): 16x16 cross-attention maps followed the noise of the input and 4x4 maps were
  too coarse (an ideal 4x4 map of a toy object scores IoU 0.18), while the 8x8 maps alone
  scored 0.42; here only those carry per-word maps (DAAM excludes the mid block).
  ``unet_down_blocks`` selects the pattern; the tests' ``TINY`` keeps SDXL's
  (DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D).
- SDXL's DDPM schedule (0.00085, 0.012, scaled_linear, 1000 steps, epsilon).

Sizes are in ``ToyArchitecture``; the builders turn it into config dicts, so the
shipped weights, the tests' tiny variant and the single-file round trip share one source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VOCAB_SIZE = 49408  # the real CLIP BPE vocabulary (sdxl_probe.text.vocab)
BOS_ID, EOS_ID = 49406, 49407
N_TIME_IDS = 6  # SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)


@dataclass(frozen=True)
class TextEncoderSize:
    """One CLIP text tower: ``hidden`` wide, ``layers`` deep, ``heads`` heads, MLP ``ffn`` wide."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    projection: int | None = None  # TE2 only: width of text_projection (pooled vector)


@dataclass(frozen=True)
class ToyArchitecture:
    """The toy model's sizes. Defaults are the shipped toy model.

    ``image_size`` is the native pixel size; the latent size follows from the VAE's
    number of stages (``2 ** (len(vae_channels) - 1)``), never from a constant.
    """

    image_size: int = 64
    max_length: int = 77  # CLIP model_max_length of both tokenizers
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_groups: int = 8
    latent_channels: int = 4
    te1: TextEncoderSize = field(default_factory=lambda: TextEncoderSize(64, 3, 2, 256))
    te2: TextEncoderSize = field(default_factory=lambda: TextEncoderSize(96, 3, 3, 384, projection=96))
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_down_blocks: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    unet_heads: tuple[int, ...] = (1, 2, 4)  # diffusers' attention_head_dim = number of heads, as in SDXL
    unet_transformer_layers: tuple[int, ...] = (1, 2, 1)  # the last also sets the mid block's depth
    unet_layers_per_block: int = 1
    unet_groups: int = 16
    time_embed_dim: int = 32  # addition_time_embed_dim: per micro-conditioning scalar

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    @property
    def context_dim(self) -> int:
        return self.te1.hidden + self.te2.hidden


TOY = ToyArchitecture()
# A few-second variant for tests of the pretraining recipe (resume, atomic save).
TINY = ToyArchitecture(
    image_size=32,
    vae_channels=(8, 16),
    vae_groups=4,
    te1=TextEncoderSize(16, 2, 2, 32),
    te2=TextEncoderSize(32, 2, 2, 64, projection=32),
    unet_channels=(16, 16, 32),
    unet_down_blocks=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    unet_heads=(1, 1, 2),
    unet_transformer_layers=(1, 1, 1),
    unet_groups=8,
    time_embed_dim=8,
)


def vae_config(arch: ToyArchitecture) -> dict[str, Any]:
    """AutoencoderKL config: ``len(vae_channels)`` stages, mid attention kept as in SDXL's VAE."""
    n = len(arch.vae_channels)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.vae_groups,
        sample_size=arch.image_size,
        scaling_factor=1.0,  # replaced by the measured 1/std of the latents after VAE training
        force_upcast=False,
    )


def text_encoder_config(size: TextEncoderSize, arch: ToyArchitecture) -> dict[str, Any]:
    """CLIPTextConfig kwargs. ``eos_token_id`` 49407 makes the pooled vector sit at the first EOS."""
    cfg = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=size.hidden,
        intermediate_size=size.ffn,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        max_position_embeddings=arch.max_length,
        hidden_act="quick_gelu" if size.projection is None else "gelu",  # as CLIP-L / OpenCLIP bigG
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=1,
    )
    if size.projection is not None:
        cfg["projection_dim"] = size.projection
    return cfg


def up_block_types(down_blocks: tuple[str, ...]) -> tuple[str, ...]:
    """The decoder side mirrors the encoder: ``CrossAttnDownBlock2D`` -> ``CrossAttnUpBlock2D`` in reverse."""
    return tuple(b.replace("Down", "Up") for b in reversed(down_blocks))


def unet_config(arch: ToyArchitecture) -> dict[str, Any]:
    """UNet2DConditionModel config with SDXL's block types and text_time conditioning.

    ``projection_class_embeddings_input_dim`` = pooled width + 6 * ``time_embed_dim``,
    as SDXL's 2816 = 1280 + 6 * 256.
    """
    return dict(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        down_block_types=arch.unet_down_blocks,
        up_block_types=up_block_types(arch.unet_down_blocks),
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        attention_head_dim=arch.unet_heads,
        transformer_layers_per_block=arch.unet_transformer_layers,
        cross_attention_dim=arch.context_dim,
        norm_num_groups=arch.unet_groups,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=arch.time_embed_dim,
        projection_class_embeddings_input_dim=arch.te2.projection + N_TIME_IDS * arch.time_embed_dim,
    )


def scheduler_config() -> dict[str, Any]:
    """SDXL's training schedule (DDPM, scaled_linear 0.00085..0.012, 1000 steps, epsilon)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_vae(arch: ToyArchitecture):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config(arch))


def build_text_encoders(arch: ToyArchitecture):
    """(TE1, TE2): CLIPTextModel and CLIPTextModelWithProjection from config, random init."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    te1 = CLIPTextModel(CLIPTextConfig(**text_encoder_config(arch.te1, arch)))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_encoder_config(arch.te2, arch)))
    return te1, te2


def build_unet(arch: ToyArchitecture):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(arch))


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config())
