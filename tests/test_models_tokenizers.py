"""SDXL's HF tokenizers, built offline, give open_clip SimpleTokenizer ids (after open_clip's cleaning)."""

from __future__ import annotations

import pytest

from sdxl_probe.models.configs import SDXL_BASE_DIR
from sdxl_probe.models.tokenizers import build_clip_tokenizer, clip_clean_text, tokenizer_files

TEXTS = [
    "a photo of a cat",
    "1girl, solo, long hair, looking at viewer, (masterpiece:1.2), [blurry]",
    "Café crème brûlée à la mode, naïve façade, Ærøskøbing, straße",
    "a dog 🐶 on the beach 🏖️ with a 👩‍👩‍👧 family, thumbs up 👍🏽",
    "東京タワー の 夜景, 北京烤鸭, 서울 야경, 富士山",
    "salt &amp; pepper, fish &amp;amp; chips, &lt;lora&gt; &quot;quoted&quot; &#39;apos&#39; &nbsp;x",
    "“curly double quotes” and ‘curly single’ it’s a don’t — em dash – en dash … ellipsis",
    "  Multiple   spaces\tand\ttabs\nand newlines\r\n  MIXED Case WORDS  ",
    "it's they're we'll I'd you've can't o'clock rock'n'roll",
    "numbers 12345 3.14159 1,000,000 20% $50 #hashtag @mention",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "mojibake: cafÃ© and â€œquotedâ€\x9d text",
    "Ωμέγα и кириллица, עברית, العربية, हिन्दी, ไทย",
    "",
]


@pytest.fixture(scope="module")
def simple_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.mark.parametrize("pad", ["eos", "!"])
@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_open_clip(simple_tokenizer, pad, text):
    tok = build_clip_tokenizer(pad)
    ids = tok(clip_clean_text(text), add_special_tokens=False).input_ids
    assert ids == simple_tokenizer.encode(text)


def test_specials_and_padding():
    tok1, tok2 = build_clip_tokenizer("eos"), build_clip_tokenizer("!")
    for tok in (tok1, tok2):
        assert tok.model_max_length == 77
        assert (tok.bos_token, tok.eos_token) == ("<|startoftext|>", "<|endoftext|>")
        assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
        assert len(tok) == 49408
    assert tok1.pad_token_id == 49407 and tok2.pad_token_id == 0 and tok2.pad_token == "!"
    assert tok1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok2("a cat", padding="max_length", max_length=tok2.model_max_length).input_ids
    assert padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {0} and len(padded) == 77
    long = tok1("cat " * 200, truncation=True, max_length=tok1.model_max_length).input_ids
    assert len(long) == 77 and long[-1] == 49407


def test_html_entities_need_open_clip_cleaning():
    """Why callers pre-clean: the HF tokenizer keeps '&amp;' as text, open_clip unescapes it to '&'."""
    tok = build_clip_tokenizer("eos")
    raw = tok("salt &amp; pepper", add_special_tokens=False).input_ids
    cleaned = tok(clip_clean_text("salt &amp; pepper"), add_special_tokens=False).input_ids
    assert raw != cleaned and len(raw) > len(cleaned)


@pytest.mark.parametrize(("folder", "pad"), [("tokenizer", "eos"), ("tokenizer_2", "!")])
def test_shipped_tokenizer_folders(folder, pad):
    """The shipped folders are exactly what the generator writes, and load to the same ids offline."""
    from transformers import CLIPTokenizer

    for name, text in tokenizer_files(pad).items():
        assert (SDXL_BASE_DIR / folder / name).read_text(encoding="utf-8") == text, name
    shipped = CLIPTokenizer.from_pretrained(SDXL_BASE_DIR / folder, local_files_only=True)
    built = build_clip_tokenizer(pad)
    for text in TEXTS:
        kwargs = {"padding": "max_length", "max_length": 77, "truncation": True}
        assert (
            shipped(clip_clean_text(text), **kwargs).input_ids
            == built(clip_clean_text(text), **kwargs).input_ids
        )
