"""Per-caption audit: token counts, cuts at each limit, lost tags, trigger/kept positions, style.

Positions are *context positions* as sd-scripts feeds them: BOS is 0, so the first caption token
is at 1 and "past token 75" means position > 75 (outside the first chunk; the pooled vector,
built from the first chunk only, never sees it).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import re
from functools import lru_cache

from sdxl_probe.text.bpe import is_plain
from sdxl_probe.text.tokens import TokenizedCaption, chunk_layout

SENTENCE_MIN_WORDS = 5
_SENTENCE_END = re.compile(r"[.!?](\s|$)")
STYLE_RULE = (
    f"The caption is split on the separator. A piece is sentence-like if it has at least {SENTENCE_MIN_WORDS} words "
    "or ends a sentence with '.', '!' or '?'. tags: no sentence-like piece. sentences: at least one "
    "sentence-like piece and at most one short piece. mixed: at least one sentence-like piece and two or "
    "more short pieces. empty: no text."
)


@dataclasses.dataclass(slots=True)  # slots: built once per caption, ~30% faster to construct
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
    match = _trigger_regex(trigger).search(tc.caption)
    if match is None:
        return None
    for i, tok in enumerate(tc.tokens):
        if tok.end > match.start():
            return i + 1
    return None


def caption_style(caption: str, separator: str = ",") -> str:
    """Classify a caption as ``tags``, ``sentences``, ``mixed`` or ``empty`` (rule: :data:`STYLE_RULE`)."""
    pieces = [p.strip() for p in caption.split(separator) if p.strip()]
    return _style(len(pieces), sum(1 for p in pieces if _sentence_like(p)))


def _sentence_like(piece: str) -> bool:
    """A stripped, non-empty piece is sentence-like (:data:`STYLE_RULE`)."""
    return len(piece.split()) >= SENTENCE_MIN_WORDS or _SENTENCE_END.search(piece) is not None


def _style(n_pieces: int, n_sentence_like: int) -> str:
    """Style from the count of non-empty pieces and of sentence-like ones (:data:`STYLE_RULE`)."""
    if not n_pieces:
        return "empty"
    if n_sentence_like == 0:
        return "tags"
    return "sentences" if n_pieces - n_sentence_like <= 1 else "mixed"


@lru_cache(maxsize=64)
def _trigger_regex(trigger: str) -> re.Pattern[str]:
    """``trigger`` as a whole word, case-insensitive."""
    return re.compile(rf"(?<!\w){re.escape(trigger)}(?!\w)", re.IGNORECASE)


def normalize_caption(caption: str, separator: str = ",") -> str:
    """Key for duplicate detection: lowercase, whitespace collapsed, tags stripped, empty tags dropped."""
    pieces = (" ".join(p.split()).lower() for p in caption.split(separator))
    return ", ".join(p for p in pieces if p)


@dataclasses.dataclass(slots=True)
class TagLayout:
    """A caption whose ids are exactly its tags' ids joined by the separator's ids.

    Attributes:
        tags: tag texts (caption split on the separator, stripped), empty ones included.
        lengths: token count of each tag.
        sep_tokens: token count of the separator.
        first / last: context position of each tag's first / last token (None: no tokens).
        n_tokens: caption token count (no BOS/EOS).
        order_free: every tag is non-empty and glues cleanly to the separator on both sides, so
            the ids stay the concatenation of the parts in ANY tag order (shuffle).
        sentence_like: how many tags are sentence-like (:data:`STYLE_RULE`); gives the style.
    """

    tags: list[str]
    lengths: list[int]
    sep_tokens: int
    first: list[int | None]
    last: list[int | None]
    n_tokens: int
    order_free: bool = False
    sentence_like: int = 0


# One cached fact sheet per raw tag text (unstripped, as split from the caption):
# (stripped text, token count, exact, token count + separator tokens, sentence-like).
# "exact" means non-empty, plain, and gluing cleanly to the separator on both sides.
TagEntry = tuple[str, int, bool, int, int]


def tag_layout(caption: str, separator: str, encoder: CachedEncoder) -> TagLayout | None:
    """Token positions of every tag from cached per-tag encodes, or None when not exact.

    CLIP BPE encodes whitespace-separated words independently and splits words into pieces by
    character class, so a caption's ids are its tags' ids joined by the separator's ids unless a
    tag merges with a separator glued to it (``"smile!,"``). For plain text with no empty tag it
    is enough that every tag encodes the same with the separator glued on either side (checked
    once per distinct tag, see :meth:`CachedEncoder.tag_entry`); otherwise the joined ids are
    compared with the caption's own ids. None sends the caller to ``tokenize_caption`` +
    ``chunk_layout``; tests check that both paths agree.

    Speed: dataset tags repeat massively, so each tag is one dict hit on its cached
    :data:`TagEntry`, and positions are running sums of the per-tag token counts (C-level
    ``zip``/``accumulate``/``map``), with no tokenization of the caption itself.
    """
    pieces = caption.split(separator)
    table, (n_sep, sep_plain) = encoder.tag_table(separator)
    entries = list(map(table.get, pieces))
    try:
        tags, lengths, exact, steps, long = zip(*entries, strict=True)
    except TypeError:  # a tag not seen yet (None is not iterable): encode it once
        entries = [e or encoder.tag_entry(p, separator) for e, p in zip(entries, pieces, strict=True)]
        tags, lengths, exact, steps, long = zip(*entries, strict=True)
    # Tag k's tokens start after k (tag + separator) steps: first[k] = 1 + sum(steps[:k]).
    first = list(itertools.accumulate(steps, initial=1))
    n_tokens = first.pop() - 1 - n_sep
    last = list(map(operator.sub, first[1:], itertools.repeat(n_sep + 1)))
    last.append(n_tokens)
    clean = all(exact) and (sep_plain or len(pieces) == 1)
    if not clean:  # a tag without tokens has no first/last position
        first = [f if n else None for f, n in zip(first, lengths, strict=True)]
        last = [e if n else None for e, n in zip(last, lengths, strict=True)]
        sep_ids = encoder(separator)
        joined = [i for k, tag in enumerate(tags) for i in (sep_ids if k else []) + encoder(tag)]
        if joined != encoder.uncached(caption):
            return None
    return TagLayout(list(tags), list(lengths), n_sep, first, last, n_tokens, clean, sum(long))


def audit_tag_layout(
    caption: str,
    lay: TagLayout,
    *,
    limits: tuple[int, ...],
    trigger: str | None,
    keep_tokens: int,
    separator: str,
    encode,
) -> CaptionAudit:
    """:func:`audit_caption` for a caption with an exact :class:`TagLayout` (same result, no spans needed)."""
    n, tags = lay.n_tokens, lay.tags
    # Nothing is lost at a limit the caption does not pass (no position exceeds n_tokens).
    lost = {limit: _lost(lay, limit) if n > limit else [] for limit in limits}
    kept_end = None
    if keep_tokens > 0 and tags:
        if lay.order_free:  # ``last`` strictly increases, no None
            kept_end = lay.last[min(keep_tokens, len(tags)) - 1]
        else:
            kept = [p for p in lay.last[:keep_tokens] if p is not None]
            kept_end = max(kept) if kept else None
    return CaptionAudit(
        n_tokens={"te1": n, "te2": n},
        lost=lost,
        tags=tags,
        tag_first=lay.first,
        tag_last=lay.last,
        trigger_pos=_layout_trigger(caption, lay, trigger, encode, separator) if trigger else None,
        kept_end=kept_end,
        style=_style(len(tags) - tags.count(""), lay.sentence_like),
    )


def _lost(lay: TagLayout, limit: int) -> list[str]:
    """Tags whose last token lies past context position ``limit``."""
    if lay.order_free:  # every tag has tokens, so ``last`` strictly increases
        return lay.tags[bisect.bisect_right(lay.last, limit) :]
    return [t for t, last in zip(lay.tags, lay.last, strict=True) if last is not None and last > limit]


def _layout_trigger(caption: str, lay: TagLayout, trigger: str | None, encode, separator: str) -> int | None:
    """Trigger position from the layout: its tag's first position plus the tokens before it in the tag."""
    if not trigger:
        return None
    match = _trigger_regex(trigger).search(caption)
    if match is None:
        return None
    at, off = match.start(), 0
    for tag, first in zip(lay.tags, lay.first, strict=True):
        # the pieces of caption.split(separator), found one by one: the trigger is usually early
        end = caption.find(separator, off)
        piece = caption[off : end if end >= 0 else len(caption)]
        start = off + len(piece) - len(piece.lstrip())
        if start > at:  # tags are disjoint and in order: none further on holds the match
            return None
        if at < start + len(tag) and first is not None:
            return first + len(encode(caption[start:at]))
        off = end + len(separator)
    return None


