"""``sdxl-probe train CONFIG.toml`` (or ``--from-kohya ARGS.toml``): train a kohya-compatible LoRA (sdxl_probe/train/lora)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(None, help="Trainer TOML (configs/train_toy.toml); optional with --resume."),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set training.max_train_steps=100."),
    resume: Path = typer.Option(None, "--resume", help="Continue the run in RUN_DIR from its latest state."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config and exit."),
    from_kohya: Path = typer.Option(None, "--from-kohya", help="An sd-scripts --config_file TOML (sdxl_train_network.py) "
                                    "instead of CONFIG: prints where each key went, names every unsupported one."),
    write_config: Path = typer.Option(None, "--write-config", help="Write the resolved config as our TOML and exit."),
) -> None:
    """Train a LoRA; writes kohya .safetensors, metrics.jsonl, the resolved config and the dataset manifest.

    Data-parallel: ``accelerate launch --multi_gpu --num_processes N -m sdxl_probe train CONFIG`` (GPUs;
    gloo with ``[training] device = "cpu"``); the main process writes every output.
    """
    from sdxl_probe.errors import ConfigError
    from sdxl_probe.train.lora.config import load_run_config, load_train_config, to_toml

    if config is None and resume is None and from_kohya is None:
        raise ConfigError("give CONFIG.toml, --from-kohya ARGS.toml, or --resume RUN_DIR to continue a run")
    if config is not None and from_kohya is not None:
        raise ConfigError("give CONFIG.toml or --from-kohya ARGS.toml, not both")
    extra = [f"saving.output_dir={resume}"] if resume else []
    if from_kohya is not None:
        cfg = _from_kohya(from_kohya, list(overrides) + extra)
    elif config is not None:
        cfg = load_train_config(config, list(overrides) + extra)
    else:
        cfg = load_run_config(resume, list(overrides))
    if write_config is not None:
        from sdxl_probe.io import write_text

        typer.echo(f"# wrote {write_text(write_config, to_toml(cfg))}")
    if print_config:
        typer.echo(to_toml(cfg))
    if print_config or write_config is not None:
        return
    from sdxl_probe.train.lora.loop import train as run_training

    run_dir = Path(resume) if resume else Path(cfg.saving.output_dir)
    out = run_training(cfg, run_dir, resume=resume is not None, log=typer.echo)
    from accelerate.state import PartialState

    if PartialState().is_main_process:  # accelerate launch: one line, not one per process
        typer.echo(f"wrote {out} (kohya LoRA); metrics in {run_dir / 'metrics.jsonl'}")


def _from_kohya(path: Path, overrides: list[str]):
    """Translate an sd-scripts config; the mapping is printed as TOML comments (``--print-config`` stays TOML)."""
    from sdxl_probe.train.lora.kohya_import import import_kohya, kohya_train_config, mapping_lines

    imported = import_kohya(path)
    typer.echo(f"# {path}: {len(imported.mapped)} mapped, {len(imported.matched)} matched, "
               f"{len(imported.unsupported)} unsupported")  # fmt: skip
    for line in mapping_lines(imported):
        typer.echo(f"# {line}")
    return kohya_train_config(imported, path, overrides)


def register(app: typer.Typer) -> None:
    """Add ``train`` to the CLI."""
    app.command("train")(train)
