"""The embedding probe on the tiny random encoders (``tiny_components``): measures, sensitivity, cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sdxl_probe.pipeline.encoding_cache import EncodeSettings, EncodingCache, encode_cached
from sdxl_probe.probes.embed.measures import pair_values
from sdxl_probe.probes.embed.metrics import shared_word_positions
from sdxl_probe.probes.embed.sensitivity import (
    cut_after_tokens,
    order_sensitivity,
    position_sensitivity,
    truncation_sensitivity,
    weighting_sensitivity,
)

TAGS = "red circle, blue square, white background, large, top left"
SENTENCE = "a large red circle at the top left next to a blue square on a white background"
# Single-token words only, so cutting after any token never splits a word.
LONG = ", ".join(["red circle", "blue square", "green star", "yellow triangle"] * 15)  # 120 tokens


@pytest.fixture(scope="module")
def encode(tiny_components):
    def _encode(captions, settings):
        return encode_cached(tiny_components, captions, settings, batch_size=4)

    return _encode


def test_identical_captions_have_similarity_one(encode):
    a, b = encode([TAGS, TAGS], EncodeSettings())
    values, n_shared = pair_values(a, b)
    assert n_shared == 9
    for key, value in values.items():
        assert value == pytest.approx(1.0, abs=1e-6), key


def test_pair_values_differ_for_tags_and_sentence(encode):
    a, b = encode([TAGS, SENTENCE], EncodeSettings())
    values, n_shared = pair_values(a, b)
    assert n_shared == 9  # red circle blue square white background large top left; not "a", "the"
    assert set(values) == {
        "te1.cos", "te1.word", "te1.set", "te2.cos", "te2.word", "te2.set",
        "context.cos", "context.word", "context.set", "pooled.cos",
    }  # fmt: skip
    assert all(-1.0 <= v < 0.999999 for v in values.values())


def test_word_alignment_maps_shared_words_to_their_token_positions(encode):
    a, b = encode(
        ["red butterfly, white background", "a red butterfly on a white background"], EncodeSettings()
    )
    shared = shared_word_positions(a.tokenized, a.layout_te1, b.tokenized, b.layout_te1)
    assert list(shared) == ["red", "butterfly", "white", "background"]
    for enc, side in ((a, 0), (b, 1)):
        for word, positions in shared.items():
            # Context position p holds caption token p - 1; those tokens spell exactly the word.
            text = "".join(enc.tokenized.tokens[p - 1].text for p in positions[side])
            assert text.lower() == word
    assert shared["red"] == ([1], [2])
    # The same positions hold for TE2 (same BPE, same chunking).
    assert shared_word_positions(a.tokenized, a.layout_te2, b.tokenized, b.layout_te2) == shared


def test_cached_encoding_equals_fresh_and_rebuilds_bookkeeping(tiny_components, tmp_path):
    from sdxl_probe.pipeline.conditioning import encode_captions

    cache = EncodingCache(tmp_path, tiny_components.model_hash())
    captions = [TAGS, SENTENCE, TAGS, LONG]
    settings = EncodeSettings(max_token_length=150)
    cold = encode_cached(tiny_components, captions, settings, cache=cache, batch_size=2)
    assert (cache.hits, cache.misses) == (0, 3)  # the duplicate is encoded once
    warm = encode_cached(tiny_components, captions, settings, cache=cache, batch_size=2)
    assert cache.hits == 3
    with torch.inference_mode():
        ref = encode_captions(tiny_components, captions, max_token_length=150)
    for i, (c, w) in enumerate(zip(cold, warm, strict=True)):
        assert torch.allclose(c.te1, ref.hidden_te1[i], atol=1e-5) and torch.equal(c.te1, w.te1)
        assert torch.allclose(c.te2, ref.hidden_te2[i], atol=1e-5) and torch.equal(c.te2, w.te2)
        assert torch.allclose(c.pooled, ref.pooled[i], atol=1e-5) and torch.equal(c.pooled, w.pooled)
        assert w.layout_te1 == ref.layouts_te1[i] and w.layout_te2 == ref.layouts_te2[i]
        assert w.tokenized == ref.captions[i]


def test_order_drift_positive_and_reproducible(encode):
    kwargs = dict(k=4, encode=encode, settings=EncodeSettings())
    first = order_sensitivity([TAGS], seed=7, **kwargs)
    again = order_sensitivity([TAGS], seed=7, **kwargs)
    other = order_sensitivity([TAGS], seed=8, **kwargs)
    assert len(first) == 4
    assert all(s.values[f"{v}.cos"] > 0 for s in first for v in ("te1", "te2", "context", "pooled"))
    assert [s.values for s in first] == [s.values for s in again]
    assert [s.values for s in first] != [s.values for s in other]


def test_truncation_drift_zero_when_nothing_is_cut(encode):
    samples = truncation_sensitivity(
        [TAGS, LONG], chunk_tokens=75, max_token_lengths=[None, 150, 225], encode=encode, mode="sd-scripts"
    )
    by = {(s.caption, s.variant): s for s in samples}
    assert by[(0, "max_token_length 75")].n_tokens < 75
    for setting in (75, 150, 225):
        assert all(v == 0.0 for v in by[(0, f"max_token_length {setting}")].values.values())
    # A long caption under 75: the encoder drops the tail itself, so cutting it changes nothing.
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in by[(1, "max_token_length 75")].values.values())
    # Under 150 the tail is encoded: the states move, the pooled vector (first chunk only) does not.
    long150 = by[(1, "max_token_length 150")].values
    assert long150["te1.cos"] > 1e-4 and long150["te2.cos"] > 1e-4
    assert long150["pooled.cos"] == pytest.approx(0.0, abs=1e-6)


def test_cut_after_tokens():
    assert cut_after_tokens(TAGS, 75) == TAGS
    assert cut_after_tokens("red circle, blue square", 3) == "red circle,"


def test_position_drift_of_moved_tag(encode):
    (sample,) = position_sensitivity([TAGS], encode=encode, settings=EncodeSettings())
    assert sample.values["tag_te1.cos"] > 0 and sample.values["tag_te2.cos"] > 0
    assert sample.values["pooled.cos"] > 0


def test_weighting_scales_tag_states_and_leaves_pooled(encode):
    (sample,) = weighting_sensitivity([TAGS], weight=1.2, seed=0, encode=encode, settings=EncodeSettings())
    assert sample.values["pooled.cos"] == pytest.approx(0.0, abs=1e-6)
    assert sample.values["tag_context.rel_l2"] == pytest.approx(0.2, abs=1e-4)
    assert sample.values["tag_context.cos"] == pytest.approx(0.0, abs=1e-6)
    assert sample.values["context.cos"] > 0


def test_settings_validation():
    from sdxl_probe.probes.embed.core import EmbedSettings

    assert EmbedSettings(max_token_length=75).max_token_length is None
    with pytest.raises(ValueError, match="not 75, 150 or 225"):
        EmbedSettings(truncation_lengths=[75, 100])
    with pytest.raises(ValueError):
        dataclasses.replace(EmbedSettings(), mode="comfy")
