"""``sdxl-probe attention``: per-token cross-attention maps (a thin layer over probes.attention)."""

from __future__ import annotations

from pathlib import Path

import typer

attention_app = typer.Typer(
    help="Per-token and per-word cross-attention maps (DAAM-style).", no_args_is_help=True
)

_WINDOW = "Step window: early, middle, late (thirds) or START:STOP step indices. Default: all steps."
_LAYERS = (
    "Comma-separated attn2 module prefixes, e.g. up_blocks.0,down_blocks.2. Default: all but the mid block."
)


def _load(model: str, device: str):
    """Float32 on the CPU (fp16 kernels there are slow and lossy); the stored dtype elsewhere."""
    import torch

    from sdxl_probe.models.load import load_components

    return load_components(model, device=device, dtype=torch.float32 if device == "cpu" else None)


def _capture_options(window, n_steps, layers, heads, resolutions, include_mid):
    from sdxl_probe.commands.attention_options import capture_options

    return capture_options(window=window, n_steps=n_steps, layers=layers, heads=heads,
                           resolutions=resolutions, include_mid=include_mid)  # fmt: skip


# Options shared by `generate` and `inspect` (one definition, two commands).
_MAX_TOKEN_LENGTH = typer.Option(None, "--max-token-length", help="75 (default), 150 or 225.")
_LAYERS_OPT = typer.Option(None, "--layers", help=_LAYERS)
_HEADS = typer.Option(None, "--heads", help="Comma-separated head indices (default: mean of all).")
_RESOLUTIONS = typer.Option(None, "--resolutions", help="Map downsampling factors, e.g. 2,4.")
_INCLUDE_MID = typer.Option(False, "--include-mid", help="Also record the mid block.")
_DEVICE = typer.Option("cpu", "--device", help="Torch device.")


@attention_app.command("generate")
def generate(
    prompt: list[str] = typer.Argument(..., help="One or more prompts (generated as one batch)."),
    model: str = typer.Option(
        "toy", "--model", help='"toy", or an SDXL .safetensors file or diffusers folder.'
    ),
    out: Path = typer.Option(Path("reports/attention"), "--out", help="Result folder (maps, overlays, report)."),
    steps: int = typer.Option(25, "--steps", help="Denoising steps."),
    guidance: float = typer.Option(5.0, "--guidance", help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise."),
    height: int | None = typer.Option(
        None, "--height", help="Image height in pixels (default: the model's)."
    ),
    width: int | None = typer.Option(None, "--width", help="Image width in pixels (default: the model's)."),
    max_token_length: int | None = _MAX_TOKEN_LENGTH,
    window: str | None = typer.Option(None, "--window", help=_WINDOW),
    layers: str | None = _LAYERS_OPT,
    heads: str | None = _HEADS,
    resolutions: str | None = _RESOLUTIONS,
    include_mid: bool = _INCLUDE_MID,
    device: str = _DEVICE,
) -> None:
    """Generate images and write a heat map for every token and every word."""
    from sdxl_probe.probes.attention import core as attention

    options = _capture_options(window, steps, layers, heads, resolutions, include_mid)
    components = _load(model, device)
    result = attention.generate(components, prompt, height=height, width=width, steps=steps, guidance=guidance,
                                seed=seed, max_token_length=max_token_length, options=options)  # fmt: skip
    typer.echo(attention.write_outputs(result, out))


@attention_app.command("inspect")
def inspect(
    image: list[Path] = typer.Argument(
        ..., help="Training images (same size); captions from <stem><caption-ext>."
    ),
    caption: str | None = typer.Option(
        None, "--caption", help="One caption for every image (else caption files)."
    ),
    caption_ext: str = typer.Option(
        ".txt", "--caption-ext", help="Caption file extension next to each image."
    ),
    timesteps: str = typer.Option(
        "300,500", "--timesteps", help="Comma-separated DDPM timesteps to noise to."
    ),
    lora: Path | None = typer.Option(
        None, "--lora", help="A LoRA .safetensors: adds LoRA maps and LoRA - base."
    ),
    model: str = typer.Option(
        "toy", "--model", help='"toy", or an SDXL .safetensors file or diffusers folder.'
    ),
    out: Path = typer.Option(Path("reports/attention"), "--out", help="Result folder (maps, overlays, report)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (shared by timesteps, base and LoRA)."),
    max_token_length: int | None = _MAX_TOKEN_LENGTH,
    layers: str | None = _LAYERS_OPT,
    heads: str | None = _HEADS,
    resolutions: str | None = _RESOLUTIONS,
    include_mid: bool = _INCLUDE_MID,
    device: str = _DEVICE,
) -> None:
    """Noise training images at chosen timesteps and map where each tag of their caption binds."""
    from sdxl_probe.probes.attention import core as attention

    options = _capture_options(None, 1, layers, heads, resolutions, include_mid)
    from sdxl_probe.commands.attention_options import load_images_and_captions, parse_ints

    images, captions = load_images_and_captions(image, caption, caption_ext)
    components = _load(model, device)
    result = attention.inspect(components, images, captions, timesteps=parse_ints(timesteps, "--timesteps") or (300, 500),
                               seed=seed, max_token_length=max_token_length, options=options, lora=lora)  # fmt: skip
    typer.echo(attention.write_outputs(result, out))


@attention_app.command("report")
def report(
    result_dir: Path = typer.Argument(..., help="A folder written by `attention generate/inspect`."),
) -> None:
    """Re-render the HTML report from saved result files."""
    from sdxl_probe.probes.attention.report import render_report

    typer.echo(f"wrote {render_report(result_dir)}")


def register(app: typer.Typer) -> None:
    """Add the ``attention`` command group to ``app``."""
    app.add_typer(attention_app, name="attention")
