"""`sdxl-probe tokens "CAPTION"`: what each SDXL text encoder sees of one caption (no torch)."""

from __future__ import annotations

import json

import typer


def tokens(
    caption: str = typer.Argument(..., help="The caption to inspect."),
    max_token_length: int | None = typer.Option(None, "--max-token-length", help="75 (default), 150 or 225."),
    keep_tokens: int = typer.Option(0, "--keep-tokens", help="Leading tags kept in place by --shuffle."),
    shuffle: bool = typer.Option(False, "--shuffle", help="Shuffle tags as sd-scripts' shuffle_caption."),
    seed: int = typer.Option(0, "--seed", help="Seed of the caption pipeline's RNG."),
    caption_separator: str = typer.Option(",", "--caption-separator", help="Tag separator."),
    keep_tokens_separator: str = typer.Option(
        "", "--keep-tokens-separator", help="sd-scripts keep_tokens_separator."
    ),
    caption_tag_dropout_rate: float = typer.Option(
        0.0, "--caption-tag-dropout-rate", help="Per-tag dropout."
    ),
    weighted: bool = typer.Option(False, "--weighted", help="Parse weighted syntax (tag:1.2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Show the tokens of CAPTION per text encoder: chunks, what is cut, where the pooled vector stops."""
    from sdxl_probe.commands.bounds import TokensOptions
    from sdxl_probe.options import gate
    from sdxl_probe.probes.tokens.core import probe_tokens, render_terminal
    from sdxl_probe.text.captions import CaptionOptions

    gate(TokensOptions, max_token_length=max_token_length, keep_tokens=keep_tokens, seed=seed,
         caption_separator=caption_separator, caption_tag_dropout_rate=caption_tag_dropout_rate)  # fmt: skip
    if max_token_length == 75:
        max_token_length = None
    options = CaptionOptions(
        keep_tokens=keep_tokens, shuffle_caption=shuffle, caption_separator=caption_separator,
        keep_tokens_separator=keep_tokens_separator or None, caption_tag_dropout_rate=caption_tag_dropout_rate,
    )  # fmt: skip
    result = probe_tokens(
        caption, max_token_length=max_token_length, options=options, seed=seed, weighted=weighted
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console

    render_terminal(result, Console(highlight=False))


def register(app: typer.Typer) -> None:
    app.command("tokens")(tokens)
