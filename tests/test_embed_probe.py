"""The embedding probe on the tiny random encoders (``tiny_components``): measures, sensitivity, cache."""

from __future__ import annotations

import copy
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
    expected = _pair_oracle(a, b)  # oracle: the same measures recomputed with plain torch
    assert values == pytest.approx(expected, abs=1e-9)
    assert all(v < 0.999999 for v in values.values())  # tags and sentence do differ in every view


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


def test_order_drift_equals_recomputed_drift_and_is_reproducible(encode):
    """Oracle: each shuffled caption (the same seeded orders) encoded and its drift recomputed in torch."""
    import random

    from sdxl_probe.probes.embed.sensitivity import join_tags, shuffled_orders, split_tags

    kwargs = dict(k=4, encode=encode, settings=EncodeSettings())
    first = order_sensitivity([TAGS], seed=7, **kwargs)
    again = order_sensitivity([TAGS], seed=7, **kwargs)
    other = order_sensitivity([TAGS], seed=8, **kwargs)
    orders = [join_tags(o) for o in shuffled_orders(split_tags(TAGS), 4, random.Random(7))]
    assert len(first) == 4 and all(sorted(o.split(", ")) == sorted(TAGS.split(", ")) != o.split(", ") for o in orders)
    base, *shuffled = encode([TAGS, *orders], EncodeSettings())
    for sample, enc in zip(first, shuffled, strict=True):
        assert sample.values == pytest.approx(_drift_oracle(base, enc), abs=1e-9)
        assert all(sample.values[f"{v}.cos"] > 1e-9 for v in ("te1", "te2", "context", "pooled"))
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
    """Oracle: "red circle" (2 tokens) is at context positions 1-2 of TAGS and at the last two content
    positions once moved to the end; drifts recomputed from those states in torch."""
    (sample,) = position_sensitivity([TAGS], encode=encode, settings=EncodeSettings())
    tags = TAGS.split(", ")
    base, moved = encode([TAGS, ", ".join(tags[1:] + tags[:1])], EncodeSettings())
    n = len(moved.tokenized.tokens)
    assert [t.text for t in moved.tokenized.tokens[n - 2 :]] == [t.text for t in base.tokenized.tokens[:2]]
    expected = _drift_oracle(base, moved)
    for view in ("te1", "te2", "context"):
        cos, rel = _drift(_states(base, view)[[1, 2]].mean(0), _states(moved, view)[[n - 1, n]].mean(0))
        expected |= {f"tag_{view}.cos": cos, f"tag_{view}.rel_l2": rel}
    assert sample.values == pytest.approx(expected, abs=1e-9)
    assert sample.values["tag_te1.cos"] > 1e-6 and sample.values["pooled.cos"] > 1e-6  # causal: moving moves


def test_weighting_scales_tag_states_and_leaves_pooled(encode):
    (sample,) = weighting_sensitivity([TAGS], weight=1.2, seed=0, encode=encode, settings=EncodeSettings())
    assert sample.values["pooled.cos"] == pytest.approx(0.0, abs=1e-6)
    assert sample.values["tag_context.rel_l2"] == pytest.approx(0.2, abs=1e-4)
    assert sample.values["tag_context.cos"] == pytest.approx(0.0, abs=1e-6)
    # Oracle: the plain caption's states with the weighted tag's positions scaled by 1.2 (sd-scripts SDXL).
    plain, marked = _weighting_captions(TAGS, weight=1.2, seed=0)
    (a,) = encode([plain], EncodeSettings(weighted=True))
    span = _span_positions(a, marked)
    scaled = copy.copy(a)
    scale = torch.ones(a.te1.shape[0], 1)
    scale[span] = 1.2
    scaled.te1, scaled.te2 = a.te1 * scale, a.te2 * scale
    expected = _drift_oracle(a, scaled)
    assert {k: sample.values[k] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert sample.values["context.cos"] > 1e-9


def _weighting_captions(caption: str, *, weight: float, seed: int) -> tuple[str, str]:
    """The plain and weighted captions ``weighting_sensitivity`` builds: one seeded tag as ``(tag:w)``."""
    import random

    tags = caption.split(", ")
    pick = random.Random(seed).randrange(len(tags))
    return caption, ", ".join(tags[:pick] + [f"({tags[pick]}:{weight:g})"] + tags[pick + 1 :])


def _span_positions(enc, marked: str) -> list[int]:
    """Context positions of the tokens of the weighted tag: the tag text inside the brackets."""
    tag = marked[marked.index("(") + 1 : marked.index(":")]
    start = enc.caption.index(tag)
    return [i + 1 for i, t in enumerate(enc.tokenized.tokens) if t.start < start + len(tag) and start < t.end]


def test_settings_validation():
    from sdxl_probe.probes.embed.core import EmbedSettings

    assert EmbedSettings(max_token_length=75).max_token_length is None
    with pytest.raises(ValueError, match="not 75, 150 or 225"):
        EmbedSettings(truncation_lengths=[75, 100])
    with pytest.raises(ValueError):
        dataclasses.replace(EmbedSettings(), mode="comfy")


# ---------------------------------------------------------------- oracle: the measures in plain torch, float64


def _states(enc, view: str) -> torch.Tensor:
    return {"te1": enc.te1, "te2": enc.te2, "context": torch.cat([enc.te1, enc.te2], dim=-1)}[view].double()


def _layout(enc, view: str):
    return enc.layout_te2 if view == "te2" else enc.layout_te1


def _kept(enc, view: str) -> list[int]:
    return [p for p in _layout(enc, view).positions if p is not None]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _drift(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(1 - cosine, |a - b| / |a|)."""
    a, b = a.double().flatten(), b.double().flatten()
    return 1.0 - _cos(a, b), float((a - b).norm() / a.norm())


def _best_match(a: torch.Tensor, b: torch.Tensor) -> float:
    sim = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T  # (n, m)
    return float((sim.max(dim=1).values.mean() + sim.max(dim=0).values.mean()) / 2)


def _pair_oracle(a, b) -> dict[str, float]:
    """``pair_values`` recomputed: mean-pooled cosine, word-aligned cosine, best-match, pooled cosine."""
    out = {"pooled.cos": _cos(a.pooled, b.pooled)}
    for view in ("te1", "te2", "context"):
        sa, sb = _states(a, view), _states(b, view)
        pa, pb = _kept(a, view), _kept(b, view)
        out[f"{view}.cos"] = _cos(sa[pa].mean(0), sb[pb].mean(0))
        shared = shared_word_positions(a.tokenized, _layout(a, view), b.tokenized, _layout(b, view))
        out[f"{view}.word"] = sum(_cos(sa[x].mean(0), sb[y].mean(0)) for x, y in shared.values()) / len(shared)
        out[f"{view}.set"] = _best_match(sa[pa], sb[pb])
    return out


def _drift_oracle(a, b) -> dict[str, float]:
    """``embedding_drifts`` recomputed from the two encodings."""
    out = {}
    for view in ("te1", "te2", "context"):
        d = _drift(_states(a, view)[_kept(a, view)].mean(0), _states(b, view)[_kept(b, view)].mean(0))
        out[f"{view}.cos"], out[f"{view}.rel_l2"] = d
    out["pooled.cos"], out["pooled.rel_l2"] = _drift(a.pooled, b.pooled)
    return out
