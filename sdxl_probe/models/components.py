"""The SDXL parts every probe and the trainer work with, in one small object."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

# Model names in the order they are listed, saved and hashed.
MODEL_NAMES = ("text_encoder", "text_encoder_2", "unet", "vae")
TOY_KINDS = ("toy", "tiny")


@dataclass
class SDXLComponents:
    """Both tokenizers, both text encoders, UNet, VAE and noise scheduler of one SDXL model.

    Attributes:
        tokenizer: CLIP tokenizer 1, pads with EOS (49407).
        tokenizer_2: CLIP tokenizer 2, pads with ``!`` (id 0).
        text_encoder: TE1, ``CLIPTextModel`` (768 wide on real SDXL).
        text_encoder_2: TE2, ``CLIPTextModelWithProjection`` (1280 wide, projection 1280 on real SDXL).
        unet: ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``; None when not loaded
            (``load_components(parts=...)``, e.g. ``embed`` loads the text encoders alone).
        vae: ``AutoencoderKL``; None when not loaded.
        scheduler: the model's training noise scheduler (from its scheduler config).
        source: the path or preset name the parts came from.
        kind: ``"sdxl"`` (a real-size SDXL model), ``"toy"`` (the toy preset) or ``"tiny"`` (test parts).
        allow_pickle: the parts came from a pickle the user allowed (the hash may read it again).
        precision: the device and dtypes the parts were loaded with; kept when networks are released.
    """

    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    scheduler: SchedulerMixin
    source: str
    kind: str
    allow_pickle: bool = False
    precision: dict[str, str] | None = None  # {device, dtype, vae_dtype} as loaded (pipeline.device.load_model)
    _hash: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_toy(self) -> bool:
        """True for the toy preset and tiny test parts: reports must then say "toy model"."""
        return self.kind in TOY_KINDS

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side: ``2 ** (len(vae.config.block_out_channels) - 1)`` (8 on SDXL)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def models(self) -> Iterator[tuple[str, torch.nn.Module]]:
        """(name, module) for the loaded networks, in :data:`MODEL_NAMES` order."""
        for name in MODEL_NAMES:
            if getattr(self, name) is not None:
                yield name, getattr(self, name)

    def to(self, device: Any = None, dtype: Any = None) -> SDXLComponents:
        """Move and/or cast the four networks in place; returns ``self`` for chaining."""
        for _, model in self.models():
            model.to(device=device, dtype=dtype)
        return self

    def remember_hash(self, value: str) -> None:
        """Keep ``model_hash()``'s value, computed from the same source before the weights loaded."""
        self._hash = value

    def model_hash(self) -> str:
        """A 16-hex-digit identity of the stored weights, for caches keyed on the model.

        Read from the source's stored tensors when the parts came from a file, folder or preset
        (so networks that were not loaded count too), else from the modules in memory; the same
        for a single file and the folder saved from it, whatever the load dtype
        (:mod:`sdxl_probe.models.identity`).
        """
        from sdxl_probe.models.identity import modules_hash, source_hash
        from sdxl_probe.models.load import PRESETS

        if self._hash is not None:
            return self._hash
        if self.source in PRESETS or Path(self.source).expanduser().exists():
            self._hash = source_hash(self.source, allow_pickle=self.allow_pickle)  # stored: read once
            return self._hash
        return modules_hash(self.models())  # in memory: may change, so never kept
