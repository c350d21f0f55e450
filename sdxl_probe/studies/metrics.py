"""The study's metrics of one finished run, all taken by the project's probes (never a second route).

* ``val_loss``: the last held-out loss the trainer logged (fixed (t, noise) pairs, sd-scripts' t = 200..800).
* ``caption_adherence`` (toy model): share of generations whose judged objects include the prompt's
  colour-and-shape pair (:func:`sdxl_probe.toy.judge.judge_image`; ``toy evaluate``'s ``match_any``).
* ``diversity``: mean pairwise RMS pixel difference (0..1) among the seeds of each prompt, averaged over
  prompts: near 0 when every seed draws the same picture (a memorizing LoRA's symptom).
* ``trigger_attention`` (toy model): IoU of the trigger word's DAAM map on the LoRA with the mask of the
  object it names, on training images (the attention probe's inspect mode and ``mask_ious``).
* ``memorization``: the memorization probe's headline score (LoRA minus base) at the run's last
  checkpoint (:func:`sdxl_probe.probes.memorization.core.measure`).
* ``clip_score``: 100 * max(cos(image, text), 0) with a user-supplied open_clip model (Hessel et al. 2021).

Generations use the same prompts and seeds for every run of a study, so runs differ only by their LoRA.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json
from sdxl_probe.studies.spec import RUN_NAME, MetricsSection

RESULT = "study_metrics.json"
SAMPLES = "study_samples.png"
GENERATING = ("caption_adherence", "diversity", "clip_score")


@dataclass
class Prompt:
    """A toy-world prompt and the (colour, shape) its first object must show."""

    text: str
    colour: str
    shape: str


def prompts(settings: MetricsSection, trigger: str | None, concept: str | None) -> list[Prompt]:
    """The study's fixed prompts: one-object toy scenes (with the concept and its trigger word when set)."""
    from sdxl_probe.toy.world import caption_scene, sample_scene

    rng = random.Random(f"study-prompts-{settings.prompt_seed}")
    names = {concept: trigger} if concept and trigger else None
    prefix = None if names else trigger
    out = []
    for _ in range(settings.prompts):
        scene = sample_scene(rng, n_objects=1, split="train", concept=concept)
        text = caption_scene(scene, settings.prompt_style, rng, prefix, names=names)
        out.append(Prompt(text, scene.objects[0].colour, scene.objects[0].shape))
    return out


def generate(components, lora: Path, items: list[Prompt], settings: MetricsSection) -> np.ndarray:
    """(P, S, H, W, 3) uint8: prompt p with seed ``p * S + s`` (the same for every run), LoRA loaded."""
    from sdxl_probe.pipeline.lora import lora_loaded
    from sdxl_probe.pipeline.sampling import generate_images

    s = settings.samples
    texts = [p.text for p in items for _ in range(s)]
    with lora_loaded(components, lora):
        images = generate_images(components, texts, seed=0, steps=settings.steps, cfg=settings.guidance)
    return images.reshape(len(items), s, *images.shape[1:])


def adherence(images: np.ndarray, items: list[Prompt]) -> float:
    """Share of images in which the judge finds the prompt's colour-and-shape object."""
    from sdxl_probe.toy.judge import judge_image

    hits = [bool(judge_image(im).find(p.colour, p.shape)) for p, row in zip(items, images, strict=True) for im in row]
    return float(np.mean(hits))


