"""Training data of the toy-model recipe: rendered scenes and their token ids.

Everything is a pure function of a seed (and the step), so a resumed run draws exactly the
batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from sdxl_probe.toy.world import Scene, caption_scene, render_scene, sample_scene

# Caption styles drawn for a training sample, with their probabilities. "long" is cut to the
# first chunk (its object tags come first), as sd-scripts does with max_token_length unset.
STYLE_WEIGHTS: dict[str, float] = {"tags": 0.35, "sentence": 0.35, "mixed": 0.2, "long": 0.1}
DETAILS_RATE = 0.3  # share of captions that also name each object's size and position


@dataclass
class ToyImages:
    """Rendered training scenes.

    Attributes:
        scenes: the N scenes (ground truth).
        pixels: (N, 3, H, W) float32 in [-1, 1], the VAE's input range.
    """

    scenes: list[Scene]
    pixels: torch.Tensor


def render_training_set(n: int, seed: int, size: int) -> ToyImages:
    """Draw ``n`` train-split scenes (1-3 objects, no held-out combos) and render them at ``size``."""
    rng = random.Random(f"toy-scenes-{seed}")
    scenes = [sample_scene(rng, split="train") for _ in range(n)]
    images = np.stack([render_scene(s, size)[0] for s in scenes])  # (N, H, W, 3) uint8
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return ToyImages(scenes=scenes, pixels=pixels)


def step_rng(seed: int, phase: str, step: int) -> tuple[random.Random, torch.Generator]:
    """The Python and torch generators of one training step (resume-exact by construction)."""
    key = f"{seed}-{phase}-{step}"
    digest = hashlib.sha256(key.encode()).digest()  # every byte of the key changes the seed
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return random.Random(key), gen


def draw_caption(scene: Scene, rng: random.Random, dropout: float) -> str:
    """A caption of ``scene`` in a random style; ``""`` with probability ``dropout`` (for CFG)."""
    if rng.random() < dropout:
        return ""
    style = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0]
    return caption_scene(scene, style, rng, details=rng.random() < DETAILS_RATE)
