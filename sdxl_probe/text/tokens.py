"""Token bookkeeping and sd-scripts' SDXL chunking, in pure Python (no torch).

A caption becomes :class:`Token` records (id, caption span, tag index, weight); a
:class:`ChunkLayout` then says exactly which ids each text encoder receives, where every caption
token lands in the UNet context, and which tokens (and tags) ``max_token_length`` cut.

Chunking follows kohya-ss/sd-scripts ``TokenizeStrategy._get_input_ids`` (library/strategy_base.py,
see docs/sd-scripts-compat.md §1):

* ``max_length = model_max_length`` (77) when ``max_token_length`` is None, else
  ``max_token_length + 2``; the caption is right-truncated to ``max_length - 2`` tokens and laid
  out as ``[BOS] + tokens + [EOS] + [PAD] * rest`` (TE1 pads with EOS, TE2 with ``!``, id 0);
* beyond 77, chunk k is ``[BOS] + ids[1 + 75k : 76 + 75k] + [ids[-1]]``; for TE2 a chunk whose
  second-to-last slot is a text token gets its last slot forced to EOS, and a chunk starting
  ``BOS PAD`` becomes ``BOS EOS PAD ...``;
* each chunk is encoded alone; joining keeps chunk 1's BOS, the 75 middle states of every chunk
  and the last chunk's final state, so caption token i sits at context position ``i + 1``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from sdxl_probe.errors import ProbeError
from sdxl_probe.text.bpe import get_bpe
from sdxl_probe.text.weighting import parse_weighted_segments

ENCODERS = ("te1", "te2")


@dataclass(frozen=True)
class Token:
    """One CLIP token of a caption.

    Attributes:
        id: CLIP BPE id.
        text: the caption text it came from (``caption[start:end]``).
        start: first character of its span in the caption.
        end: one past its last character.
        tag: index of the tag (caption split on the separator) it belongs to; a separator
            token belongs to the tag before it.
        weight: 1.0 unless weighted-caption syntax applies to it.
    """

    id: int
    text: str
    start: int
    end: int
    tag: int
    weight: float


def _token(id: int, text: str, start: int, end: int, tag: int, weight: float) -> Token:
    """``Token(...)`` without the frozen ``__setattr__`` round trips (about 2x faster).

    Captions are tokenized in bulk by the audit; the object is identical to one built by ``Token``.
    """
    token = object.__new__(Token)
    fields = token.__dict__
    fields["id"], fields["text"], fields["start"] = id, text, start
    fields["end"], fields["tag"], fields["weight"] = end, tag, weight
    return token


@dataclass
class TokenizedCaption:
    """A caption, its tokens and its tags ``(text stripped, start, end)``."""

    caption: str
    tokens: list[Token]
    tags: list[tuple[str, int, int]]

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def weights(self) -> list[float]:
        return [t.weight for t in self.tokens]


def split_tags(caption: str, separator: str = ",") -> tuple[list[tuple[str, int, int]], list[int]]:
    """Split ``caption`` on ``separator``.

    Returns:
        ``tags``: ``(text stripped, start, end)`` per piece, empty pieces included;
        ``starts``: where each raw piece begins (for assigning tokens to tags).
    """
    if not separator:
        raise ProbeError("caption separator is empty; set it to the tag separator, e.g. ','")
    tags, starts, pos = [], [], 0
    for piece in caption.split(separator):
        lead = len(piece) - len(piece.lstrip())
        stripped = piece.strip()
        tags.append((stripped, pos + lead, pos + lead + len(stripped)))
        starts.append(pos)
        pos += len(piece) + len(separator)
    return tags, starts


def tokenize_caption(caption: str, *, weighted: bool = False, separator: str = ",") -> TokenizedCaption:
    """Tokenize ``caption`` with CLIP BPE, keeping spans, tag indices and weights.

    With ``weighted``, the caption is parsed as sd-scripts does (``parse_prompt_attention``) and
    each segment is tokenized alone, its tokens taking the segment weight; spans still index the
    original caption, syntax included.
    """
    bpe = get_bpe()
    if weighted:
        spans = []
        for seg in parse_weighted_segments(caption):
            for token_id, s, e in bpe.encode_with_spans(seg.text):
                start = seg.offsets[s] if s < len(seg.offsets) else len(caption)
                end = seg.offsets[e - 1] + 1 if e > s else start
                spans.append((token_id, start, end, seg.weight))
    else:
        spans = [(token_id, s, e, 1.0) for token_id, s, e in bpe.encode_with_spans(caption)]
    tags, starts = split_tags(caption, separator)
    tokens = [_token(i, caption[s:e], s, e, bisect.bisect_right(starts, s) - 1, w) for i, s, e, w in spans]
    return TokenizedCaption(caption, tokens, tags)


@dataclass
class ChunkLayout:
    """What one SDXL text encoder receives for one caption, and where each token ends up.

    Attributes:
        encoder: "te1" or "te2".
        max_token_length: None (75 tokens), 150 or 225 (sd-scripts ``--max_token_length``).
        input_ids: (n_chunks, model_max_length) ids fed to the encoder, chunk by chunk.
        weights: (n_chunks, model_max_length) per-slot weights (1.0 on BOS/EOS/PAD).
        context_length: length of the joined context (77, 152 or 227).
        positions: per caption token, its position in the joined context; None if cut.
        chunk_of: per caption token, the chunk it was encoded in; None if cut.
        n_tokens: caption tokens before truncation (no BOS/EOS).
        lost_tags: indices of the tags with at least one cut token inside their text.
    """

    encoder: str
    max_token_length: int | None
    input_ids: list[list[int]]
    weights: list[list[float]]
    context_length: int
    positions: list[int | None]
    chunk_of: list[int | None]
    n_tokens: int
    lost_tags: list[int]

    @property
    def n_kept(self) -> int:
        """Caption tokens that reach the encoder."""
        return sum(p is not None for p in self.positions)


def max_length_for(max_token_length: int | None, model_max_length: int = 77) -> int:
    """sd-scripts' padded length: ``model_max_length`` if None else ``max_token_length + 2``."""
    if max_token_length is None:
        return model_max_length
    chunk = model_max_length - 2
    if max_token_length <= 0 or max_token_length % chunk:
        raise ProbeError(
            f"max_token_length={max_token_length} is not supported; use None (={chunk}), "
            f"{2 * chunk} or {3 * chunk} (a positive multiple of {chunk}, as sd-scripts' --max_token_length)"
        )
    return max_token_length + 2


