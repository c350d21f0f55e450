"""The SDXL parts every probe and the trainer work with, in one small object."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Model names in the order they are listed, saved and hashed.
MODEL_NAMES = ("text_encoder", "text_encoder_2", "unet", "vae")
TOY_KINDS = ("toy", "tiny")
# Tensors up to this many elements are hashed whole; larger ones by a strided sample of this many.
_HASH_SAMPLE = 65536


@dataclass
class SDXLComponents:
    """Both tokenizers, both text encoders, UNet, VAE and noise scheduler of one SDXL model.

    Attributes:
        tokenizer: CLIP tokenizer 1, pads with EOS (49407).
        tokenizer_2: CLIP tokenizer 2, pads with ``!`` (id 0).
        text_encoder: TE1, ``CLIPTextModel`` (768 wide on real SDXL).
        text_encoder_2: TE2, ``CLIPTextModelWithProjection`` (1280 wide, projection 1280 on real SDXL).
        unet: ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``.
        vae: ``AutoencoderKL``.
        scheduler: the model's training noise scheduler (from its scheduler config).
        source: the path or preset name the parts came from.
        kind: ``"sdxl"`` (a real-size SDXL model), ``"toy"`` (the toy preset) or ``"tiny"`` (test parts).
    """

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: SchedulerMixin
    source: str
    kind: str

    @property
    def is_toy(self) -> bool:
        """True for the toy preset and tiny test parts: reports must then say "toy model"."""
        return self.kind in TOY_KINDS

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side: ``2 ** (len(vae.config.block_out_channels) - 1)`` (8 on SDXL)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def models(self) -> Iterator[tuple[str, torch.nn.Module]]:
        """(name, module) for the four networks, in :data:`MODEL_NAMES` order."""
        for name in MODEL_NAMES:
            yield name, getattr(self, name)

    def to(self, device: Any = None, dtype: Any = None) -> SDXLComponents:
        """Move and/or cast the four networks in place; returns ``self`` for chaining."""
        for _, model in self.models():
            model.to(device=device, dtype=dtype)
        return self

    def model_hash(self) -> str:
        """A stable 16-hex-digit hash of the weights, for caches keyed on the model.

        Hashes every state-dict entry's name, dtype and shape, and its values: whole for
        tensors up to 65,536 elements, else a strided sample of 65,536 elements (a fine-tune
        moves essentially every weight, so a sample is enough and keeps SDXL under a second).
        """
        digest = hashlib.sha256()
        for name, model in self.models():
            for key, tensor in model.state_dict().items():
                digest.update(f"{name}.{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
                digest.update(_sample_bytes(tensor))
        return digest.hexdigest()[:16]


def _sample_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    flat = tensor.detach().reshape(-1)
    if flat.numel() > _HASH_SAMPLE:
        flat = flat[:: flat.numel() // _HASH_SAMPLE][:_HASH_SAMPLE]
    flat = flat.contiguous().cpu()
    return flat.view(torch.uint8).numpy().tobytes()
