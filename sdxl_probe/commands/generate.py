"""``sdxl-probe generate``: one prompt to one PNG with a real sampler (Euler or DDIM) and CFG."""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option


def generate(
    prompt: str = typer.Argument(..., help="The prompt; long (see --max-token-length) and weighted prompts work."),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    model: str = typer.Option("toy", "--model", help='A preset ("toy"), an SDXL .safetensors file or a diffusers folder.'),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    steps: int = typer.Option(25, "--steps", help="Sampler steps."),
    guidance: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale (1 = no guidance)."),
    cfg: float | None = typer.Option(None, "--cfg", hidden=True, help="Old name of --guidance."),
    width: int = typer.Option(None, "--width", help="Pixels; default the model's native size."),
    height: int = typer.Option(None, "--height", help="Pixels; default the model's native size."),
    max_token_length: int = typer.Option(None, "--max-token-length", help="75 (default), 150 or 225, as sd-scripts."),
    weighted: bool = typer.Option(False, "--weighted", help="Parse (word:1.2) prompt weights, as sd-scripts."),
    sampler: str = typer.Option("euler", "--sampler", help="euler or ddim."),
    negative: str = typer.Option("", "--negative", help="Negative prompt."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Generate an image from PROMPT and save it as a PNG."""
    from sdxl_probe.commands.bounds import GenerateOptions
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import output_file, preflight_file

    gate(GenerateOptions, seed=seed, steps=steps, guidance=guidance if cfg is None else cfg, width=width,
         height=height, max_token_length=max_token_length, sampler=sampler)  # fmt: skip
    preflight_file(out)

    from PIL import Image

    from sdxl_probe.pipeline.checks import check_image_size, check_steps
    from sdxl_probe.pipeline.device import load_model, open_model
    from sdxl_probe.pipeline.sampling import generate_images

    guidance = guidance if cfg is None else cfg
    configs, precision = open_model(model, device, dtype)  # device, dtype and sizes: before any weight loads
    height, width = check_image_size(configs["unet"], configs["vae"], height, width)
    check_steps(steps, configs["scheduler"])
    mtl = None if max_token_length in (None, 75) else max_token_length
    components = load_model(model, precision)
    image = generate_images(components, [prompt], seed=seed, steps=steps, cfg=guidance, height=height, width=width,
                            negative=negative, sampler=sampler, max_token_length=mtl, weighted=weighted,
                            release=True)[0]
    with output_file(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    toy = " (toy model)" if components.is_toy else ""
    typer.echo(f"wrote {out}: {image.shape[1]}x{image.shape[0]}, {sampler} {steps} steps, guidance {guidance}, "
               f"seed {seed}, {precision.describe()}{toy}")


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the CLI."""
    app.command("generate")(generate)
