"""Fast pure-Python CLIP BPE whose ids equal open_clip's ``SimpleTokenizer`` (clean="lower").

open_clip cleans text with ``ftfy.fix_text``, ``html.unescape`` twice, ``strip``, a whitespace
collapse and ``lower``; it then splits it with the regex ``PATTERN`` and byte-pair-encodes each
piece. This module does the same, with two shortcuts that do not change a single id:

* **Plain-ASCII fast path.** For text made only of printable ASCII, tab, newline, form feed and
  carriage return, and without ``&``, ``ftfy.fix_text`` and ``html.unescape`` are the identity
  up to line-break style, which the whitespace collapse erases (among ASCII, ftfy only removes
  the control characters U+0000-0008, U+000B, U+000E-001F and U+007F, rewrites carriage-return
  line breaks, and touches ``&`` as an HTML entity; tests/test_text_bpe.py checks this with
  hypothesis). ftfy (about 70 ms to import) is therefore imported only for other text.
* **Tag and word caches.** No regex piece contains whitespace, so the ids of a text are the
  concatenation of the ids of its whitespace-separated parts: each ``"tag,"`` (split at ", ")
  and each word is encoded once. Caption tags repeat massively across a dataset, so almost
  every tag is one dict hit.

Differences from HF ``CLIPTokenizer`` (which sd-scripts uses): transformers 5's tokenizer does not
apply ftfy or html.unescape, so text with HTML entities (``&amp;``) or mojibake can tokenize
differently; and the special-token strings recognised inside text are open_clip's
``<start_of_text>``/``<end_of_text>`` rather than HF's ``<|startoftext|>``/``<|endoftext|>``.
"""

from __future__ import annotations

import difflib
import html
import re
import unicodedata
from functools import lru_cache

import regex

from sdxl_probe.text.vocab import BOS_TOKEN, EOS_TOKEN, bytes_to_unicode, load_merges, load_vocab

