"""The attention check of ``toy evaluate``: does an object word's cross-attention cover its object?

The simplest capture (issue #3): render training-split scenes, noise their latents to one
mid timestep, run the UNet once with the tags caption, and read the ``attn2`` probabilities
of the object's shape word through :func:`sdxl_probe.attention.capture.capture_cross_attention`
(head mean, every cross-attention layer including the mid block). Each layer's map is
upsampled to image size, the layers are averaged, min-max normalized and thresholded at 0.4,
and compared with the object's ground-truth mask by IoU. The shuffled baseline scores the
same map against the mask of another image's object.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from sdxl_probe.toy.world import caption_scene, render_scene, sample_scene

THRESHOLD = 0.4
TIMESTEP = 400


def word_positions(tokenized, layout, start: int, end: int) -> list[int]:
    """Context positions of the caption tokens overlapping the character span [start, end)."""
    return [
        pos for tok, pos in zip(tokenized.tokens, layout.positions, strict=True)
        if pos is not None and tok.start < end and tok.end > start
    ]


def object_spans(caption: str, scene) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Per object: ((colour start, end), (shape start, end)) in a caption naming objects in order."""
    spans, cursor = [], 0
    for obj in scene.objects:
        phrase = f"{obj.colour} {obj.shape}"
        i = caption.index(phrase, cursor)
        j = i + len(obj.colour) + 1
        spans.append(((i, i + len(obj.colour)), (j, j + len(obj.shape))))
        cursor = j + len(obj.shape)
    return spans


def layer_mean_maps(recorder, size: tuple[int, int]) -> torch.Tensor:
    """(B, T, H, W): every recorded layer's head-mean map upsampled to ``size``, averaged over layers."""
    maps = []
    for name, total in recorder.sums.items():
        m = (total / recorder.calls[name]).mean(dim=1)  # (B, T, h, w)
        maps.append(torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False))
    return torch.stack(maps).mean(dim=0)


def iou(heat: np.ndarray, mask: np.ndarray, threshold: float = THRESHOLD) -> float:
    """IoU of ``heat (H, W)`` min-max normalized and thresholded, with ``mask (H, W)`` bool."""
    lo, hi = heat.min(), heat.max()
    pred = (heat - lo) / max(hi - lo, 1e-12) >= threshold
    union = (pred | mask).sum()
    return float((pred & mask).sum() / union) if union else 0.0


def _noised_latents(components, images: np.ndarray, seed: int, timestep: int) -> torch.Tensor:
    from diffusers import DDPMScheduler

    vae = components.vae
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W)
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    ddpm = DDPMScheduler.from_config(components.scheduler.config)
    return ddpm.add_noise(latents, noise, torch.full((len(latents),), timestep))


@torch.no_grad()
def attention_maps(components, scenes, captions: list[str], *, seed: int, timestep: int = TIMESTEP):
    """Rendered masks, layer-averaged maps (B, T, H, W) and the encoded captions, for ``scenes``."""
    from sdxl_probe.attention.capture import capture_cross_attention
    from sdxl_probe.generate import time_ids
    from sdxl_probe.text.encode import encode_captions

    rendered = [render_scene(s, components.unet.config.sample_size * components.vae_scale_factor) for s in scenes]
    images = np.stack([r[0] for r in rendered])
    noisy = _noised_latents(components, images, seed, timestep)
    enc = encode_captions(components, captions)
    unet = components.unet
    cond = {"text_embeds": enc.pooled.to(unet.dtype), "time_ids": time_ids(len(scenes), *images.shape[1:3]).to(unet.dtype)}
    with capture_cross_attention(unet, include_mid=True, latent_hw=tuple(noisy.shape[-2:])) as rec:
        unet(noisy.to(unet.dtype), timestep, enc.context.to(unet.dtype), added_cond_kwargs=cond)
    return [r[1] for r in rendered], layer_mean_maps(rec, images.shape[1:3]).float().numpy(), enc


def attention_iou(components, *, n_images: int = 64, seed: int = 0, timestep: int = TIMESTEP) -> dict[str, float]:
    """Mean IoU of shape-word (and colour-word) maps with their objects' masks, and the shuffled baseline."""
    rng = random.Random(f"toy-attention-{seed}")
    scenes = [sample_scene(rng, n_objects=rng.choice([1, 2]), split="train") for _ in range(n_images)]
    captions = [caption_scene(s, "tags", rng) for s in scenes]
    masks, maps, enc = attention_maps(components, scenes, captions, seed=seed, timestep=timestep)
    shape_ious, colour_ious, shuffled = [], [], []
    for b, scene in enumerate(scenes):
        for k, (colour_span, shape_span) in enumerate(object_spans(captions[b], scene)):
            for span, out in ((shape_span, shape_ious), (colour_span, colour_ious)):
                pos = word_positions(enc.captions[b], enc.layouts_te1[b], *span)
                heat = maps[b, pos].mean(axis=0)
                out.append(iou(heat, masks[b][k]))
                if out is shape_ious:
                    shuffled.append(iou(heat, masks[(b + 1) % n_images][0]))
    return {
        "iou": float(np.mean(shape_ious)),
        "iou_shuffled": float(np.mean(shuffled)),
        "iou_colour_word": float(np.mean(colour_ious)),
        "n_images": n_images,
        "n_objects": len(shape_ious),
        "timestep": timestep,
        "threshold": THRESHOLD,
    }
