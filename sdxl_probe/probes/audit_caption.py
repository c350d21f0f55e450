"""Per-caption audit: token counts, cuts at each limit, lost tags, trigger/kept positions, style.

Positions are *context positions* as sd-scripts feeds them: BOS is 0, so the first caption token
is at 1 and "past token 75" means position > 75 (outside the first chunk; the pooled vector,
built from the first chunk only, never sees it).
"""

from __future__ import annotations

import dataclasses
import re

from sdxl_probe.text.tokens import TokenizedCaption, chunk_layout, split_tags

SENTENCE_MIN_WORDS = 5
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
STYLE_RULE = (
    f"The caption is split on the separator. A piece is sentence-like if it has at least {SENTENCE_MIN_WORDS} words "
    "or ends a sentence with '.', '!' or '?'. tags: no sentence-like piece. sentences: at least one "
    "sentence-like piece and at most one short piece. mixed: at least one sentence-like piece and two or "
    "more short pieces. empty: no text."
)


@dataclasses.dataclass
class CaptionAudit:
    """What the audit measures for one caption.

    Attributes:
        n_tokens: raw token count per encoder (no BOS/EOS), keys ``te1``/``te2``.
        lost: limit -> texts of tags wholly or partly cut at that limit (te1 layout).
        tags: tag texts (stripped), in written order.
        tag_first / tag_last: context position of each tag's first / last token (None: no tokens).
        trigger_pos: context position of the trigger's first token; None when absent.
        kept_end: context position of the last token of the kept tags; None when keep_tokens is 0.
        style: ``tags`` | ``sentences`` | ``mixed`` | ``empty``.
    """

    n_tokens: dict[str, int]
    lost: dict[int, list[str]]
    tags: list[str]
    tag_first: list[int | None]
    tag_last: list[int | None]
    trigger_pos: int | None
    kept_end: int | None
    style: str


def audit_caption(
    tc: TokenizedCaption, *, limits: tuple[int, ...], trigger: str | None, keep_tokens: int, separator: str
) -> CaptionAudit:
    """Audit one tokenized caption at every limit in ``limits`` (75, 150, 225 caption tokens)."""
    n_tokens, lost = {}, {}
    for limit in limits:
        mtl = None if limit == limits[0] else limit
        layouts = {enc: chunk_layout(tc, encoder=enc, max_token_length=mtl) for enc in ("te1", "te2")}
        n_tokens = {enc: lay.n_tokens for enc, lay in layouts.items()}
        lost[limit] = [tc.tags[i][0] for i in layouts["te1"].lost_tags]
    first, last = tag_positions(tc)
    kept_end = None
    if keep_tokens > 0 and tc.tags:
        kept = [p for p in last[:keep_tokens] if p is not None]
        kept_end = max(kept) if kept else None
    return CaptionAudit(
        n_tokens=n_tokens,
        lost=lost,
        tags=[t[0] for t in tc.tags],
        tag_first=first,
        tag_last=last,
        trigger_pos=trigger_position(tc, trigger),
        kept_end=kept_end,
        style=caption_style(tc.caption, separator),
    )


def tag_positions(tc: TokenizedCaption) -> tuple[list[int | None], list[int | None]]:
    """Context position of the first and last token inside each tag's text (None: no tokens).

    A separator token belongs to no tag here: only tokens overlapping the stripped tag text count
    (the same overlap rule as ``chunk_layout``'s ``lost_tags``).
    """
    first: list[int | None] = [None] * len(tc.tags)
    last: list[int | None] = [None] * len(tc.tags)
    for i, tok in enumerate(tc.tokens):
        for k in (tok.tag, tok.tag + 1):
            if 0 <= k < len(tc.tags):
                _, start, end = tc.tags[k]
                if start < end and tok.start < end and tok.end > start:
                    if first[k] is None:
                        first[k] = i + 1
                    last[k] = i + 1
    return first, last


def trigger_position(tc: TokenizedCaption, trigger: str | None) -> int | None:
    """Context position of the first token of ``trigger`` (a whole word, case-insensitive)."""
    if not trigger:
        return None
    match = re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", tc.caption, re.IGNORECASE)
    if match is None:
        return None
    for i, tok in enumerate(tc.tokens):
        if tok.end > match.start():
            return i + 1
    return None


