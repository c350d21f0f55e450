"""Unit tests of the embedding probe's pure math, on hand-built tensors and token records."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdxl_probe.probes.embed.metrics import (
    best_match_similarity,
    content_positions,
    cosine,
    derangement,
    drift,
    mean_pool,
    shared_word_positions,
    style_effect,
    summarize,
    word_aligned_similarity,
    word_positions,
    words,
)


def _tok(start: int, end: int):
    return SimpleNamespace(start=start, end=end)


def _caption(text: str, spans: list[tuple[int, int]], positions: list[int | None]):
    """A hand-built TokenizedCaption/ChunkLayout pair with the given token spans and positions."""
    tc = SimpleNamespace(caption=text, tokens=[_tok(s, e) for s, e in spans])
    return tc, SimpleNamespace(positions=positions)


def test_cosine_identical_and_opposite():
    v = torch.randn(64)
    assert cosine(v, v.clone()) == pytest.approx(1.0, abs=1e-12)
    assert cosine(v, -v) == pytest.approx(-1.0, abs=1e-12)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx(0.0)


def test_mean_pool_uses_only_given_positions():
    states = torch.zeros(6, 3)
    states[1] = torch.tensor([1.0, 2.0, 3.0])
    states[2] = torch.tensor([3.0, 2.0, 1.0])
    states[5] = 100.0  # padding: must be ignored
    assert np.allclose(mean_pool(states, [1, 2]), [2.0, 2.0, 2.0])
    assert np.allclose(mean_pool(states.numpy(), [1, 2]), [2.0, 2.0, 2.0])
    with pytest.raises(ValueError):
        mean_pool(states, [])


def test_content_positions_skip_cut_tokens():
    layout = SimpleNamespace(positions=[1, 2, None, None])
    assert content_positions(layout) == [1, 2]


def test_best_match_is_one_for_identical_sets_and_length_independent():
    a = torch.randn(5, 16)
    assert best_match_similarity(a, a.clone()) == pytest.approx(1.0, abs=1e-9)
    # Repeating the same tokens does not change a best-match score.
    assert best_match_similarity(a, torch.cat([a, a])) == pytest.approx(1.0, abs=1e-9)
    b = torch.randn(9, 16)
    assert best_match_similarity(a, b) == pytest.approx(best_match_similarity(b, a), abs=1e-12)
    assert best_match_similarity(a, b) < 1.0


def test_best_match_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0]])
    # precision: (1 + 0) / 2 = 0.5; recall: max over a for b's one token = 1; mean 0.75
    assert best_match_similarity(a, b) == pytest.approx(0.75)


def test_words_spans_lowercase():
    assert words("Red circle, (blue:1.2) 3d") == [
        ("red", 0, 3),
        ("circle", 4, 10),
        ("blue", 13, 17),
        ("1", 18, 19),
        ("2", 20, 21),
        ("3d", 23, 25),
    ]


def test_word_positions_map_each_word_to_its_tokens():
    # "red butterfly" where "butterfly" is two BPE tokens ("butter", "fly"); BOS at 0.
    tc, layout = _caption("red butterfly", [(0, 3), (4, 10), (10, 13)], [1, 2, 3])
    assert word_positions(tc, layout) == {"red": [1], "butterfly": [2, 3]}


def test_word_positions_merge_repeats_and_drop_cut_tokens():
    tc, layout = _caption("dog, cat, dog", [(0, 3), (3, 4), (5, 8), (8, 9), (10, 13)], [1, 2, 3, 4, None])
    assert word_positions(tc, layout) == {"dog": [1], "cat": [3]}


def test_shared_word_positions_and_alignment():
    tc_a, lay_a = _caption("red circle", [(0, 3), (4, 10)], [1, 2])
    tc_b, lay_b = _caption("a red circle", [(0, 1), (2, 5), (6, 12)], [1, 2, 3])
    shared = shared_word_positions(tc_a, lay_a, tc_b, lay_b)
    assert shared == {"red": ([1], [2]), "circle": ([2], [3])}
    states_a = torch.randn(4, 8)
    states_b = torch.randn(5, 8)
    states_b[2], states_b[3] = states_a[1], states_a[2]
    assert word_aligned_similarity(states_a, states_b, shared) == pytest.approx(1.0, abs=1e-9)
    states_b[3] = -states_a[2]
    assert word_aligned_similarity(states_a, states_b, shared) == pytest.approx(0.0, abs=1e-9)
    assert word_aligned_similarity(states_a, states_b, {}) is None


def test_drift_cosine_ignores_scale_rel_l2_does_not():
    v = torch.randn(32)
    d = drift(v, 1.2 * v)
    assert d.cos == pytest.approx(0.0, abs=1e-6)
    assert d.rel_l2 == pytest.approx(0.2, abs=1e-6)
    assert drift(v, v).rel_l2 == 0.0


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in (2, 3, 10):
        perm = derangement(n, random.Random(1))
        assert sorted(perm) == list(range(n))
        assert all(i != p for i, p in enumerate(perm))
    assert derangement(20, random.Random(5)) == derangement(20, random.Random(5))
    with pytest.raises(ValueError):
        derangement(1, random.Random(0))


def test_summarize_and_style_effect():
    s = summarize([1.0, 2.0, 3.0, None, 4.0])
    assert (s.n, s.mean, s.median, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.ci_low <= s.mean <= s.ci_high
    assert summarize([None]).mean is None
    assert style_effect([0.1, 0.3], [0.4, 0.4]) == pytest.approx(0.5)
    assert style_effect([0.1], []) is None