class CachedEncoder:
    """``ClipBPE.encode`` behind a bounded per-text cache: dataset tags repeat massively.

    The caches are cleared when they reach ``max_entries``, so memory stays bounded on a
    1M-caption stream. Returned lists are shared: callers must not mutate them.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        from sdxl_probe.text.bpe import get_bpe

        self.uncached = get_bpe().encode
        self._cache: dict[str, list[int]] = {}
        self._tables: dict[str, dict[str, TagEntry]] = {}
        self._seps: dict[str, tuple[int, bool]] = {}
        self.max_entries = max_entries

    def tag_table(self, separator: str) -> tuple[dict[str, TagEntry], tuple[int, bool]]:
        """(raw tag -> :data:`TagEntry`, filled by :meth:`tag_entry`; (separator tokens, separator plain))."""
        table = self._tables.get(separator)
        if table is None:
            table = self._tables[separator] = {}
            self._seps[separator] = (len(self(separator)), is_plain(separator))
        return table, self._seps[separator]

    def tag_entry(self, piece: str, separator: str) -> TagEntry:
        """Encode the stripped ``piece`` alone and check ``encode(tag + sep)`` / ``encode(sep + tag)`` split cleanly."""
        table, _ = self.tag_table(separator)
        if len(table) >= self.max_entries:
            table.clear()
        tag = piece.strip()
        ids, sep = self(tag), self(separator)
        exact = (
            bool(ids)
            and is_plain(piece)
            and self.uncached(tag + separator) == ids + sep
            and self.uncached(separator + tag) == sep + ids
        )
        table[piece] = (tag, len(ids), exact, len(ids) + len(sep), int(bool(tag) and _sentence_like(tag)))
        return table[piece]

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            ids = self._cache[text] = self.uncached(text)
        return ids
