"""``sdxl-probe memorization``: memorization scores across a run's checkpoints (a thin layer over probes.memorization)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option


def memorization(
    run_dir: Path | None = typer.Argument(None, help="A run folder written by `sdxl-probe train`."),
    out: Path | None = typer.Option(None, "--out", help="Result folder (default RUN_DIR/memorization)."),
    seeds: int = typer.Option(8, "--seeds", help="Generations per caption."),
    steps: int = typer.Option(20, "--steps", help="Sampler steps."),
    checkpoints: str = typer.Option("all", "--checkpoints", help="all, or last: which checkpoints to score."),
    model: str | None = typer.Option(None, "--model", help="Base model (default: the run's config.json model source)."),
    lora: list[Path] = typer.Option([], "--lora", help="A LoRA file to score instead of RUN_DIR (repeatable)."),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="The training images: required with --lora; with RUN_DIR, where they lie now."
    ),
    cfg: float = typer.Option(5.0, "--cfg", help="Guidance scale."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per sampler batch."),
    sensitivity_seeds: int = typer.Option(
        4, "--sensitivity-seeds", help="Seeds per caption of the caption-sensitivity probes (0 skips them)."
    ),
    significance_captions: int = typer.Option(
        8, "--significance-captions", help="Training captions whose token significance is computed (0 skips it)."
    ),
    features_model: str = typer.Option(
        "", "--features-model", help="open_clip architecture (e.g. ViT-B-32) of the copy cosine (default: VAE latents)."
    ),
    features_weights: Path | None = typer.Option(
        None, "--features-weights", help="Its state dict as .safetensors (pickles and TorchScript are refused)."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Generation cache (default OUT_cache)."),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Score how much each checkpoint copies its training images, and recommend the one to keep."""
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.probes.memorization.core import measure, measure_files
    from sdxl_probe.probes.memorization.settings import MemorizationSettings

    options = {"seeds": seeds, "steps": steps, "cfg": cfg, "batch_size": batch_size,
               "sensitivity_seeds": sensitivity_seeds, "significance_captions": significance_captions,
               "features_model": features_model, "features_weights": str(features_weights or "")}  # fmt: skip
    MemorizationSettings.checked(checkpoints=checkpoints, **options)  # bounds first, before any file is read
    common = {"log": typer.echo, "device": device, "dtype": dtype, "cache_dir": cache_dir}
    if run_dir is not None and lora:
        raise ProbeError("pass either RUN_DIR or --lora FILE ... with --dataset and --model, not both")
    if run_dir is not None:
        out = out or run_dir / "memorization"
        result = measure(run_dir, out, checkpoints=checkpoints, model=model, dataset=dataset, **options, **common)
    elif lora and dataset is not None and model is not None:
        out = out or Path("reports/memorization")
        result = measure_files(lora, dataset, out, model=model, **options, **common)
    else:
        raise ProbeError("nothing to score: pass RUN_DIR, or --lora FILE (repeatable) with --dataset DIR and --model M")
    rec = result.recommended
    typer.echo(f"recommended checkpoint: step {rec['step']} ({rec['rule']})")
    typer.echo(f"wrote {out / 'memorization.json'}, {out / 'memorization.csv'}, {out / 'memorization.html'}")


def register(app: typer.Typer) -> None:
    """Add the ``memorization`` command to ``app``."""
    app.command("memorization")(memorization)
