"""``sdxl-probe study run|status|report SPEC``: A/B caption studies (sdxl_probe/studies)."""

from __future__ import annotations

from pathlib import Path

import typer

study_app = typer.Typer(help="A/B caption studies: one LoRA per variant and seed, compared with statistics.",
                        no_args_is_help=True)

SPEC_HELP = "Study TOML (studies/tags_vs_sentences.toml)."
SMOKE_HELP = "CI smoke mode: a few steps per run on a tiny dataset, into OUTPUT_DIR-smoke."
OUT_HELP = "Study folder, replacing [study] output_dir (default runs/studies/SPEC_NAME)."


@study_app.command("run")
def run(
    spec: Path = typer.Argument(..., help=SPEC_HELP),
    workers: int = typer.Option(1, "--workers", help="Runs at a time (1: in this process; N: N worker processes)."),
    launcher: str = typer.Option("local", "--launcher", help="local, accelerate (one GPU per worker) or ray."),
    address: str = typer.Option(None, "--address", help="Ray cluster address (auto: the one `ray start` made)."),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
    out: Path = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Train and measure every run of the study that is not done yet, then write its report."""
    from sdxl_probe.errors import ConfigError
    from sdxl_probe.studies.launch import LAUNCHERS
    from sdxl_probe.studies.runner import run_study

    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    if not 1 <= workers <= 1024:
        raise ConfigError(f"--workers {workers}: allowed 1 to 1024; pass e.g. --workers 2")
    run_study(spec, workers=workers, launcher=launcher, address=address, smoke=smoke, out=out, log=typer.echo)


@study_app.command("status")
def status(
    spec: Path = typer.Argument(..., help=SPEC_HELP),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
    out: Path = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Where each run of the study stands: done, trained (metrics missing), partial (resumable) or pending."""
    from sdxl_probe.studies.runner import status as study_status
    from sdxl_probe.studies.spec import load_spec

    rows = study_status(load_spec(spec, out), smoke)
    done = sum(state == "done" for _, state, _ in rows)
    typer.echo(f"{done}/{len(rows)} runs done")
    for run, state, detail in rows:
        typer.echo(f"  {run.label:<32} {state:<8} {detail}".rstrip())


@study_app.command("report")
def report(
    spec: Path = typer.Argument(..., help=SPEC_HELP),
    smoke: bool = typer.Option(False, "--smoke", help=SMOKE_HELP),
    out: Path = typer.Option(None, "--out", help=OUT_HELP),
) -> None:
    """Re-analyse the finished runs and re-render the study's index page (no model is loaded)."""
    from sdxl_probe.studies.report import headline_table, write_report
    from sdxl_probe.studies.spec import load_spec

    loaded = load_spec(spec, out)
    page = write_report(loaded, smoke=smoke)
    import json

    typer.echo(headline_table(json.loads((page.parent / "study.json").read_text(encoding="utf-8"))))
    typer.echo(f"wrote {page}")


def register(app: typer.Typer) -> None:
    """Add ``study`` to the CLI."""
    app.add_typer(study_app, name="study")
