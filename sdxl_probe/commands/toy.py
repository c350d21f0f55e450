"""``sdxl-probe toy ...``: the toy world (dataset), and the toy model's commands.

One small function per command on ``toy_app``; heavy imports happen inside each.
"""

from __future__ import annotations

from pathlib import Path

import typer

toy_app = typer.Typer(help="The toy world and the toy model (a small learned SDXL-architecture model).",
                      no_args_is_help=True)


@toy_app.command("dataset")
def dataset(
    out: Path = typer.Argument(..., help="Folder to create (must not exist or be empty)."),
    n: int = typer.Option(100, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same folder."),
    style: str = typer.Option("tags", "--style", help="Caption style of the .txt files: tags, sentence, mixed, long."),
    concept: str = typer.Option(
        None, "--concept", help="A shape or colour never seen in pretraining (heart, cross, pink, turquoise), in every image."
    ),
    trigger: str = typer.Option(
        None, "--trigger", help="With --concept, the word that names it in captions; else prepended to every caption."
    ),
    repeats: int = typer.Option(1, "--repeats", help="kohya repeats: the image folder is named R_NAME."),
    split: str = typer.Option("train", "--split", help="train (no held-out colour-shape pairs), heldout, or all."),
    details: bool = typer.Option(False, "--details", help="Captions also give sizes and positions."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
) -> None:
    """Write a kohya-style folder of toy-world images, captions, masks and metadata.jsonl."""
    from sdxl_probe.toy.dataset import write_dataset

    ds = write_dataset(out, n=n, seed=seed, style=style, split=split, concept=concept, trigger=trigger,
                       repeats=repeats, details=details, size=size)
    typer.echo(f"wrote {ds.n} images to {Path(ds.root) / ds.image_dir} (captions: {ds.style}), "
               f"masks and metadata.jsonl to {ds.root}")


def register(app: typer.Typer) -> None:
    """Add the ``toy`` command group to the CLI."""
    app.add_typer(toy_app, name="toy")
