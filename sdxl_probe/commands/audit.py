"""`sdxl-probe audit DATASET`: what the text encoders never see, caption by caption."""

from __future__ import annotations

from pathlib import Path

import typer


def audit(
    dataset: Path = typer.Argument(
        ..., help="kohya folder (N_name subfolders), dataset .toml, metadata.jsonl/.json or .csv."
    ),
    name: str | None = typer.Option(None, "--name", help="Report name (default: the dataset's name)."),
    out: Path = typer.Option(
        Path("reports"), "--out", help="Reports folder; writes <out>/<name>/index.html."
    ),
    caption_extension: str | None = typer.Option(
        None, "--caption-extension", help=".txt, .caption, ... (default: .caption if present, else .txt)."
    ),
    max_token_length: int | None = typer.Option(
        None, "--max-token-length", help="Training limit: 75 (default), 150 or 225."
    ),
    keep_tokens: int | None = typer.Option(None, "--keep-tokens", help="kohya keep_tokens (tags)."),
    shuffle: bool | None = typer.Option(None, "--shuffle/--no-shuffle", help="kohya shuffle_caption."),
    caption_separator: str | None = typer.Option(
        None, "--caption-separator", help="Tag separator (default ',')."
    ),
    keep_tokens_separator: str | None = typer.Option(
        None, "--keep-tokens-separator", help="kohya keep_tokens_separator."
    ),
    trigger: str | None = typer.Option(None, "--trigger", help="Trigger word whose position is reported."),
    weighted: bool = typer.Option(False, "--weighted", help="Parse weighted syntax (tag:1.2)."),
    seed: int = typer.Option(0, "--seed", help="Seed for Monte Carlo shuffles."),
    samples: int = typer.Option(
        64, "--samples", help="Random orders per caption when Monte Carlo is needed."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop with an error on a bad record (unreadable, not UTF-8, malformed) instead of skipping it."
    ),
) -> None:
    """Audit a caption dataset: token counts, cuts at 75/150/225, lost tags, pooled-blind tags, shuffle effects."""
    from sdxl_probe.commands.bounds import AuditOptions
    from sdxl_probe.data.dataset import open_dataset
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import output_folder
    from sdxl_probe.probes.audit.core import RESULT_FILE, AuditSettings, run_audit
    from sdxl_probe.probes.audit.report import render_report
    from sdxl_probe.report import ReportHeader

    gate(AuditOptions, name=name, max_token_length=max_token_length, keep_tokens=keep_tokens,
         caption_separator=caption_separator, seed=seed, samples=samples, caption_extension=caption_extension)
    settings = AuditSettings(max_token_length=None if max_token_length == 75 else max_token_length,
                             trigger=trigger, weighted=weighted, seed=seed, shuffle_samples=samples)  # fmt: skip
    cli = {"keep_tokens": keep_tokens, "shuffle_caption": shuffle, "caption_separator": caption_separator,
           "keep_tokens_separator": keep_tokens_separator}  # fmt: skip
    ds = open_dataset(dataset, caption_extension=caption_extension, cli_defaults=cli)
    name = name or (dataset.resolve().name if dataset.is_dir() else dataset.stem) or "dataset"
    header = ReportHeader(f"Caption audit: {name}", dataset=str(dataset), config={**vars(settings), **cli})
    with output_folder(out / name, owns=(RESULT_FILE,)) as tmp:
        result = run_audit(ds, tmp, settings, name=name, header=header.to_dict())
        if strict:
            _refuse_bad_records(ds.issues.to_dict())
        page = out / name / render_report(tmp).name
    for kind, info in result.stats["issues"].items():
        typer.secho(
            f"warning: {info['count']} x {kind}: {info['examples'][0]['message']}", err=True, fg="yellow"
        )
    cut = result.stats["cut"][str(settings.limit)]
    typer.echo(
        f"{result.n_captions} captions; {cut['count']} ({100 * cut['fraction']:.1f}%) cut at {settings.limit} tokens"
    )
    typer.echo(f"report: {page}")


def _refuse_bad_records(issues: dict) -> None:
    """Under ``--strict``: one error naming how many records were bad, and the first of them."""
    from sdxl_probe.data.records import RECORD_ERRORS
    from sdxl_probe.errors import DatasetError

    bad = {kind: info for kind, info in issues.items() if kind in RECORD_ERRORS}
    if bad:
        total = sum(info["count"] for info in bad.values())
        first = next(iter(bad.values()))["examples"][0]["message"]
        raise DatasetError(f"--strict: {total} bad record(s) ({', '.join(bad)}); first: {first}; "
                           "fix them, or run without --strict to skip and count them")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
