"""Token probe: what each SDXL text encoder receives for one caption (pure Python, no torch).

For a caption (optionally run through the kohya caption pipeline with a seeded RNG for
shuffle/keep_tokens) it reports, per encoder, the chunked id grid exactly as sd-scripts feeds
it, which tags the chosen ``max_token_length`` cuts, and where the pooled vector stops seeing
(it is built from the first chunk only: caption tokens 1..75).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from sdxl_probe.io import write_json
from sdxl_probe.probes.audit.caption import tag_positions
from sdxl_probe.text.tokens import ENCODERS, chunk_layout, tokenize_caption


@dataclasses.dataclass
class EncoderView:
    """One encoder's input for the caption.

    Attributes:
        encoder: ``te1`` or ``te2``.
        n_tokens: raw caption token count (no BOS/EOS).
        input_ids: (n_chunks, model_max_length) ids exactly as fed.
        weights: (n_chunks, model_max_length) per-slot weights.
        context_length: joined context length (77, 152 or 227).
        lost_tags: texts of tags wholly or partly cut.
        lost_tag_indices: their indices in the caption's tag list.
    """

    encoder: str
    n_tokens: int
    input_ids: list[list[int]]
    weights: list[list[float]]
    context_length: int
    lost_tags: list[str]
    lost_tag_indices: list[int]


@dataclasses.dataclass
class TokensResult:
    """The token probe's result; ``tokens`` and ``tags`` are per-item dicts (see :func:`probe_tokens`)."""

    caption: str
    processed_caption: str
    max_token_length: int | None
    weighted: bool
    pooled_limit: int
    capacity: int
    tokens: list[dict[str, Any]]
    tags: list[dict[str, Any]]
    te1: EncoderView
    te2: EncoderView

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TokensResult:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["te1"], data["te2"] = EncoderView(**data["te1"]), EncoderView(**data["te2"])
        return cls(**data)


def probe_tokens(
    caption: str,
    *,
    max_token_length: int | None = None,
    options: Any = None,
    seed: int = 0,
    weighted: bool = False,
    model_max_length: int = 77,
) -> TokensResult:
    """Tokenize and chunk ``caption`` for both SDXL encoders as sd-scripts does.

    Args:
        caption: the caption text.
        max_token_length: None (75), 150 or 225 (sd-scripts ``--max_token_length``).
        options: a ``CaptionOptions``; when given, the caption first goes through
            ``process_caption`` with ``random.Random(seed)`` (shuffle, keep_tokens, ...).
        seed: seed of that RNG.
        weighted: parse weighted syntax ``(tag:1.2)``.
        model_max_length: the tokenizer's ``model_max_length`` (77 for both SDXL tokenizers).
    """
    separator = getattr(options, "caption_separator", ",")
    text = caption
    if options is not None:
        from sdxl_probe.text.captions import process_caption

        text = process_caption(caption, options, random.Random(seed))
    tc = tokenize_caption(text, weighted=weighted, separator=separator)
    layouts = {e: chunk_layout(tc, encoder=e, max_token_length=max_token_length, model_max_length=model_max_length)
               for e in ENCODERS}  # fmt: skip
    pooled = model_max_length - 2
    capacity = layouts["te1"].context_length - 2
    views = {e: _view(tc, lay) for e, lay in layouts.items()}
    return TokensResult(
        caption=caption,
        processed_caption=text,
        max_token_length=max_token_length,
        weighted=weighted,
        pooled_limit=pooled,
        capacity=capacity,
        tokens=_token_rows(tc, layouts["te1"], pooled),
        tags=_tag_rows(tc, capacity, pooled),
        te1=views["te1"],
        te2=views["te2"],
    )


def _view(tc, lay) -> EncoderView:
    return EncoderView(
        encoder=lay.encoder,
        n_tokens=lay.n_tokens,
        input_ids=lay.input_ids,
        weights=lay.weights,
        context_length=lay.context_length,
        lost_tags=[tc.tags[i][0] for i in lay.lost_tags],
        lost_tag_indices=list(lay.lost_tags),
    )