def chunk_layout(
    tc: TokenizedCaption, *, encoder: str, max_token_length: int | None, model_max_length: int = 77
) -> ChunkLayout:
    """Lay out ``tc`` for ``encoder`` exactly as sd-scripts does (module docstring)."""
    if encoder not in ENCODERS:
        raise ProbeError(f"encoder={encoder!r} is unknown; use one of {ENCODERS}")
    bpe = get_bpe()
    max_length = max_length_for(max_token_length, model_max_length)
    capacity = max_length - 2
    pad = bpe.eos_id if encoder == "te1" else bpe.pad_id_te2
    kept = tc.ids[:capacity]
    full = [bpe.bos_id, *kept, bpe.eos_id] + [pad] * (capacity - len(kept))  # (max_length,)
    full_w = [1.0, *tc.weights[:capacity]] + [1.0] * (max_length - 1 - len(kept))
    if max_length <= model_max_length:
        input_ids, weights = [full], [full_w]
    else:
        input_ids, weights = _chunks(full, full_w, model_max_length, encoder == "te2", bpe.eos_id, pad)
    chunk_len = model_max_length - 2
    n = len(tc.tokens)
    return ChunkLayout(
        encoder=encoder,
        max_token_length=max_token_length,
        input_ids=input_ids,
        weights=weights,
        context_length=max_length,
        positions=[i + 1 if i < capacity else None for i in range(n)],
        chunk_of=[i // chunk_len if i < capacity else None for i in range(n)],
        n_tokens=n,
        lost_tags=_lost_tags(tc, capacity),
    )


def _chunks(
    full: list[int], full_w: list[float], model_max_length: int, fix_eos: bool, eos: int, pad: int
) -> tuple[list[list[int]], list[list[float]]]:
    """Split a padded ``(max_length,)`` id list into ``(n, model_max_length)`` chunks."""
    chunk_len = model_max_length - 2
    ids, weights = [], []
    for i in range(1, len(full) - model_max_length + 2, chunk_len):
        chunk = [full[0], *full[i : i + chunk_len], full[-1]]
        if fix_eos and chunk[-2] not in (eos, pad):
            chunk[-1] = eos  # a chunk full of text must end with EOS
        if fix_eos and chunk[1] == pad:
            chunk[1] = eos  # an empty chunk is BOS EOS PAD ...
        ids.append(chunk)
        weights.append([1.0, *full_w[i : i + chunk_len], 1.0])
    return ids, weights


def _lost_tags(tc: TokenizedCaption, capacity: int) -> list[int]:
    """Tags whose stripped text overlaps at least one cut token."""
    lost = set()
    for token in tc.tokens[capacity:]:
        for k in (token.tag, token.tag + 1):
            if k < len(tc.tags):
                _, start, end = tc.tags[k]
                if start < end and token.start < end and token.end > start:
                    lost.add(k)
    return sorted(lost)
