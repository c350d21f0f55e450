"""The attention check of ``toy evaluate``: does an object word's cross-attention cover its object?

The simplest capture (issue #3), through the attention probe's inspect mode
(:func:`sdxl_probe.probes.attention.core.inspect`, DAAM's aggregation: ``attn2`` only, mid block
excluded, head and layer mean, bicubic upsampling): render training-split scenes, noise
their latents to one mid timestep with a fixed seed, run the UNet once with the tags
caption, and score each shape word's map (min-max normalized, thresholded at DAAM's
tau = 0.4) against its object's ground-truth mask by IoU. The shuffled baseline scores the
same map against the mask of another image's object. Colour words are scored too (reported,
no bar).
"""

from __future__ import annotations

import random

import numpy as np

from sdxl_probe.probes.attention.metrics import DAAM_TAU
from sdxl_probe.toy.world import caption_scene, render_scene, sample_scene

TIMESTEP = 400
BATCH = 32  # images per UNet pass


def word_masks(scene, masks: np.ndarray, attribute: str) -> dict[str, np.ndarray]:
    """Word -> union of the masks ``(H, W)`` of the scene's objects whose ``attribute`` is that word."""
    out: dict[str, np.ndarray] = {}
    for obj, mask in zip(scene.objects, masks, strict=True):
        word = getattr(obj, attribute)
        out[word] = out.get(word, np.zeros_like(mask)) | mask
    return out


def attention_iou(components, *, n_images: int = 64, seed: int = 0, timestep: int = TIMESTEP) -> dict[str, float]:
    """Mean IoU of shape-word (and colour-word) maps with their objects' masks, and the shuffled baseline."""
    from sdxl_probe.probes.attention.core import inspect, mask_ious

    rng = random.Random(f"toy-attention-{seed}")
    scenes = [sample_scene(rng, n_objects=rng.choice([1, 2]), split="train") for _ in range(n_images)]
    captions = [caption_scene(s, "tags", rng) for s in scenes]
    side = components.unet.config.sample_size * components.vae_scale_factor
    rendered = [render_scene(s, side) for s in scenes]
    images = np.stack([im for im, _ in rendered])  # (N, H, W, 3) uint8
    shape_ious, colour_ious, shuffled = [], [], []
    for start in range(0, n_images, BATCH):
        part = slice(start, start + BATCH)
        result = inspect(components, images[part], captions[part], timesteps=(timestep,), seed=seed)
        for b, i in enumerate(range(start, min(start + BATCH, n_images))):
            masks = rendered[i][1]
            shapes = word_masks(scenes[i], masks, "shape")
            other = rendered[(i + 1) % n_images][1][0]  # another image's first object
            shape_ious += mask_ious(result, 0, b, shapes).values()
            shuffled += mask_ious(result, 0, b, {w: other for w in shapes}).values()
            colour_ious += mask_ious(result, 0, b, word_masks(scenes[i], masks, "colour")).values()
    return {
        "iou": float(np.mean(shape_ious)),
        "iou_shuffled": float(np.mean(shuffled)),
        "iou_colour_word": float(np.mean(colour_ious)),
        "n_images": n_images,
        "n_words": len(shape_ious),
        "timestep": timestep,
        "threshold": DAAM_TAU,
        "aggregation": "DAAM default (attn2, mid block excluded, head and layer mean, bicubic)",
    }
