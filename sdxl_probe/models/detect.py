"""Tell SDXL base checkpoints from other architectures by their key names and shapes.

Telltales (Stability/ldm single-file layouts, as diffusers' ``infer_diffusers_model_type`` uses):
SD 1.x keeps CLIP ViT-L at ``cond_stage_model.transformer``; SD 2.x keeps OpenCLIP ViT-H at
``cond_stage_model.model``; SD3 has MMDiT ``joint_blocks``; Flux has ``double_blocks`` and
``single_blocks``; the SDXL refiner has only OpenCLIP bigG at ``conditioner.embedders.0.model``
and a 1280-wide UNet context. SDXL base has both text encoders under ``conditioner.embedders``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sdxl_probe.errors import ModelLoadError
from sdxl_probe.models.ldm_names import SAI_PREFIXES

Shapes = Mapping[str, tuple[int, ...]]

EXPECTED = (
    "expected an SDXL base-architecture checkpoint with keys model.diffusion_model.* (UNet), "
    "conditioner.embedders.0.transformer.* (CLIP ViT-L), conditioner.embedders.1.model.* (OpenCLIP bigG) "
    "and first_stage_model.* (VAE), such as sd_xl_base_1.0.safetensors or a fine-tune of it"
)
_TE1_POS = SAI_PREFIXES["text_encoder"] + "text_model.embeddings.position_embedding.weight"
_TE2_POS = SAI_PREFIXES["text_encoder_2"] + "positional_embedding"


def _any(shapes: Shapes, *, start: str = "", contains: str = "") -> bool:
    return any(k.startswith(start) and contains in k for k in shapes)


def _context_width(shapes: Shapes) -> int | None:
    """UNet cross-attention context width: in-features of any ``attn2.to_k`` weight."""
    for key, shape in shapes.items():
        if key.startswith(SAI_PREFIXES["unet"]) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def _foreign_architecture(shapes: Shapes) -> str | None:
    """A description of a known non-SDXL-base layout, or None."""
    if _any(shapes, contains="double_blocks.") or _any(shapes, contains="single_blocks."):
        return "a Flux checkpoint (double_blocks/single_blocks transformer)"
    if _any(shapes, contains="joint_blocks."):
        return "an SD3/SD3.5 checkpoint (MMDiT joint_blocks)"
    if _any(shapes, start="cond_stage_model.transformer."):
        return "an SD 1.x checkpoint (CLIP ViT-L text encoder at cond_stage_model.transformer, context 768)"
    if _any(shapes, start="cond_stage_model.model."):
        return "an SD 2.x checkpoint (OpenCLIP ViT-H text encoder at cond_stage_model.model, context 1024)"
    if _any(shapes, start="conditioner.embedders.0.model.") and not _any(
        shapes, start=SAI_PREFIXES["text_encoder"]
    ):
        return (
            "an SDXL refiner checkpoint (only an OpenCLIP bigG text encoder at conditioner.embedders.0.model, "
            f"no CLIP ViT-L, UNet context width {_context_width(shapes)})"
        )
    if _any(shapes, start="lora_") or _any(shapes, contains=".lora_"):
        return "a LoRA file, not a base model"
    if (
        _any(shapes, start="down_blocks.")
        or _any(shapes, start="text_model.")
        or _any(shapes, start="encoder.down")
    ):
        return "a single diffusers/transformers component file (diffusers key names), not a full checkpoint; pass its diffusers folder instead"
    return None


def check_sdxl_base(shapes: Shapes, source: str) -> None:
    """Raise :class:`ModelLoadError` unless ``shapes`` (key -> shape) is an SDXL base-architecture single file.

    Args:
        shapes: every key of the file with its shape (from the safetensors header or a state dict).
        source: the file path, for the message.
    """
    if not shapes:
        raise ModelLoadError(f"{source}: the file holds no tensors; {EXPECTED}")
    foreign = _foreign_architecture(shapes)
    if foreign:
        raise ModelLoadError(
            f"{source}: found {foreign}; {EXPECTED}. sdxl-probe supports SDXL base models only."
        )
    missing = [f"{p}* ({name})" for name, p in SAI_PREFIXES.items() if not _any(shapes, start=p)]
    if missing:
        found = sorted({".".join(k.split(".")[:2]) for k in shapes})[:8]
        raise ModelLoadError(
            f"{source}: no keys {', '.join(missing)} (found key groups {', '.join(found)}); {EXPECTED}. "
            "A UNet-only or pruned file cannot be loaded: use the full checkpoint."
        )
    _check_context(shapes, source)


def _check_context(shapes: Shapes, source: str) -> None:
    context = _context_width(shapes)
    te1, te2 = shapes.get(_TE1_POS), shapes.get(_TE2_POS)
    if context is None or te1 is None or te2 is None:
        return
    if context != te1[-1] + te2[-1]:
        raise ModelLoadError(
            f"{source}: UNet context width is {context} but the text encoders are {te1[-1]} + {te2[-1]} wide; "
            f"{EXPECTED} (context = TE1 width + TE2 width, 768 + 1280 = 2048 on SDXL base)"
        )