def caption_style(caption: str, separator: str = ",") -> str:
    """Classify a caption as ``tags``, ``sentences``, ``mixed`` or ``empty`` (rule: :data:`STYLE_RULE`)."""
    pieces = [p.strip() for p in caption.split(separator) if p.strip()]
    if not pieces:
        return "empty"
    long = sum(1 for p in pieces if len(p.split()) >= SENTENCE_MIN_WORDS or _SENTENCE_END.search(p))
    if long == 0:
        return "tags"
    return "sentences" if len(pieces) - long <= 1 else "mixed"


def normalize_caption(caption: str, separator: str = ",") -> str:
    """Key for duplicate detection: lowercase, whitespace collapsed, tags stripped, empty tags dropped."""
    pieces = (" ".join(p.split()).lower() for p in caption.split(separator))
    return ", ".join(p for p in pieces if p)


@dataclasses.dataclass
class TagLayout:
    """A caption whose ids are exactly its tags' ids joined by the separator's ids.

    Attributes:
        tags: ``(text stripped, start, end)`` per tag (``text.tokens.split_tags``).
        lengths: token count of each tag.
        first / last: context position of each tag's first / last token (None: no tokens).
        n_tokens: caption token count (no BOS/EOS).
    """

    tags: list[tuple[str, int, int]]
    lengths: list[int]
    sep_tokens: int
    first: list[int | None]
    last: list[int | None]
    n_tokens: int


def tag_layout(caption: str, separator: str, encode, encode_caption=None) -> TagLayout | None:
    """Token positions of every tag from cached per-tag encodes, or None when not exact.

    CLIP BPE never merges across whitespace, so a caption's ids are usually its tags' ids joined
    by the separator's ids. This builds the layout from ``encode(tag)`` (word-cached, fast) and
    returns it only if that concatenation equals ``encode(caption)`` id for id; otherwise the
    caller falls back to ``tokenize_caption`` + ``chunk_layout``. Tests check both paths agree.

    Args:
        encode: ``ClipBPE.encode`` (str -> ids, no BOS/EOS), possibly cached per tag.
        encode_caption: encoder for the whole caption (default ``encode``); pass an uncached one
            so that unique captions do not fill a tag cache.
    """
    tags, _ = split_tags(caption, separator)
    sep_ids = encode(separator)
    joined: list[int] = []
    lengths, first, last = [], [], []
    for i, (text, _, _) in enumerate(tags):
        if i:
            joined += sep_ids
        ids = encode(text)
        lengths.append(len(ids))
        first.append(len(joined) + 1 if ids else None)
        joined += ids
        last.append(len(joined) if ids else None)
    if joined != (encode_caption or encode)(caption):
        return None
    return TagLayout(tags, lengths, len(sep_ids), first, last, len(joined))


def audit_tag_layout(
    caption: str, lay: TagLayout, *, limits: tuple[int, ...], trigger: str | None, keep_tokens: int, separator: str, encode
) -> CaptionAudit:
    """:func:`audit_caption` for a caption with an exact :class:`TagLayout` (same result, no spans needed)."""
    lost = {limit: [t[0] for t, last in zip(lay.tags, lay.last) if last is not None and last > limit] for limit in limits}
    kept_end = None
    if keep_tokens > 0 and lay.tags:
        kept = [p for p in lay.last[:keep_tokens] if p is not None]
        kept_end = max(kept) if kept else None
    return CaptionAudit(
        n_tokens={"te1": lay.n_tokens, "te2": lay.n_tokens},
        lost=lost,
        tags=[t[0] for t in lay.tags],
        tag_first=lay.first,
        tag_last=lay.last,
        trigger_pos=_layout_trigger(caption, lay, trigger, encode),
        kept_end=kept_end,
        style=caption_style(caption, separator),
    )


def _layout_trigger(caption: str, lay: TagLayout, trigger: str | None, encode) -> int | None:
    if not trigger:
        return None
    match = re.search(rf"(?<!\w){re.escape(trigger)}(?!\w)", caption, re.IGNORECASE)
    if match is None:
        return None
    for (text, start, end), first in zip(lay.tags, lay.first):
        if start <= match.start() < end and first is not None:
            return first + len(encode(caption[start : match.start()]))
    return None


class CachedEncoder:
    """``ClipBPE.encode`` behind a bounded per-text cache: dataset tags repeat massively.

    The cache is cleared when it reaches ``max_entries``, so memory stays bounded on a
    1M-caption stream. Returned lists are shared: callers must not mutate them.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        from sdxl_probe.text.bpe import get_bpe

        self.uncached = get_bpe().encode
        self._cache: dict[str, list[int]] = {}
        self.max_entries = max_entries

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            ids = self._cache[text] = self.uncached(text)
        return ids
