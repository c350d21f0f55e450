"""Shipped SDXL base 1.0 configs (diffusers layout), so loading never touches the network.

``sdxl_base/`` mirrors ``stabilityai/stable-diffusion-xl-base-1.0`` without weights:
``model_index.json``, each model's ``config.json``, the scheduler config and both tokenizer
folders (generated from the open_clip BPE by ``tokenizers.write_tokenizer_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SDXL_BASE_DIR = Path(__file__).parent / "sdxl_base"

# Component name -> its config file inside a diffusers folder.
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def base_config(component: str) -> dict[str, Any]:
    """The shipped SDXL base 1.0 config of one component (``unet``, ``vae``, ``text_encoder``...)."""
    return json.loads((SDXL_BASE_DIR / CONFIG_FILES[component]).read_text(encoding="utf-8"))
