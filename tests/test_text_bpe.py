"""ClipBPE equals open_clip's SimpleTokenizer, its fast path is exact, spans point into the text."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdxl_probe.text.bpe import ClipBPE, clean_text, get_bpe, is_plain

TEXTS = [
    "",
    "   ",
    "a photo of a cat, masterpiece, best quality, 1girl, long hair",
    "Hello   World!!  it's  I'M  we'LL you'd",
    "naïve café résumé Ångström",
    "日本語 テスト 中文字符 한국어",
    "😀🎉 👩‍👩‍👧 emoji,🐱cat",
    "black &amp; white, &lt;b&gt;bold&lt;/b&gt;, &amp;amp;amp;, AT&T",
    "“curly” ‘quotes’ don’t",
    "İstanbul ß ﬁsh ＦＵＬＬ　ｗｉｄｔｈ",
    "<start_of_text> x<end_of_text>y <|endoftext|> <|startoftext|>",
    "a\x0bb\x01c\x7fd\te\nf\rg\x0ch",
    "âœ” No problems, mojibake Ã©",
    "(masterpiece:1.2), [blurry], ((smile)), \\(escaped\\)",
    "don't stop 12345 3.14 1990s",
    "tag_with_underscores, a-b-c, x/y, #hashtag, @user",
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_open_clip(open_clip_tokenizer, text):
    bpe = ClipBPE()
    expected = open_clip_tokenizer.encode(text)
    assert bpe.encode(text) == expected
    assert bpe.encode(text) == expected  # second call served by the caches
    assert [i for i, _, _ in bpe.encode_with_spans(text)] == expected


TAG_ALPHABET = st.sampled_from(list("abcxyz ,,,()[]:.!'-_1") + ["hair", "long", "1girl", ", ", "'s", "é", "日"])


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(TAG_ALPHABET, max_size=30).map("".join)))
def test_random_text_equals_open_clip(open_clip_tokenizer, text):
    bpe = get_bpe()
    ids = bpe.encode(text)
    assert ids == open_clip_tokenizer.encode(text)
    spans = bpe.encode_with_spans(text)
    assert [i for i, _, _ in spans] == ids
    assert all(0 <= s <= e <= len(text) for _, s, e in spans)


PLAIN_CHARS = st.characters(codec="ascii", exclude_characters="&").filter(
    lambda c: c.isprintable() or c in "\t\n\r\x0c"
)


@settings(max_examples=300, deadline=None)
@given(st.text(PLAIN_CHARS, max_size=80))
def test_ftfy_is_identity_on_plain_text(text):
    """The fast path skips ftfy and html.unescape: up to line-break style, both are the identity."""
    from open_clip.tokenizer import _clean_lower

    assert is_plain(text)
    assert _clean_lower(text) == " ".join(text.split()).lower()
    assert clean_text(text) == _clean_lower(text)


@pytest.mark.parametrize("text", ["a&b", "x\x0by", "café", "\x01"])
def test_not_plain(text):
    assert not is_plain(text)


@given(st.text(PLAIN_CHARS, max_size=80))
def test_plain_spans_are_exact(text):
    bpe = get_bpe()
    spans = bpe.encode_with_spans(text)
    pieces = "".join(bpe.decode([i]).replace(" ", "") for i, _, _ in spans)
    assert pieces == "".join(text[s:e] for _, s, e in spans).lower()
    assert all(spans[k][2] <= spans[k + 1][1] for k in range(len(spans) - 1))


def test_unicode_spans_best_effort():
    bpe = get_bpe()
    text = "ＦＵＬＬ　ｗｉｄｔｈ, black &amp; white"
    got = [(bpe.decode([i]).strip(), text[s:e]) for i, s, e in bpe.encode_with_spans(text)]
    assert got == [("full", "ＦＵＬＬ"), ("width", "ｗｉｄｔｈ"), (",", ","), ("black", "black"), ("&", "&"),
                   ("white", "white")]


def test_special_ids_and_decode():
    bpe = get_bpe()
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id_te2) == (49406, 49407, 0)
    assert bpe.decode(bpe.encode("Long Hair, 日本")) == "long hair , 日本 "


def test_import_is_light():
    code = (
        "import sys, sdxl_probe.text.bpe as b; b.get_bpe().encode('a cat, long hair');"
        "print(sorted(m for m in ('torch', 'ftfy', 'open_clip', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("text", ["Long Hair,  blue eyes , smile,, x", "a, b, c, a, b", "  lead, (smile), trail  ", "x,"])
def test_tag_cached_spans(text):
    """Spans served from the per-tag cache point at the right characters, also on repeats."""
    bpe = ClipBPE()
    for _ in range(2):
        spans = bpe.encode_with_spans(text)
        assert [i for i, _, _ in spans] == bpe.encode(text)
        assert [text[s:e].lower() for _, s, e in spans] == [bpe.decode([i]).strip() for i, _, _ in spans]