def _token_rows(tc, lay, pooled: int) -> list[dict[str, Any]]:
    from sdxl_probe.text.bpe import get_bpe

    bpe = get_bpe()
    rows = []
    for i, tok in enumerate(tc.tokens):
        pos = lay.positions[i]
        rows.append({"id": tok.id, "piece": bpe.decode([tok.id]), "text": tok.text, "tag": tok.tag,
                     "weight": tok.weight, "position": pos, "chunk": lay.chunk_of[i],
                     "cut": pos is None, "pooled_sees": pos is not None and pos <= pooled})  # fmt: skip
    return rows


def _tag_rows(tc, capacity: int, pooled: int) -> list[dict[str, Any]]:
    first, last = tag_positions(tc)
    rows = []
    for (text, start, end), f, l_ in zip(tc.tags, first, last, strict=True):
        rows.append({"text": text, "start": start, "end": end, "first": f, "last": l_,
                     "status": _status(f, l_, capacity), "pooled": _status(f, l_, pooled)})  # fmt: skip
    return rows


def _status(first: int | None, last: int | None, limit: int) -> str:
    """``kept`` / ``partly cut`` / ``cut`` for a tag's token span against a limit (``empty``: no tokens)."""
    if first is None or last is None:
        return "empty"
    if last <= limit:
        return "kept"
    return "cut" if first > limit else "partly cut"


def render_terminal(result: TokensResult, console: Any) -> None:
    """Print the probe with rich: token strip with chunk/pooled/cut markers, tag table, per-encoder grids."""
    from rich.table import Table

    limit = result.max_token_length or result.pooled_limit
    console.print(
        f"[bold]caption[/] ({len(result.tokens)} tokens, limit {limit}):", _text(result.processed_caption)
    )
    if result.processed_caption != result.caption:
        console.print(
            "[dim]after the caption pipeline (shuffle/keep_tokens, seeded); original:[/]",
            _text(result.caption),
        )
    console.print(token_strip(result))
    table = Table(title="tags", show_lines=False)
    for col in ("#", "tag", "tokens", f"at limit {limit}", f"pooled (first {result.pooled_limit})"):
        table.add_column(col)
    for i, tag in enumerate(result.tags):
        span = "–" if tag["first"] is None else f"{tag['first']}–{tag['last']}"
        table.add_row(
            str(i), _text(tag["text"]), span, _styled_status(tag["status"]), _styled_status(tag["pooled"])
        )
    console.print(table)
    for view in (result.te1, result.te2):
        console.print(encoder_summary(view, result))


def token_strip(result: TokensResult) -> Any:
    """A rich Text of all tokens: green = seen by everything, yellow = past the pooled limit, red = cut."""
    from rich.text import Text

    strip = Text()
    chunk = None
    for tok in result.tokens:
        if tok["chunk"] != chunk and tok["chunk"] is not None:
            chunk = tok["chunk"]
            strip.append(f" ┃chunk {chunk + 1}┃ ", style="bold cyan")
        if tok["position"] is None and (not strip.plain.endswith("✂ cut: ")):
            strip.append(" ✂ cut: ", style="bold red")
        style = "green" if tok["pooled_sees"] else "red strike" if tok["cut"] else "yellow"
        strip.append(tok["piece"].strip() or "·", style=style)
        if tok["weight"] != 1.0:
            strip.append(f"^{tok['weight']:.2f}", style="magenta")
        strip.append(" ")
        if tok["position"] == result.pooled_limit and len(result.tokens) > result.pooled_limit:
            strip.append("⟂ pooled vector stops here ", style="bold yellow")
    return strip


def encoder_summary(view: EncoderView, result: TokensResult) -> str:
    """One paragraph per encoder: context, chunks, pad id, lost tags."""
    pad = view.input_ids[-1][-1]
    lost = ", ".join(repr(t) for t in view.lost_tags) or "none"
    lines = [f"[bold]{view.encoder}[/]: {view.n_tokens} tokens -> {len(view.input_ids)} chunk(s) x "
             f"{len(view.input_ids[0])} ids, context {view.context_length}, last slot id {pad}; lost tags: {_escape(lost)}"]  # fmt: skip
    for k, row in enumerate(view.input_ids):
        lines.append(f"  chunk {k + 1}: {row[:6]} … {row[-4:]}")
    return "\n".join(lines)


def _styled_status(status: str) -> str:
    colour = {"kept": "green", "partly cut": "yellow", "cut": "red"}.get(status, "dim")
    return f"[{colour}]{status}[/]"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _text(text: str) -> Any:
    from rich.text import Text

    return Text(text)