def diversity(images: np.ndarray) -> float:
    """Mean over prompts of the mean pairwise RMS difference (pixels in 0..1) between its seeds' images."""
    x = images.astype(np.float64) / 255.0  # (P, S, H, W, 3)
    per_prompt = []
    for row in x:
        s = len(row)
        if s < 2:
            raise ProbeError("diversity needs at least 2 samples per prompt; set [metrics] samples = 4")
        pairs = [np.sqrt(np.mean((row[i] - row[j]) ** 2)) for i in range(s) for j in range(i + 1, s)]
        per_prompt.append(np.mean(pairs))
    return float(np.mean(per_prompt))


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(P, S, H, W, 3) -> one image: a row per prompt, a column per seed, white gaps."""
    p, s, h, w, c = images.shape
    out = np.full((p * (h + pad) - pad, s * (w + pad) - pad, c), 255, dtype=np.uint8)
    for i in range(p):
        for j in range(s):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = images[i, j]
    return out


def last_val_loss(run_dir: Path) -> float:
    """The last ``val_loss`` in RUN_DIR/metrics.jsonl."""
    vals = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("val_loss") is not None:
            vals.append(record["val_loss"])
    if not vals:
        raise ProbeError(f"{run_dir}: no val_loss in metrics.jsonl; set [train.dataset] validation_split > 0")
    return float(vals[-1])


def trigger_attention(components, lora: Path, dataset: Path, trigger: str, concept: str | None,
                      settings: MetricsSection, out: Path) -> float:  # fmt: skip
    """Mean IoU of the trigger's map (LoRA condition) with its object's mask; writes the attention report."""
    from PIL import Image

    from sdxl_probe.probes.attention.core import inspect, mask_ious, write_outputs
    from sdxl_probe.toy.dataset import read_metadata

    records = read_metadata(dataset)[: settings.attention_images]
    images = np.stack([np.asarray(Image.open(dataset / r["file"]).convert("RGB")) for r in records])
    captions = [r["tags"] for r in records]
    result = inspect(components, images, captions, timesteps=(settings.attention_timestep,), seed=0, loras=[(lora, 1.0)])
    lora_condition = result.conditions.index(f"t={settings.attention_timestep}/lora")
    ious = []
    for b, r in enumerate(records):
        labels = np.asarray(Image.open(dataset / r["mask"]))  # 0 = background, i + 1 = object i
        mask = labels == 1 if concept else labels > 0  # the concept is every scene's first object
        ious += mask_ious(result, lora_condition, b, {trigger: mask}).values()
    write_outputs(result, out)
    return float(np.mean(ious))


def memorization(run_dir: Path, settings: MetricsSection, log, cache_dir: Path | None = None) -> float:
    """The memorization probe's headline score (LoRA minus base) at the last checkpoint.

    Args:
        cache_dir: the probe's generation cache; shared by a study's runs, so the base model's
            generations (the same captions and seeds for every run) are made once.
    """
    from sdxl_probe.probes.memorization.core import measure

    out = run_dir / "memorization"
    steps = settings.memorization_steps
    measure(run_dir, out, seeds=settings.memorization_seeds, steps=steps, checkpoints="last", log=log,
            first_steps=min(steps, 10), sensitivity_seeds=0, significance_captions=0,
            cache_dir=cache_dir)  # the headline only
    data = json.loads((out / "memorization.json").read_text(encoding="utf-8"))
    last = max(data["checkpoints"], key=lambda c: c["step"])
    return float(last["scores"][data["headline"]])


def clip_score(images: np.ndarray, items: list[Prompt], settings: MetricsSection) -> float:
    """CLIPScore (Hessel et al. 2021, w = 100 as torchmetrics): 100 * max(cos(image, caption), 0), mean."""
    import torch

    try:
        import open_clip
    except ImportError:
        raise ProbeError("clip_score needs open_clip: pip install open_clip_torch") from None
    model, _, preprocess = open_clip.create_model_and_transforms(settings.clip_arch, pretrained=settings.clip_weights)
    tokenizer = open_clip.get_tokenizer(settings.clip_arch)
    from PIL import Image

    flat = [Image.fromarray(im) for row in images for im in row]
    texts = [p.text for p in items for _ in range(images.shape[1])]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in flat]))
        txt = model.encode_text(tokenizer(texts))
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return float((100 * cos.clamp(min=0)).mean())


def measure_run(run_dir: Path, *, metrics: list[str], settings: MetricsSection, model_source: str,
                dataset: Path | None, trigger: str | None, concept: str | None, log=print) -> dict:  # fmt: skip
    """Every requested metric of one finished run; saved to RUN_DIR/study_metrics.json (+ the sample grid)."""
    values: dict[str, float] = {}
    texts: list[str] = []
    lora = run_dir / f"{RUN_NAME}.safetensors"
    if "val_loss" in metrics:
        values["val_loss"] = last_val_loss(run_dir)
    needs_model = any(m in metrics for m in (*GENERATING, "trigger_attention"))
    if needs_model:
        import torch

        from sdxl_probe.models.load import load_components

        components = load_components(model_source, dtype=torch.float32)
        if any(m in metrics for m in GENERATING):
            items = prompts(settings, trigger, concept)
            texts = [p.text for p in items]
            images = generate(components, lora, items, settings)
            _save_grid(run_dir / SAMPLES, grid(images))
            if "caption_adherence" in metrics:
                values["caption_adherence"] = adherence(images, items)
            if "diversity" in metrics:
                values["diversity"] = diversity(images)
            if "clip_score" in metrics:
                values["clip_score"] = clip_score(images, items, settings)
        if "trigger_attention" in metrics:
            values["trigger_attention"] = trigger_attention(components, lora, dataset, trigger, concept, settings,
                                                            run_dir / "attention")  # fmt: skip
        del components
    if "memorization" in metrics:
        values["memorization"] = memorization(run_dir, settings, log, dataset.parent / "memorization_cache"
                                              if dataset is not None else None)  # fmt: skip
    import os
    import socket

    write_json(run_dir / RESULT, {"metrics": values, "settings": settings.__dict__, "prompts": texts, "pid": os.getpid(),
                                  "host": socket.gethostname()})  # fmt: skip
    return values


def _save_grid(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    from sdxl_probe.io import write_bytes

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
