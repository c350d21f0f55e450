"""Audit internals: the per-tag fast path equals the span tokenizer path; shuffle probabilities."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdxl_probe.probes.audit.caption import CachedEncoder, audit_caption, audit_tag_layout, tag_layout
from sdxl_probe.probes.audit.shuffle import cut_probabilities, split_tags, tag_token_lengths
from sdxl_probe.text.bpe import get_bpe
from sdxl_probe.text.captions import CaptionOptions, process_caption
from sdxl_probe.text.tokens import tokenize_caption

LIMITS = (75, 150, 225)
PIECES = [
    "red",
    "Blue",
    "sks",
    "1girl",
    "long_hair",
    "(smile:1.2)",
    "ok!",
    "café",
    "a photo of sks",
    " ",
    "!!",
    "x-y",
    "12",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=0, max_size=80), st.sampled_from([",", ", ", " ,", ",,"]))
def test_fast_path_equals_span_path(pieces, joiner):
    caption = joiner.join(pieces)
    encode = CachedEncoder()
    lay = tag_layout(caption, ",", encode)
    slow = audit_caption(
        tokenize_caption(caption), limits=LIMITS, trigger="sks", keep_tokens=2, separator=","
    )
    if lay is None:
        return
    fast = audit_tag_layout(
        caption, lay, limits=LIMITS, trigger="sks", keep_tokens=2, separator=",", encode=encode
    )
    assert fast == slow
    if lay.order_free:
        assert tag_token_lengths(lay.tags, get_bpe().encode, ",") == (lay.lengths, lay.sep_tokens)


def test_fast_path_covers_plain_tag_captions():
    encode = CachedEncoder()
    assert tag_layout("1girl, long hair, red eyes, (smile:1.2)", ",", encode) is not None


def _brute_force(caption: str, keep: int, limit: int) -> list[float]:
    """Every order of the flex tags, rejoined and tokenized for real; tag positions from token spans."""
    tags = split_tags(caption, ",")
    flex = list(range(keep, len(tags)))
    hits = [0] * len(tags)
    orders = list(itertools.permutations(flex))
    for order in orders:
        seq = list(range(keep)) + list(order)
        tc = tokenize_caption(", ".join(tags[i] for i in seq))
        for slot, (_, start, end) in enumerate(tc.tags):
            last = max((k + 1 for k, t in enumerate(tc.tokens) if t.start < end and t.end > start), default=0)
            hits[seq[slot]] += last > limit
    return [h / len(orders) for h in hits]


@pytest.mark.parametrize("keep", [0, 2])
def test_exact_shuffle_matches_brute_force(keep):
    rng = random.Random(keep)
    words = ["red", "cat", "blue", "dog", "sky", "tree", "sun"]
    tags = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(7)]
    caption = ", ".join(tags)
    lengths, sep = tag_token_lengths(tags, get_bpe().encode, ",")
    limit = sum(lengths) // 2
    probs, exact = cut_probabilities(lengths, keep, limit, None, 0, sep)
    assert exact
    assert probs == pytest.approx(_brute_force(caption, keep, limit))
    assert 0 < max(probs) and min(probs[keep:]) < 1


def test_monte_carlo_close_to_exact():
    lengths = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    exact_probs = _enumerate(lengths, keep=1, limit=30)
    mc, exact = cut_probabilities(lengths, 1, 30, np.random.default_rng(0), 20000)
    assert not exact
    assert mc == pytest.approx(exact_probs, abs=0.02)


def _enumerate(lengths: list[int], keep: int, limit: int) -> list[float]:
    hits, n = [0] * len(lengths), 0
    for order in itertools.permutations(range(keep, len(lengths))):
        seq, pos = list(range(keep)) + list(order), 0
        n += 1
        for slot, i in enumerate(seq):
            pos += lengths[i] + (1 if slot else 0)
            hits[i] += pos > limit
    return [h / n for h in hits]


def test_merging_tag_is_not_order_free():
    assert tag_token_lengths(["red", "cat!"], get_bpe().encode, ",") is None  # "!," is one BPE piece


def test_shuffle_pipeline_uses_process_caption_order():
    # The model's rejoin matches the TEXT pipeline's: same tags, ", " between them.
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1)
    out = process_caption("a, b, c, d", opts, random.Random(0))
    assert out.split(", ")[0] == "a" and sorted(out.split(", ")) == ["a", "b", "c", "d"]
