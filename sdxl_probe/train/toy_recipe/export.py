"""Write a trained toy model as a diffusers ``StableDiffusionXLPipeline`` folder in fp16.

Layout (as ``stabilityai/stable-diffusion-xl-base-1.0``): ``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``scheduler/`` (Euler, SDXL's default,
configured with the training DDPM betas), and ``tokenizer/``, ``tokenizer_2/`` when asked.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from sdxl_probe.io import write_json
from sdxl_probe.toy import model_config as mc

MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": False,  # trained with caption dropout to the encoded "" prompt
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def export_diffusers(
    folder: Path, *, vae, text_encoder, text_encoder_2, unet, kind: str = "toy", tokenizers: bool = True
) -> Path:
    """Save the four networks (fp16 safetensors), scheduler, tokenizers and ``model_index.json``.

    ``kind`` ("toy" or "tiny") is recorded under the loader's ``_sdxl_probe_kind`` key so that
    ``load_components`` marks the model as a toy (reports must then say "toy model").
    """
    import diffusers
    from diffusers import EulerDiscreteScheduler

    from sdxl_probe.models.folder import KIND_KEY

    folder = Path(folder)
    for name, model in (("vae", vae), ("text_encoder", text_encoder), ("text_encoder_2", text_encoder_2),
                        ("unet", unet)):
        half = copy.deepcopy(model).to(torch.float16)
        half.save_pretrained(folder / name, safe_serialization=True)
    EulerDiscreteScheduler(**{k: v for k, v in mc.scheduler_config().items() if k != "clip_sample"}).save_pretrained(
        folder / "scheduler"
    )
    if tokenizers:
        from sdxl_probe.models.tokenizers import write_tokenizer_folder

        write_tokenizer_folder(folder / "tokenizer", "eos", text_encoder.config.max_position_embeddings)
        write_tokenizer_folder(folder / "tokenizer_2", "!", text_encoder_2.config.max_position_embeddings)
    write_json(folder / "model_index.json", {**MODEL_INDEX, "_diffusers_version": diffusers.__version__, KIND_KEY: kind})
    return folder
