"""The `sdxl-probe` command line.

Every command lives in ``sdxl_probe/commands/<name>.py`` and exposes ``register(app)``.
Command modules import only typer at module level; torch, diffusers and open_clip are
imported inside the command functions, so ``sdxl-probe --help`` and ``tokens`` start fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from sdxl_probe import __version__
from sdxl_probe.errors import ProbeError

# Order here is the order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "tokens",
    "audit",
    "model",
    "embed",
    "attention",
    "toy",
    "generate",
    "train",
    "study",
    "memorization",
)


class ProbeApp(typer.Typer):
    """A Typer app that prints user errors as one clean line instead of a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ProbeError as e:
            if not (getattr(e, "every_process", False) and os.environ.get("RANK", "0") != "0"):
                typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)  # once, not once per launched process
            sys.exit(2)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            sys.exit(130)
        except OSError as e:
            from sdxl_probe.outputs import WRITE_ERRNOS

            if e.errno not in WRITE_ERRNOS:
                raise
            where = f" {e.filename}" if e.filename else ""
            typer.secho(f"error: cannot write{where}: {e.strerror or e}; free space or fix permissions, then rerun",
                        err=True, fg=typer.colors.RED)  # fmt: skip
            sys.exit(2)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sdxl-probe {__version__}")
        raise typer.Exit()


def build_app() -> ProbeApp:
    app = ProbeApp(
        name="sdxl-probe",
        help="Measure how captions change SDXL LoRA training.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    ) -> None:
        """Measure how captions change SDXL LoRA training (token audits, probes, studies, reports)."""

    for name in COMMAND_MODULES:
        importlib.import_module(f"sdxl_probe.commands.{name}").register(app)
    return app


app = build_app()


def main() -> None:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 path in a message prints escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    app()


if __name__ == "__main__":
    main()
