"""Attention probe: per-token and per-word cross-attention maps (DAAM-style) for SDXL.

Two modes share one aggregation (``attention.heatmaps``):
- generate: prompts -> images, maps summed over the denoising steps (conditional half);
- inspect: training images + captions noised at chosen timesteps with a fixed seed, one
  UNet pass per timestep; with a LoRA, base and LoRA maps of the same noise side by side.

Words come from the caption's token bookkeeping (``sdxl_probe.text``), so every position
of a 77/152/227-token context, later chunks included, gets a map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.pipeline.checks import check_image_size
from sdxl_probe.pipeline.device import precision_of
from sdxl_probe.pipeline.lora import loras_loaded
from sdxl_probe.pipeline.sampling import release_parts
from sdxl_probe.pipeline.vae import encode_images
from sdxl_probe.probes.attention import heatmaps, metrics
from sdxl_probe.probes.attention.capture import AttentionRecorder
from sdxl_probe.probes.attention.result import AttentionResult
from sdxl_probe.probes.attention.runs import CaptureOptions, noised_forward, sample_images

REN_LAST_STEPS = 10  # Ren et al. D mode: mean entropy over the last 10 steps


def generate(
    components: Any, prompts: list[str], *, height: int | None = None, width: int | None = None,
    steps: int = 25, guidance: float = 5.0, seed: int = 0, max_token_length: int | None = None,
    options: CaptureOptions = CaptureOptions(), release: bool = False,
    loras: Sequence[tuple[str | Path, float]] = (),
) -> AttentionResult:  # fmt: skip
    """Generate images for ``prompts`` and record their cross-attention maps.

    Args:
        components: SDXLComponents.
        prompts: B prompts, generated as one batch.
        height, width: pixels; default ``unet.config.sample_size * vae_scale_factor``.
        steps, guidance, seed: sampler settings (``sdxl_probe.pipeline.sampling``; CFG in one doubled
            batch, prompt i seeded with ``seed + i``).
        max_token_length: None (75), 150 or 225, sd-scripts chunking.
        options: layer, head, step-window and resolution selection.
        release: drop the text encoders and UNet from ``components`` after their last use
            (``generate_images(release=True)``), for one-shot commands.
        loras: (LoRA file, weight) pairs (kohya/SGM/diffusers), applied together while encoding and
            sampling (``sdxl_probe.pipeline.lora.loras_loaded``).

    Returns:
        An AttentionResult with one condition, "generate".
    """
    height, width = _image_size(components, height, width)
    with loras_loaded(components, loras):
        enc = _encode(components, prompts, max_token_length)
        with options.capture(components.unet, cfg_doubled=guidance != 1.0) as rec:
            images = sample_images(components, prompts, height=height, width=width, steps=steps, guidance=guidance,
                                   seed=seed, max_token_length=max_token_length, release=release)  # fmt: skip
    maps, mass = _aggregate(rec, options.size)
    lora_settings = {"loras": _lora_list(loras)} if loras else {}
    settings = _settings(options, mode="generate", height=height, width=width, steps=steps, guidance=guidance,
                         seed=seed, max_token_length=max_token_length, timesteps=list(rec.timesteps.values()),
                         **lora_settings)  # fmt: skip
    result = _result(components, "generate", enc, labels=["generate"], maps=maps[None], mass=mass[None],
                     images=images[None], settings=settings)  # fmt: skip
    result.metrics["ren"] = [_ren_entropies(rec, b) for b in range(len(prompts))]
    return result


def inspect(
    components: Any, images: np.ndarray, captions: list[str], *, timesteps: tuple[int, ...] = (300, 500),
    seed: int = 0, max_token_length: int | None = None, options: CaptureOptions = CaptureOptions(),
    loras: Sequence[tuple[str | Path, float]] = (), release: bool = False,
) -> AttentionResult:  # fmt: skip
    """Maps of training images and their captions, noised at each timestep with a fixed seed.

    Args:
        components: SDXLComponents.
        images: (B, H, W, 3) uint8 training images (H, W multiples of ``vae_scale_factor``).
        captions: B captions.
        timesteps: DDPM timesteps to noise to (0..num_train_timesteps-1).
        seed: seed of the noise, shared by every timestep and by base and LoRA.
        max_token_length: None (75), 150 or 225.
        options: layer, head and resolution selection (step windows do not apply: one pass).
        loras: (LoRA file, weight) pairs, applied together; they add a "t=T/lora" condition after
            each "t=T/base".
        release: drop the text encoders (without a LoRA) and the VAE from ``components`` after their
            last use, before the UNet runs, for one-shot commands.

    Returns:
        An AttentionResult with conditions "t=T" (or "t=T/base", "t=T/lora").
    """
    _check_images(images, captions, components)
    for path, _ in loras:
        if not Path(path).is_file():
            raise ProbeError(f"{path}: LoRA file not found; pass the .safetensors written by the trainer")
    hw = (int(images.shape[1]), int(images.shape[2]))
    enc = _encode(components, captions, max_token_length)
    if release and not loras:  # with a LoRA the text encoders encode again, with its layers
        release_parts(components, "text_encoder", "text_encoder_2")
    latents = encode_images(components, images)
    if release:
        release_parts(components, "vae")
    run_kw = dict(timesteps=timesteps, seed=seed, options=options, hw=hw)
    runs = _inspect_runs(components, latents, enc, **run_kw)
    if loras:
        with loras_loaded(components, loras):
            lora_enc = _encode(components, captions, max_token_length)
            lora_runs = _inspect_runs(components, latents, lora_enc, **run_kw)
        runs = [r for pair in zip(runs, lora_runs, strict=True) for r in pair]
    kinds = ("/base", "/lora") if loras else ("",)
    labels = [f"t={t}{kind}" for t in timesteps for kind in kinds]
    enc = runs[0][0]
    maps = torch.stack([m for _, m, _ in runs])
    mass = torch.stack([s for _, _, s in runs])
    settings = _settings(options, mode="inspect", height=hw[0], width=hw[1], seed=seed, timesteps=list(timesteps),
                         max_token_length=max_token_length, loras=_lora_list(loras) or None)  # fmt: skip
    shown = np.broadcast_to(images, (len(labels), *images.shape)).copy()
    result = _result(components, "inspect", enc, labels=labels, maps=maps, mass=mass, images=shown, settings=settings)
    if loras:
        result.metrics["lora_change"] = lora_change(result)
    return result


def _inspect_runs(components, latents, enc, *, timesteps, seed, options, hw):
    runs = []
    for t in timesteps:
        with options.capture(components.unet, cfg_doubled=False) as rec:
            noised_forward(components, latents, enc.context, enc.pooled, timestep=int(t), seed=seed, hw=hw)
        maps, mass = _aggregate(rec, options.size)
        runs.append((enc, maps, mass))
    return runs


def _aggregate(rec: AttentionRecorder, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Recorder -> (B, T, H, W) DAAM maps and (B, T) mean attention mass over recorded calls."""
    if not rec.sums:
        raise ProbeError("no cross-attention call was recorded; widen --window, --layers or --resolutions")
    size = size or heatmaps.default_heatmap_size(rec.map_hw)
    maps = heatmaps.global_heat_map(rec.sums, size).cpu()
    mass = sum(rec.token_mass.values()) / sum(rec.token_mass_calls.values())
    return maps, mass.cpu()


