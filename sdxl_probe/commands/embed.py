"""``sdxl-probe embed``: tags versus sentences, per text encoder (a thin layer over probes.embed)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdxl_probe.commands.model_options import device_option, dtype_option

TEXT_PARTS = ("text_encoder", "text_encoder_2")


def embed(
    pair: list[str] = typer.Option([], "--pair", help='A caption pair "tags|||sentence" (repeatable).'),
    csv: Path | None = typer.Option(None, "--csv", help="A CSV file with 'tags' and 'sentence' columns."),
    tags_list: Path | None = typer.Option(
        None, "--tags-list", help="Tag captions, one per line (with --sentences-list)."
    ),
    sentences_list: Path | None = typer.Option(
        None, "--sentences-list", help="Sentence captions, one per line."
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="A dataset folder with two caption files per image."
    ),
    ext_a: str = typer.Option(".tags.txt", "--ext-a", help="Tag caption extension in --dataset."),
    ext_b: str = typer.Option(".txt", "--ext-b", help="Sentence caption extension in --dataset."),
    toy_pairs: int = typer.Option(
        0, "--toy-pairs", help="Use N seeded toy-world scenes captioned both ways."
    ),
    model: str = typer.Option(
        "toy", "--model", help='"toy", or an SDXL .safetensors file or diffusers folder.'
    ),
    out: Path = typer.Option(
        Path("reports/embed"), "--out", help="Folder for embed.json, embed.csv and embed.html."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A TOML file with an \\[embed] table of settings."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for pairings, shuffles and samples (overrides config)."
    ),
    shuffles: int | None = typer.Option(
        None, "--shuffles", help="K tag shuffles per caption (overrides config)."
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Encoding cache folder (default ~/.cache/sdxl-probe)."
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Encode everything again, without reading or writing the cache."
    ),
) -> None:
    """Measure how far tag and sentence captions land apart in TE1, TE2, the pooled vector and the context."""
    from sdxl_probe.commands.bounds import EmbedOptions
    from sdxl_probe.commands.embed_options import gather_pairs, resolve_settings
    from sdxl_probe.options import gate
    from sdxl_probe.outputs import output_folder, preflight_folder
    from sdxl_probe.pipeline.device import load_model, open_model
    from sdxl_probe.pipeline.encoding_cache import EncodingCache, default_cache_dir
    from sdxl_probe.probes.embed.core import RESULT_JSON, run_embed
    from sdxl_probe.probes.embed.report import render_report

    gate(EmbedOptions, seed=seed, shuffles=shuffles, toy_pairs=toy_pairs, ext_a=ext_a, ext_b=ext_b)
    settings = resolve_settings(config, seed=seed, shuffles=shuffles)
    preflight_folder(out, owns=(RESULT_JSON,))
    _, precision = open_model(model, device, dtype)
    pairs, label = gather_pairs(
        pair,
        csv,
        tags_list,
        sentences_list,
        dataset,
        ext_a,
        ext_b,
        toy_pairs,
        seed=settings.seed,
        log=typer.echo,
    )
    components = load_model(model, precision, parts=TEXT_PARTS, identity=True)  # the text encoders alone
    typer.echo(f"text encoders on {precision.describe()}")
    cache = None
    if not no_cache:
        cache = EncodingCache(cache_dir or default_cache_dir(), components.model_hash(), precision.dtype)
    result = run_embed(components, pairs, settings, cache=cache, dataset=label, log=typer.echo)
    with output_folder(out, owns=(RESULT_JSON,)) as tmp:  # data and page swapped in together
        result.save(tmp)
        page = out / render_report(tmp).name
    for line in result.summary:
        typer.echo(f"- {line}")
    typer.echo(f"wrote {out / 'embed.json'}, {out / 'embed.csv'}, {page}")


def register(app: typer.Typer) -> None:
    """Add the ``embed`` command to ``app``."""
    app.command("embed")(embed)
