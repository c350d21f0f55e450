"""``sdxl-probe toy ...``: the toy world (dataset), and the toy model's commands.

One small function per command on ``toy_app``; heavy imports happen inside each.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option

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
    from sdxl_probe.commands.bounds import ToyDatasetOptions
    from sdxl_probe.options import gate
    from sdxl_probe.toy.dataset import write_dataset

    gate(ToyDatasetOptions, n=n, seed=seed, repeats=repeats, size=size)
    ds = write_dataset(out, n=n, seed=seed, style=style, split=split, concept=concept, trigger=trigger,
                       repeats=repeats, details=details, size=size)
    typer.echo(f"wrote {ds.n} images to {Path(ds.root) / ds.image_dir} (captions: {ds.style}), "
               f"masks and metadata.jsonl to {ds.root}")


def register(app: typer.Typer) -> None:
    """Add the ``toy`` command group to the CLI."""
    app.add_typer(toy_app, name="toy")


# ---------------------------------------------------------------- the toy model (TOY-MODEL helper)


@toy_app.command("pretrain")
def pretrain(
    out: Path = typer.Option(..., "--out", help="Run folder: state/ (resumable) and model/ (diffusers, fp16)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, initialisation and every batch."),
    resume: bool = typer.Option(False, "--resume", help="Continue the state saved in OUT/state."),
    config: Path = typer.Option(None, "--config", help="TOML overriding PretrainConfig fields (e.g. steps)."),
) -> None:
    """Train the toy model from scratch: VAE, then TE1 + TE2 + UNet (Ctrl-C saves; --resume continues)."""
    from sdxl_probe.commands.bounds import ToyPretrainOptions
    from sdxl_probe.config import from_dict, read_toml
    from sdxl_probe.options import gate

    gate(ToyPretrainOptions, seed=seed)
    from sdxl_probe.train.toy_recipe.pretrain import PretrainConfig
    from sdxl_probe.train.toy_recipe.pretrain import pretrain as run

    cfg = from_dict(PretrainConfig, read_toml(config), where=str(config)) if config else PretrainConfig()
    model_dir = run(out, cfg, seed=seed, resume=resume, log=typer.echo)
    typer.echo(f"toy model written to {model_dir}; copy it to sdxl_probe/toy/weights/ to ship it")


@toy_app.command("evaluate")
def evaluate(
    out: Path = typer.Option(Path("reports/toy-eval"), "--out", help="Folder for evaluate.json and PNG grids."),
    model: str = typer.Option("toy", "--model", help='"toy" or a diffusers folder / SDXL-architecture file.'),
    n_prompts: int = typer.Option(212, "--n-prompts", help="Size of the fixed prompt set (>= 200 for the bars)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt set, the noise and the attention images."),
    steps: int = typer.Option(20, "--steps", help="Euler steps per image."),
    cfg: float = typer.Option(5.0, "--guidance", "--cfg", help="Classifier-free guidance scale (--cfg: old name)."),
    n_attention: int = typer.Option(64, "--n-attention", help="Training images for the attention IoU check."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Score a model on the toy world with the judge and print every acceptance figure."""
    from sdxl_probe.commands.bounds import ToyEvaluateOptions
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import output_folder, preflight_folder

    gate(ToyEvaluateOptions, n_prompts=n_prompts, seed=seed, steps=steps, guidance=cfg, n_attention=n_attention)
    preflight_folder(out, owns=("evaluate.json",))
    from sdxl_probe.pipeline.checks import check_steps
    from sdxl_probe.pipeline.device import load_model, open_model
    from sdxl_probe.probes.toy_eval.core import evaluate_model
    from sdxl_probe.probes.toy_eval.report import write_outputs

    configs, precision = open_model(model, device, dtype)
    check_steps(steps, configs["scheduler"])
    components = load_model(model, precision)
    typer.echo(f"model on {precision.describe()}")
    result, images, prompts = evaluate_model(components, n_prompts=n_prompts, seed=seed, steps=steps, cfg=cfg,
                                             n_attention=n_attention, log=typer.echo)
    with output_folder(out, owns=("evaluate.json",)) as tmp:  # result, grids and page swapped in together
        write_outputs(tmp, result, images, prompts)
    typer.echo(f"toy model evaluation of {result.model}" if result.is_toy else f"evaluation of {result.model}")
    for name, value, verdict in result.acceptance():
        typer.echo(f"  {name:24s} {value:6.3f}  {verdict}")
    typer.echo(f"wrote {out}/evaluate.json and grids")