def _ren_entropies(rec: AttentionRecorder, b: int) -> dict[str, float]:
    """Ren et al. token entropy at the first recorded step and over the last 10 steps."""
    steps = sorted(rec.token_mass)
    per_step = [metrics.token_entropy(rec.token_mass[s][b] / rec.token_mass_calls[s]) for s in steps]
    last = per_step[-REN_LAST_STEPS:]
    return {"first_step": per_step[0], "last_steps": float(np.mean(last)), "first_step_index": steps[0]}


def _encode(components: Any, captions: list[str], max_token_length: int | None):
    from sdxl_probe.pipeline.conditioning import encode_captions

    with torch.no_grad():
        return encode_captions(components, captions, max_token_length=max_token_length)


def _image_size(components: Any, height: int | None, width: int | None) -> tuple[int, int]:
    return check_image_size(components.unet.config, components.vae.config, height, width)


def _check_images(images: np.ndarray, captions: list[str], components: Any) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ProbeError(
            f"images have shape {images.shape} and dtype {images.dtype}; expected (B, H, W, 3) uint8"
        )
    if len(captions) != images.shape[0]:
        raise ProbeError(f"{images.shape[0]} images but {len(captions)} captions; pass one caption per image")
    _image_size(components, int(images.shape[1]), int(images.shape[2]))


def _lora_list(loras: Sequence[tuple[str | Path, float]]) -> list[dict[str, Any]]:
    """The LoRAs as saved in the settings: ``[{"file": ..., "weight": ...}]``."""
    return [{"file": str(path), "weight": float(weight)} for path, weight in loras]


