"""``sdxl-probe model info``: what a checkpoint, diffusers folder, preset or LoRA file holds."""

from __future__ import annotations

import typer

model_app = typer.Typer(help="Inspect SDXL checkpoints, diffusers folders, presets and LoRA files.",
                        no_args_is_help=True)


@model_app.command("info")
def info(
    source: str = typer.Argument(
        ..., help='An SDXL .safetensors file, a diffusers folder, a preset ("toy"), or a LoRA .safetensors.'
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read .ckpt/.pt files with torch.load(weights_only=True)."
    ),
) -> None:
    """Print the detected architecture and, per component, parameter count and dtype (or describe a LoRA)."""
    from rich.console import Console
    from rich.table import Table

    from sdxl_probe.models.info import model_info
    from sdxl_probe.models.lora_info import read_if_lora

    lora = read_if_lora(source)
    if lora is not None:
        _print_lora(lora)
        return
    summary = model_info(source, allow_pickle=allow_pickle)
    console = Console()
    toy = "  [bold yellow](toy model)[/]" if summary.kind in ("toy", "tiny") else ""
    console.print(f"[bold]{summary.source}[/]: {summary.layout}, kind {summary.kind}{toy}")
    console.print(summary.architecture)
    table = Table("component", "class", "parameters", "dtype")
    for c in summary.components:
        table.add_row(c.name, c.cls, f"{c.params:,}", ", ".join(c.dtypes) or "-")
    table.add_row("total", "", f"{sum(c.params for c in summary.components):,}", "")
    console.print(table)


def _print_lora(lora) -> None:
    """Format, ranks, alphas, targets per model and the ``ss_*`` metadata of a LoRA file (plain lines)."""
    alphas = ", ".join(f"{a:g}" for a in lora.alphas) or "none stored (alpha = rank)"
    typer.echo(f"{lora.source}: LoRA, format {lora.format}, {lora.architecture}")
    typer.echo(f"rank {', '.join(map(str, lora.ranks))}; alpha {alphas}")
    typer.echo("targets: " + ", ".join(f"{m} {n}" for m, n in lora.targets.items()))
    for key, value in lora.metadata.items():
        typer.echo(f"  {key} = {value}")


def register(app: typer.Typer) -> None:
    """Add the ``model`` command group to the CLI."""
    app.add_typer(model_app, name="model")
