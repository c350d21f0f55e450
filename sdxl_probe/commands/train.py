"""``sdxl-probe train CONFIG.toml``: train a kohya-compatible LoRA (sdxl_probe/train/lora)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(None, help="Trainer TOML (configs/train_toy.toml); optional with --resume."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set training.max_train_steps=100."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in RUN_DIR from its latest state."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
) -> None:
    """Train a LoRA; writes kohya .safetensors, metrics.jsonl, the resolved config and the dataset manifest."""
    from sdxl_probe.errors import ConfigError
    from sdxl_probe.train.lora.config import load_run_config, load_train_config, to_toml

    if config is None and resume is None:
        raise ConfigError("give CONFIG.toml, or --resume RUN_DIR to continue a run")
    if config is not None:
        cfg = load_train_config(config, list(overrides) + ([f"saving.output_dir={resume}"] if resume else []))
    else:
        cfg = load_run_config(resume, list(overrides))
    if print_config:
        typer.echo(to_toml(cfg))
        return
    from sdxl_probe.train.lora.loop import train as run_training

    run_dir = Path(resume) if resume else Path(cfg.saving.output_dir)
    out = run_training(cfg, run_dir, resume=resume is not None, log=typer.echo)
    typer.echo(f"wrote {out} (kohya LoRA); metrics in {run_dir / 'metrics.jsonl'}")


def register(app: typer.Typer) -> None:
    """Add ``train`` to the CLI."""
    app.command("train")(train)
