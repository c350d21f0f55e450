"""``sdxl-probe generate``: one prompt to one PNG with a real sampler (Euler or DDIM) and CFG.

With ``--n N`` or ``--prompt-file FILE`` (sd-scripts syntax) it writes numbered PNGs into a folder,
all from one model load (``sdxl_probe.commands.generate_many``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option


def generate(
    prompt: str | None = typer.Argument(
        None, help="The prompt; long (see --max-token-length) and weighted prompts work. Or use --prompt-file."
    ),
    out: Path = typer.Option(..., "--out", help="PNG file to write; a folder with --n > 1 or --prompt-file."),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="sd-scripts prompt file: one prompt a line with --n --w --h --d --s --l."
    ),
    n: int = typer.Option(1, "--n", help="Images per prompt, seeds seed .. seed+N-1, sampled as one batch."),
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
    lora: list[str] = typer.Option(
        [], "--lora", help="A LoRA .safetensors as FILE[:weight] (kohya, SGM or diffusers; weight 1 default); "
        "repeat it to apply several at once."
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Generate an image from PROMPT (or every line of --prompt-file, --n each) and save PNGs."""
    from sdxl_probe.commands.bounds import GenerateOptions
    from sdxl_probe.commands.generate_many import generate_many
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import output_file, preflight_file
    from sdxl_probe.pipeline.lora import loras_loaded, parse_lora_spec, parse_lora_specs

    guidance = guidance if cfg is None else cfg
    gate(GenerateOptions, seed=seed, steps=steps, guidance=guidance, width=width, height=height, n=n,
         max_token_length=max_token_length, sampler=sampler, lora_weights=tuple(parse_lora_spec(s)[1] for s in lora))  # fmt: skip
    if (prompt is None) == (prompt_file is None):
        raise ProbeError("generate: give either a PROMPT or --prompt-file FILE (one of them, not both)")
    loras = parse_lora_specs(lora)
    if prompt_file is not None or n > 1:
        if out.suffix.lower() == ".png":
            raise ProbeError(f"--out {out}: several images go into a folder; give a folder path, not a .png")
        lines = _prompt_lines(prompt, prompt_file, seed=seed, steps=steps, guidance=guidance, width=width,
                              height=height, negative=negative)  # fmt: skip
        generate_many(lines, n, model=model, out=out, sampler=sampler, max_token_length=max_token_length,
                      weighted=weighted, loras=loras, device=device, dtype=dtype)  # fmt: skip
        return
    preflight_file(out)

    from PIL import Image

    from sdxl_probe.pipeline.checks import check_image_size, check_steps
    from sdxl_probe.pipeline.device import load_model, open_model
    from sdxl_probe.pipeline.sampling import generate_images

    configs, precision = open_model(model, device, dtype)  # device, dtype and sizes: before any weight loads
    height, width = check_image_size(configs["unet"], configs["vae"], height, width)
    check_steps(steps, configs["scheduler"])
    mtl = None if max_token_length in (None, 75) else max_token_length
    components = load_model(model, precision)
    with loras_loaded(components, loras):
        image = generate_images(components, [prompt], seed=seed, steps=steps, cfg=guidance, height=height,
                                width=width, negative=negative, sampler=sampler, max_token_length=mtl,
                                weighted=weighted, release=True)[0]  # fmt: skip
    with output_file(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    toy = " (toy model)" if components.is_toy else ""
    with_lora = "".join(f", LoRA {path.name} x{weight}" for path, weight in loras)
    typer.echo(f"wrote {out}: {image.shape[1]}x{image.shape[0]}, {sampler} {steps} steps, guidance {guidance}, "
               f"seed {seed}, {precision.describe()}{toy}{with_lora}")


def _prompt_lines(prompt: str | None, prompt_file: Path | None, **settings):
    """The prompt file's lines (sd-scripts defaults for what a line omits), or PROMPT with the CLI settings."""
    from sdxl_probe.train.lora.prompts import SamplePrompt, read_prompt_file

    if prompt_file is not None:
        lines = read_prompt_file(prompt_file)
        if not lines:
            from sdxl_probe.errors import ProbeError

            raise ProbeError(f"--prompt-file {prompt_file}: no prompts in it (blank and # lines are skipped)")
        return lines
    return [SamplePrompt(prompt, **settings)]


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the CLI."""
    app.command("generate")(generate)
