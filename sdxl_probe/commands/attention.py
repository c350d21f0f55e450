"""``sdxl-probe attention``: per-token cross-attention maps (a thin layer over probes.attention)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option

attention_app = typer.Typer(
    help="Per-token and per-word cross-attention maps (DAAM-style).", no_args_is_help=True
)

_WINDOW = "Step window: early, middle, late (thirds) or START:STOP step indices. Default: all steps."
_LAYERS = (
    "Comma-separated attn2 module prefixes, e.g. up_blocks.0,down_blocks.2. Default: all but the mid block."
)


def _open(model: str, device: str, dtype: str):
    """(configs, precision): device, dtype and the model's configs, checked before any weight loads."""
    from sdxl_probe.pipeline.device import open_model

    return open_model(model, device, dtype)


def _load(model: str, precision):
    """The components on the policy's device and dtypes (``sdxl_probe.pipeline.device``)."""
    from sdxl_probe.pipeline.device import load_model

    components = load_model(model, precision, identity=True)
    typer.echo(f"model on {precision.describe()}")
    return components


def _gate(out: Path, **values) -> None:
    """Check the options' declared ranges and the result folder, before any model loads."""
    from sdxl_probe.commands.bounds import AttentionOptions
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import preflight_folder

    gate(AttentionOptions, **values)
    preflight_folder(out, owns=("attention.json",))


def _write(attention, result, out: Path) -> None:
    """Save result, overlays and page into a temp folder swapped in whole as ``out``."""
    from sdxl_probe.outputs import output_folder

    with output_folder(out, owns=("attention.json",)) as tmp:
        line = attention.write_outputs(result, tmp)
    typer.echo(line.replace(str(tmp), str(out)))


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
    lora: list[str] = typer.Option(
        [], "--lora", help="A LoRA .safetensors as FILE[:weight] (kohya, SGM or diffusers), applied to the maps; "
        "repeat it to apply several at once."
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Generate images and write a heat map for every token and every word."""
    from sdxl_probe.commands.attention_options import parse_ints
    from sdxl_probe.pipeline.checks import check_image_size, check_steps
    from sdxl_probe.pipeline.lora import parse_lora_spec, parse_lora_specs
    from sdxl_probe.probes.attention import core as attention

    _gate(out, seed=seed, steps=steps, guidance=guidance, height=height, width=width, max_token_length=max_token_length,
          heads=parse_ints(heads, "--heads"), resolutions=parse_ints(resolutions, "--resolutions"),
          lora_weights=tuple(parse_lora_spec(s)[1] for s in lora))  # fmt: skip
    loras = parse_lora_specs(lora)
    configs, precision = _open(model, device, dtype)
    check_steps(steps, configs["scheduler"])
    height, width = check_image_size(configs["unet"], configs["vae"], height, width)
    options = _capture_options(window, steps, layers, heads, resolutions, include_mid)
    components = _load(model, precision)
    result = attention.generate(components, prompt, height=height, width=width, steps=steps, guidance=guidance,
                                seed=seed, max_token_length=max_token_length, options=options,
                                release=True, loras=loras)  # fmt: skip
    _write(attention, result, out)


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
    lora: list[str] = typer.Option(
        [], "--lora", help="A LoRA .safetensors as FILE[:weight]: adds LoRA maps and LoRA - base; "
        "repeat it to apply several at once."
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
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Noise training images at chosen timesteps and map where each tag of their caption binds."""
    from sdxl_probe.commands.attention_options import load_images_and_captions, parse_ints
    from sdxl_probe.pipeline.checks import check_image_size, check_timesteps
    from sdxl_probe.pipeline.lora import parse_lora_spec, parse_lora_specs
    from sdxl_probe.probes.attention import core as attention

    _gate(out, seed=seed, max_token_length=max_token_length, caption_ext=caption_ext,
          timesteps=parse_ints(timesteps, "--timesteps") or (300, 500), heads=parse_ints(heads, "--heads"),
          resolutions=parse_ints(resolutions, "--resolutions"),
          lora_weights=tuple(parse_lora_spec(s)[1] for s in lora))  # fmt: skip
    options = _capture_options(None, 1, layers, heads, resolutions, include_mid)
    configs, precision = _open(model, device, dtype)
    chosen = check_timesteps(parse_ints(timesteps, "--timesteps") or (300, 500), configs["scheduler"])
    loras = parse_lora_specs(lora)
    images, captions = load_images_and_captions(image, caption, caption_ext)
    check_image_size(configs["unet"], configs["vae"], int(images.shape[1]), int(images.shape[2]))
    components = _load(model, precision)
    result = attention.inspect(components, images, captions, timesteps=chosen, seed=seed,
                               max_token_length=max_token_length, options=options, loras=loras,
                               release=True)  # fmt: skip
    _write(attention, result, out)


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