def _settings(options: CaptureOptions, **extra: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {"aggregation": "daam", **asdict(options), **extra}


def _result(components, mode, enc, *, labels, maps, mass, images, settings) -> AttentionResult:
    words, tags, kinds, token_labels = [], [], [], []
    for b, tc in enumerate(enc.captions):
        layout = enc.layouts_te1[b]
        spans = [(tok.start, tok.end) for tok in tc.tokens]
        words.append([_as_dict(w) for w in heatmaps.caption_words(tc.caption, spans, layout.positions)])
        tags.append([_as_dict(t) for t in heatmaps.caption_tags(tc.tags, spans, layout.positions)])
        content = [p for p in layout.positions if p is not None]
        kinds.append(heatmaps.position_kinds(maps.shape[2], content))
        token_labels.append(_token_labels(tc, layout, kinds[-1]))
    model = {"source": str(components.source), "kind": components.kind, "is_toy": components.is_toy,
             "hash": components.model_hash(), **precision_of(components)}  # fmt: skip
    result = AttentionResult(mode, model, settings, [tc.caption for tc in enc.captions], labels, maps, mass,
                             kinds, token_labels, words, images, tags=tags)  # fmt: skip
    result.metrics["words"] = word_metrics(result)
    return result


def _as_dict(word: heatmaps.Word) -> dict[str, Any]:
    return {"text": word.text, "start": word.start, "end": word.end, "positions": list(word.positions),
            "n_tokens": word.n_tokens}  # fmt: skip


def _token_labels(tc: Any, layout: Any, kinds: list[str]) -> list[str]:
    labels = [f"<{k}>" for k in kinds]
    for tok, pos in zip(tc.tokens, layout.positions, strict=True):
        if pos is not None:
            labels[pos] = tc.caption[tok.start : tok.end]
    return labels


def word_metrics(result: AttentionResult) -> list[list[dict[str, Any]]]:
    """Per condition and caption: spatial entropy and attention mass of every word and tag map.

    Also records, per caption, the BOS/EOS/padding shares and Ren et al.'s token entropy.
    Returns a (C, B) nested list of dicts {"caption": {...}, "words": [...], "tags": [...]}.
    """
    out = []
    for c in range(len(result.conditions)):
        per_caption = []
        for b in range(len(result.captions)):
            mass = result.token_mass[c, b]
            summary = {
                "shares": metrics.mass_shares(mass, result.kinds[b]),
                "token_entropy": metrics.token_entropy(mass),
            }
            tags = result.tags[b] if result.tags else []
            per_caption.append({"caption": summary, "words": _group_rows(result, c, b, result.words[b]),
                                "tags": _group_rows(result, c, b, tags)})  # fmt: skip
        out.append(per_caption)
    return out


def _group_rows(
    result: AttentionResult, c: int, b: int, groups: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Spatial entropy and attention mass of each word or tag that kept at least one token."""
    mass = result.token_mass[c, b]
    return [{"text": g["text"], "cut": len(g["positions"]) < g["n_tokens"],
             "spatial_entropy": metrics.spatial_entropy(word_map_at(result, c, b, g)),
             "mass": float(mass[g["positions"]].sum())} for g in groups if g["positions"]]  # fmt: skip


def word_map(result: AttentionResult, condition: int, caption: int, word: str) -> torch.Tensor:
    """DAAM ``compute_word_heat_map``: mean map of every token of every occurrence of ``word``."""
    positions = [
        p for w in result.words[caption] if w["text"].lower() == word.lower() for p in w["positions"]
    ]
    if not positions:
        found = sorted({w["text"] for w in result.words[caption] if w["positions"]})
        raise ProbeError(
            f"word '{word}' not in caption {caption} (or cut from the context); words: {', '.join(found)}"
        )
    return heatmaps.group_map(result.token_maps[condition, caption], positions)


def lora_change(result: AttentionResult) -> list[list[dict[str, Any]]]:
    """Per base/LoRA condition pair and caption: how each word's map moved (``metrics.map_change``)."""
    pairs = [(i, result.conditions.index(c.replace("/base", "/lora"))) for i, c in enumerate(result.conditions)
             if c.endswith("/base")]  # fmt: skip
    out = []
    for base, lora in pairs:
        for b, words in enumerate(result.words):
            for w in words:
                if w["positions"]:
                    change = metrics.map_change(
                        word_map_at(result, base, b, w), word_map_at(result, lora, b, w)
                    )
                    out.append(
                        {"condition": result.conditions[base], "caption": b, "word": w["text"], **change}
                    )
    return out


def word_map_at(result: AttentionResult, condition: int, caption: int, word: dict[str, Any]) -> torch.Tensor:
    """Map of one word occurrence (a ``result.words`` entry)."""
    return heatmaps.group_map(result.token_maps[condition, caption], word["positions"])


def write_outputs(result: AttentionResult, out: str | Path) -> str:
    """Save the result, its overlay grids and its HTML report into ``out``; return a summary line."""
    from sdxl_probe.probes.attention.overlay import write_overlays
    from sdxl_probe.probes.attention.report import render_report

    out = Path(out)
    result.save(out)
    overlays = write_overlays(result, out)
    page = render_report(out)
    toy = " (toy model)" if result.is_toy else ""
    return f"wrote {out / 'attention.json'}, {out / 'attention_maps.safetensors'}, {len(overlays)} overlay grid(s), {page}{toy}"


def mask_ious(
    result: AttentionResult,
    condition: int,
    caption: int,
    masks: dict[str, np.ndarray],
    tau: float = metrics.DAAM_TAU,
) -> dict[str, float]:
    """IoU of each word's map with its ground-truth mask (DAAM: min-max, threshold ``tau``).

    Args:
        result: an attention result.
        condition, caption: indices into ``result.conditions`` and ``result.captions``.
        masks: word -> (H, W) bool mask, e.g. the toy world's object masks.
    """
    return {word: metrics.mask_iou(word_map(result, condition, caption, word), torch.from_numpy(np.asarray(mask)), tau)
            for word, mask in masks.items()}  # fmt: skip
