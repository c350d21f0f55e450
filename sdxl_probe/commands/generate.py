"""``sdxl-probe generate``: one prompt to one PNG with a real sampler (Euler or DDIM) and CFG."""

from __future__ import annotations

from pathlib import Path

import typer


def generate(
    prompt: str = typer.Argument(..., help="The prompt; long (see --max-token-length) and weighted prompts work."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    model: str = typer.Option("toy", "--model", help='A preset ("toy"), an SDXL .safetensors file or a diffusers folder.'),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    steps: int = typer.Option(25, "--steps", help="Sampler steps."),
    cfg: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale (1 = no guidance)."),
    width: int = typer.Option(None, "--width", help="Pixels; default the model's native size."),
    height: int = typer.Option(None, "--height", help="Pixels; default the model's native size."),
    max_token_length: int = typer.Option(None, "--max-token-length", help="75 (default), 150 or 225, as sd-scripts."),
    weighted: bool = typer.Option(False, "--weighted", help="Parse (word:1.2) prompt weights, as sd-scripts."),
    sampler: str = typer.Option("euler", "--sampler", help="euler or ddim."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
) -> None:
    """Generate an image from PROMPT and save it as a PNG."""
    import torch
    from PIL import Image

    from sdxl_probe.io import atomic_path
    from sdxl_probe.models.load import load_components
    from sdxl_probe.pipeline.sampling import generate_images

    mtl = None if max_token_length in (None, 75) else max_token_length
    components = load_components(model, dtype=torch.float32)
    image = generate_images(components, [prompt], seed=seed, steps=steps, cfg=cfg, height=height, width=width,
                            negative=negative, sampler=sampler, max_token_length=mtl, weighted=weighted)[0]
    with atomic_path(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    toy = " (toy model)" if components.is_toy else ""
    typer.echo(f"wrote {out}: {image.shape[1]}x{image.shape[0]}, {sampler} {steps} steps, cfg {cfg}, seed {seed}{toy}")


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the CLI."""
    app.command("generate")(generate)
