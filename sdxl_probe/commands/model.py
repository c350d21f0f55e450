"""``sdxl-probe model info``: what a checkpoint, diffusers folder or preset holds."""

from __future__ import annotations

import typer

model_app = typer.Typer(help="Inspect SDXL checkpoints, diffusers folders and presets.", no_args_is_help=True)


@model_app.command("info")
def info(
    source: str = typer.Argument(
        ..., help='An SDXL .safetensors file, a diffusers folder, or a preset ("toy").'
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Read .ckpt/.pt files with torch.load(weights_only=True)."
    ),
) -> None:
    """Print the detected architecture and, per component, parameter count and dtype."""
    from rich.console import Console
    from rich.table import Table

    from sdxl_probe.models.info import model_info

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


def register(app: typer.Typer) -> None:
    """Add the ``model`` command group to the CLI."""
    app.add_typer(model_app, name="model")
