"""Token bookkeeping and sd-scripts chunk grids for 0..300-token captions, both tokenizers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdxl_probe.errors import ProbeError
from sdxl_probe.text.bpe import get_bpe
from sdxl_probe.text.tokens import chunk_layout, split_tags, tokenize_caption
from sdxl_probe.text.vocab import load_vocab

BOS, EOS, PAD2 = 49406, 49407, 0
LENGTHS = (0, 74, 75, 76, 150, 151, 225, 300)
LIMITS = (None, 150, 225)


@pytest.fixture(scope="module")
def words() -> list[str]:
    """300 distinct lowercase words that are each exactly one CLIP token."""
    bpe = get_bpe()
    found = []
    for tok, i in load_vocab().items():
        word = tok.removesuffix("</w>")
        if tok.endswith("</w>") and word.isalpha() and word.isascii() and len(word) > 3 and bpe.encode(word) == [i]:
            found.append(word)
        if len(found) == 300:
            return found
    raise AssertionError("not enough single-token words")


def caption_of(words: list[str], n: int) -> str:
    return " ".join(words[:n])


@pytest.fixture(scope="module")
def hf_tokenizers():
    from sdxl_probe.models.tokenizers import build_clip_tokenizer

    return {"te1": build_clip_tokenizer("eos"), "te2": build_clip_tokenizer("!")}


def sd_scripts_ids(tokenizer, text: str, max_length: int) -> list[list[int]]:
    """Transcription of sd-scripts TokenizeStrategy._get_input_ids on the HF tokenizer."""
    ids = tokenizer(text, padding="max_length", truncation=True, max_length=max_length).input_ids
    mml = tokenizer.model_max_length
    if max_length <= mml:
        return [ids]
    chunks = []
    for i in range(1, max_length - mml + 2, mml - 2):
        chunk = [ids[0], *ids[i : i + mml - 2], ids[-1]]
        if tokenizer.pad_token_id != tokenizer.eos_token_id:
            if chunk[-2] != tokenizer.eos_token_id and chunk[-2] != tokenizer.pad_token_id:
                chunk[-1] = tokenizer.eos_token_id
            if chunk[1] == tokenizer.pad_token_id:
                chunk[1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("encoder", ["te1", "te2"])
def test_grid_matches_sd_scripts(words, hf_tokenizers, n, limit, encoder):
    tc = tokenize_caption(caption_of(words, n))
    assert len(tc.tokens) == n
    layout = chunk_layout(tc, encoder=encoder, max_token_length=limit)
    max_length = 77 if limit is None else limit + 2
    assert layout.input_ids == sd_scripts_ids(hf_tokenizers[encoder], tc.caption, max_length)
    n_chunks = 1 if limit is None else limit // 75
    assert len(layout.input_ids) == len(layout.weights) == n_chunks
    assert all(len(c) == 77 for c in layout.input_ids)
    assert layout.context_length == max_length == 2 + 75 * n_chunks
    capacity = 75 * n_chunks
    assert layout.n_tokens == n and layout.n_kept == min(n, capacity)
    for i in range(n):
        if i < capacity:
            assert layout.positions[i] == i + 1
            assert layout.chunk_of[i] == i // 75
            chunk, slot = divmod(i, 75)
            assert layout.input_ids[chunk][slot + 1] == tc.tokens[i].id  # token i is in its chunk
        else:
            assert layout.positions[i] is None and layout.chunk_of[i] is None
    assert all(c[0] == BOS for c in layout.input_ids)
    assert layout.lost_tags == ([0] if n > capacity else [])  # the caption is one tag


def test_explicit_grids(words):
    """Hand-written expectations at the boundaries (independent of the HF transcription)."""
    ids = get_bpe().encode(caption_of(words, 151))
    tc = tokenize_caption(caption_of(words, 75))
    te2 = chunk_layout(tc, encoder="te2", max_token_length=150).input_ids
    assert te2[0] == [BOS, *ids[:75], EOS]  # full chunk: last slot forced to EOS
    assert te2[1] == [BOS, EOS] + [PAD2] * 75  # empty chunk: BOS EOS PAD ...
    te1 = chunk_layout(tc, encoder="te1", max_token_length=150).input_ids
    assert te1[1] == [BOS] + [EOS] * 76
    tc = tokenize_caption(caption_of(words, 76))
    te2 = chunk_layout(tc, encoder="te2", max_token_length=150).input_ids
    assert te2[1] == [BOS, ids[75], EOS] + [PAD2] * 74
    tc = tokenize_caption(caption_of(words, 74))
    assert chunk_layout(tc, encoder="te2", max_token_length=None).input_ids == [[BOS, *ids[:74], EOS, PAD2]]
    tc = tokenize_caption(caption_of(words, 151))
    te2 = chunk_layout(tc, encoder="te2", max_token_length=150).input_ids
    assert te2[1] == [BOS, *ids[75:150], EOS]  # token 151 is cut
    tc = tokenize_caption("")
    assert chunk_layout(tc, encoder="te2", max_token_length=225).input_ids == [[BOS, EOS] + [PAD2] * 75] * 3


def test_lost_tags(words):
    tags = [" ".join(words[3 * k : 3 * k + 3]) for k in range(30)]  # 30 tags of 3 tokens + ","
    tc = tokenize_caption(", ".join(tags))
    assert [t[0] for t in tc.tags] == tags
    assert len(tc.tokens) == 30 * 4 - 1
    layout = chunk_layout(tc, encoder="te1", max_token_length=None)
    # tokens 0..74 kept: tag 18 spans tokens 72..74 (kept), tag 18's comma (75) is cut
    assert layout.lost_tags == list(range(19, 30))
    tc2 = tokenize_caption(", ".join(tags[:18]) + ", x y " + ", ".join(tags[18:]))
    assert 18 in chunk_layout(tc2, encoder="te1", max_token_length=None).lost_tags  # partly cut tag
    assert chunk_layout(tc, encoder="te1", max_token_length=150).lost_tags == []


def test_token_spans_and_tags():
    caption = "Red Hair,  blue eyes ,smile"
    tc = tokenize_caption(caption)
    assert tc.tags == [("Red Hair", 0, 8), ("blue eyes", 11, 20), ("smile", 22, 27)]
    assert [(t.text, t.tag) for t in tc.tokens] == [
        ("Red", 0), ("Hair", 0), (",", 0), ("blue", 1), ("eyes", 1), (",", 1), ("smile", 2)
    ]
    assert all(caption[t.start : t.end] == t.text for t in tc.tokens)


def test_weighted_tokens():
    caption = "a (red hair:1.5), [blue]eyes"
    tc = tokenize_caption(caption, weighted=True)
    got = [(t.text, round(t.weight, 6)) for t in tc.tokens]
    assert got == [("a", 1.0), ("red", 1.5), ("hair", 1.5), (",", 1.0), ("blue", round(1 / 1.1, 6)), ("eyes", 1.0)]
    assert [t.tag for t in tc.tokens] == [0, 0, 0, 0, 1, 1]
    # sd-scripts tokenizes each segment alone: "[blue]eyes" is two words, unlike "blueeyes"
    assert tokenize_caption("blueeyes").ids != [t.id for t in tc.tokens[-2:]]
    layout = chunk_layout(tc, encoder="te1", max_token_length=None)
    assert layout.weights[0][:8] == [1.0, 1.0, 1.5, 1.5, 1.0, pytest.approx(1 / 1.1), 1.0, 1.0]


def test_weighted_chunk_weights(words):
    caption = "(" + caption_of(words, 80) + ":2)"
    tc = tokenize_caption(caption, weighted=True)
    layout = chunk_layout(tc, encoder="te2", max_token_length=150)
    assert layout.weights[0] == [1.0] + [2.0] * 75 + [1.0]
    assert layout.weights[1] == [1.0] + [2.0] * 5 + [1.0] * 71


def test_bad_arguments():
    tc = tokenize_caption("a cat")
    with pytest.raises(ProbeError, match="max_token_length=100"):
        chunk_layout(tc, encoder="te1", max_token_length=100)
    with pytest.raises(ProbeError, match="encoder='te3'"):
        chunk_layout(tc, encoder="te3", max_token_length=None)
    with pytest.raises(ProbeError, match="separator is empty"):
        split_tags("a, b", "")


@given(st.text(st.sampled_from(list("ab ,()[]:1.é😀&;")), max_size=40))
def test_tokenize_properties(caption):
    for weighted in (False, True):
        tc = tokenize_caption(caption, weighted=weighted)
        assert all(0 <= t.start <= t.end <= len(caption) for t in tc.tokens)
        assert all(0 <= t.tag < len(tc.tags) for t in tc.tokens)
        assert [t.start for t in tc.tokens] == sorted(t.start for t in tc.tokens)
    if not any(c in caption for c in "()[]\\"):
        assert tokenize_caption(caption, weighted=True).ids == tokenize_caption(caption).ids