# open_clip's special-token strings, matched inside text and mapped to BOS/EOS ids.
SPECIAL_STRINGS = ("<start_of_text>", "<end_of_text>")
PATTERN = regex.compile(
    "|".join(SPECIAL_STRINGS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Characters outside this set send a text through the full ftfy/html cleaning.
_NOT_FAST = regex.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")
_WORD = re.compile(r"\S+")
END_OF_WORD = "</w>"
# Entries per cache before it is emptied: bounds memory on huge, tag-free corpora.
CACHE_LIMIT = 1_000_000


def _fix_text(text: str) -> str:
    """``ftfy.fix_text`` imported lazily (it costs ~70 ms, and plain ASCII never needs it)."""
    import ftfy

    return ftfy.fix_text(text)


def is_plain(text: str) -> bool:
    """True when open_clip's ftfy + html cleaning leaves ``text`` unchanged (see module doc)."""
    # isascii/isprintable are C-speed pre-checks; the regex settles tabs and newlines.
    return text.isascii() and "&" not in text and (text.isprintable() or _NOT_FAST.search(text) is None)


def clean_text(text: str) -> str:
    """open_clip's ``_clean_lower``: ftfy, html.unescape x2, strip, whitespace collapse, lower."""
    if not is_plain(text):
        text = html.unescape(html.unescape(_fix_text(text)))
    return " ".join(text.split()).lower()


class ClipBPE:
    """CLIP byte-pair encoder with per-tag, per-word and per-piece caches.

    Attributes:
        bos_id: ``<|startoftext|>`` id (49406).
        eos_id: ``<|endoftext|>`` id (49407).
        pad_id_te2: the pad id of SDXL's second tokenizer, ``"!"`` (0).
    """

    def __init__(self) -> None:
        self.encoder = load_vocab()
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.merges = load_merges()
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bos_id = self.encoder[BOS_TOKEN]
        self.eos_id = self.encoder[EOS_TOKEN]
        self.pad_id_te2 = self.encoder["!"]
        self._piece_cache: dict[str, tuple[str, ...]] = {}
        self._word_cache: dict[str, list[int]] = {}
        self._tag_cache: dict[str, list[int]] = {}
        self._span_cache: dict[str, list[tuple[int, int, int]]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS (open_clip ``SimpleTokenizer.encode``)."""
        cleaned = text.lower() if is_plain(text) else clean_text(text)
        # Splitting at ", " cuts only at whitespace, so each "tag," is tokenized exactly alone.
        *tags, last = cleaned.split(", ")
        cache = self._tag_cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        ids: list[int] = []
        for tag in tags:
            cached = cache.get(tag)
            if cached is None:
                cached = cache[tag] = self._encode_words(tag + ",")
            ids += cached
        return ids + self._encode_words(last)

    def _encode_words(self, text: str) -> list[int]:
        """Ids of lowercased, cleaned text, one cached whitespace-separated word at a time."""
        cache = self._word_cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        ids: list[int] = []
        for word in text.split():
            cached = cache.get(word)
            if cached is None:
                cached = cache[word] = self._encode_word(word)
            ids += cached
        return ids

    def encode_with_spans(self, text: str) -> list[tuple[int, int, int]]:
        """``(id, start, end)`` per token; the span indexes the ORIGINAL ``text``.

        Exact when cleaning only lowercases and collapses whitespace (plain text). Otherwise
        the cleaned text is aligned to the original with difflib, best effort. A BPE piece of
        a multi-byte character gets the span of the whole character.
        """
        if is_plain(text):
            return self._plain_spans(text)
        cleaned = clean_text(text)
        out = [span for m in PATTERN.finditer(cleaned) for span in self._piece_spans(m.group(), m.start())]
        starts, ends = _align(text, cleaned)
        return [(i, starts[s], max(starts[s], ends[e])) for i, s, e in out]

    def _plain_spans(self, text: str) -> list[tuple[int, int, int]]:
        """Spans of plain text (cleaning is lowercase + whitespace only), cached per ``"tag,"``."""
        cache = self._span_cache
        if len(cache) > CACHE_LIMIT:
            cache.clear()
        *tags, last = text.split(", ")
        out: list[tuple[int, int, int]] = []
        off = 0
        for key in [t + "," for t in tags] + [last]:
            rel = cache.get(key)
            if rel is None:
                rel = cache[key] = self._word_spans(key)
            out += [(i, s + off, e + off) for i, s, e in rel]
            off += len(key) + 1
        return out

    def _word_spans(self, text: str) -> list[tuple[int, int, int]]:
        """Spans of plain text, one whitespace-separated word at a time."""
        out: list[tuple[int, int, int]] = []
        for word in _WORD.finditer(text):
            lowered, off = word.group().lower(), word.start()
            for piece in PATTERN.finditer(lowered):
                out += self._piece_spans(piece.group(), off + piece.start())
        return out

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` as open_clip decodes it (``</w>`` becomes a space).

        BOS/EOS decode to their HF names ``<|startoftext|>``/``<|endoftext|>``.
        """
        chars = "".join(self.decoder[i] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in chars)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def _encode_word(self, word: str) -> list[int]:
        """Ids of one whitespace-free piece of cleaned text."""
        return [self.encoder[p] for piece in PATTERN.findall(word) for p in self._bpe(piece)]

    def _bpe(self, piece: str) -> tuple[str, ...]:
        """BPE symbols of one regex piece (byte-encoded first), cached."""
        symbols = self._piece_cache.get(piece)
        if symbols is None:
            symbols = self._piece_cache[piece] = self._merge(piece)
        return symbols

    def _merge(self, piece: str) -> tuple[str, ...]:
        """Apply merges by rank until none applies (OpenAI CLIP ``bpe``)."""
        if piece in SPECIAL_STRINGS:
            return (BOS_TOKEN if piece == SPECIAL_STRINGS[0] else EOS_TOKEN,)
        chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
        word = list(chars[:-1]) + [chars[-1] + END_OF_WORD]
        ranks = self.ranks
        while len(word) > 1:
            pair_ranks = (ranks.get(pair) for pair in zip(word, word[1:], strict=False))
            best = min((r for r in pair_ranks if r is not None), default=None)
            if best is None:
                break
            first, second = self.merges[best]
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(word)

    def _piece_spans(self, piece: str, offset: int) -> list[tuple[int, int, int]]:
        """``(id, start, end)`` of the BPE symbols of ``piece``, which starts at ``offset``."""
        byte_to_char = [k for k, ch in enumerate(piece) for _ in ch.encode("utf-8")]
        n_bytes = len(byte_to_char)
        out, pos = [], 0
        for symbol in self._bpe(piece):
            width = n_bytes if symbol in (BOS_TOKEN, EOS_TOKEN) else len(symbol.removesuffix(END_OF_WORD))
            start = byte_to_char[min(pos, n_bytes - 1)]
            end = byte_to_char[min(pos + width, n_bytes) - 1] + 1
            out.append((self.encoder[symbol], offset + start, offset + end))
            pos += width
        return out


def _align(original: str, cleaned: str) -> tuple[list[int], list[int]]:
    """Map cleaned-text positions to original positions with difflib (best effort).

    Each original character is first expanded to its NFKC lowercase form (ftfy's width and
    ligature fixes, ``lower``), so that e.g. full-width letters align one to one.

    Returns:
        ``starts`` (len(cleaned) + 1): original index where cleaned char j starts;
        ``ends`` (len(cleaned) + 1): original index where a span ending at cleaned j ends.
    """
    expanded = [(c, k) for k, ch in enumerate(original) for c in unicodedata.normalize("NFKC", ch).lower()]
    owner = [k for _, k in expanded] + [len(original)]
    matcher = difflib.SequenceMatcher(None, [c for c, _ in expanded], list(cleaned), autojunk=False)
    starts = [len(original)] * (len(cleaned) + 1)
    ends = [0] * (len(cleaned) + 1)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for j in range(j1, j2):
            equal = tag == "equal"
            starts[j] = owner[i1 + (j - j1) if equal else i1]
            ends[j + 1] = owner[i1 + (j - j1) if equal else i2 - 1] + 1 if i2 > i1 else owner[i1]
    return starts, ends


@lru_cache(maxsize=1)
def get_bpe() -> ClipBPE:
    """The process-wide :class:`ClipBPE` (loading the vocabulary takes ~0.1 s)."""
    return ClipBPE()
