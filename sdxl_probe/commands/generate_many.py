"""``sdxl-probe generate --prompt-file FILE`` / ``--n N``: many images from one model load, into a folder.

Each prompt line (sd-scripts syntax, ``sdxl_probe.train.lora.prompts``) is sampled as one batch of
``n`` images with seeds ``seed .. seed + n - 1`` (the sampler seeds prompt i with ``seed + i``).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

MANIFEST = "prompts.jsonl"  # one row per image: file, prompt and its settings


def generate_many(lines, n: int, *, model: str, out: Path, sampler: str, max_token_length: int | None,
                  weighted: bool, loras: list[tuple[Path, float]], device: str, dtype: str) -> None:  # fmt: skip
    """Check every line, load the model once, write ``n`` PNGs per line and a manifest into ``out``."""
    from dataclasses import asdict

    from PIL import Image

    from sdxl_probe.outputs import output_folder, preflight_folder
    from sdxl_probe.pipeline.device import load_model
    from sdxl_probe.pipeline.lora import loras_loaded
    from sdxl_probe.pipeline.sampling import generate_images

    preflight_folder(out, owns=(MANIFEST,))
    sizes, precision = _check_lines(lines, n, model, device, dtype)
    mtl = None if max_token_length in (None, 75) else max_token_length
    components = load_model(model, precision)
    rows = []
    with output_folder(out, owns=(MANIFEST,)) as tmp, loras_loaded(components, loras):
        for i, (line, (height, width)) in enumerate(zip(lines, sizes, strict=True)):
            images = generate_images(components, [line.prompt] * n, seed=line.seed, steps=line.steps,
                                     cfg=line.guidance, height=height, width=width, negative=line.negative,
                                     sampler=sampler, max_token_length=mtl, weighted=weighted)  # fmt: skip
            for j, image in enumerate(images):  # (H, W, 3) uint8
                name = f"{i:03d}_{j:02d}.png"
                Image.fromarray(image).save(tmp / name, format="PNG")
                rows.append({"file": name, **asdict(line), "seed": line.seed + j, "width": width, "height": height})
        (tmp / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    typer.echo(f"wrote {len(rows)} images for {len(lines)} prompts into {out}, {sampler}, {precision.describe()}")


def _check_lines(lines, n: int, model: str, device: str, dtype: str):
    """Each line's options through the gate and the model's size and step checks, before weights load."""
    from sdxl_probe.commands.bounds import GenerateOptions
    from sdxl_probe.options import gate
    from sdxl_probe.pipeline.checks import check_image_size, check_steps
    from sdxl_probe.pipeline.device import open_model

    for line in lines:
        gate(GenerateOptions, seed=line.seed + n - 1, steps=line.steps, guidance=line.guidance, width=line.width,
             height=line.height, n=n)  # fmt: skip
    configs, precision = open_model(model, device, dtype)
    sizes = []
    for line in lines:
        check_steps(line.steps, configs["scheduler"])
        sizes.append(check_image_size(configs["unet"], configs["vae"], line.height, line.width))
    return sizes, precision
