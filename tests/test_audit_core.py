"""Audit internals: the per-tag fast path equals the span tokenizer path; shuffle probabilities."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sdxl_probe.probes.audit.caption import CachedEncoder, audit_caption, audit_tag_layout, tag_layout
from sdxl_probe.probes.audit.shuffle import cut_probabilities, split_tags, tag_token_lengths
from sdxl_probe.text.bpe import get_bpe
from sdxl_probe.text.captions import CaptionOptions, process_caption
from sdxl_probe.text.tokens import tokenize_caption

LIMITS = (75, 150, 225)
# Tags that glue cleanly to "," on both sides, so a caption's token positions are the running sum of
# their lengths plus one separator token each (CLIP BPE never merges across whitespace).
CLEAN_TAGS = ["red", "sks", "1girl", "long_hair", "café", "a photo of sks", "x-y", "12", "blue eyes",
              "looking at viewer", "white background", "very long flowing silver hair", "hatsune miku"]
# Tags that make the per-tag layout inexact (merging with the separator, empty, weighting syntax):
# they exercise the fallback to the span tokenizer.
ODD_TAGS = ["ok!", "!!", " ", "(smile:1.2)", ""]
MIN_QUALIFYING = 120  # of MAX_EXAMPLES: examples that took the fast path AND crossed a cut
MAX_EXAMPLES = 200


@st.composite
def captions_across_cuts(draw) -> tuple[str, str]:
    """A caption of clean tags running past a target of 76..260 caption tokens; 1 in 6 also has odd tags.

    The target is a cut (75, 150 or 225) plus up to 35 tokens, so every caption crosses at least
    one cut and a third of them cross all three; the tag holding the cut is often partly lost.
    """
    target = draw(st.sampled_from(LIMITS)) + draw(st.integers(1, 35))
    with_odd = draw(st.integers(0, 5)) == 0
    tags, n = [], -1
    while n < target:
        odd = with_odd and draw(st.integers(0, 7)) == 0
        tag = draw(st.sampled_from(ODD_TAGS if odd else CLEAN_TAGS))
        tags.append(tag)
        n += len(get_bpe().encode(tag)) + 1
    joiner = draw(st.sampled_from([",", ", ", " ,"]))
    return joiner.join(tags), joiner


def _expected_last_positions(tags: list[str]) -> list[int]:
    """Oracle for clean tags: context position of each tag's last token from tag lengths alone."""
    encode, pos, out = get_bpe().encode, 0, []
    for k, tag in enumerate(tags):
        pos += len(encode(tag)) + (1 if k else 0)  # "," is one token
        out.append(pos)
    return out


def test_fast_path_equals_span_path_across_the_cuts():
    """The per-tag fast path (``audit_tag_layout``) equals the span tokenizer path (``audit_caption``).

    Oracle: the slow path, ``tokenize_caption`` + ``chunk_layout``, on captions built to cross
    75, 150 and 225 tokens; for all-clean captions also the running sum of known tag lengths.
    The test fails if fewer than MIN_QUALIFYING examples took the fast path past a cut.
    """
    seen: Counter[str] = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(captions_across_cuts())
    def check(drawn):
        caption, _ = drawn
        encode = CachedEncoder()
        slow = audit_caption(tokenize_caption(caption), limits=LIMITS, trigger="sks", keep_tokens=2, separator=",")
        lay = tag_layout(caption, ",", encode)
        if lay is None:
            seen["slow path only"] += 1
            return
        fast = audit_tag_layout(caption, lay, limits=LIMITS, trigger="sks", keep_tokens=2, separator=",",
                                encode=encode)
        assert fast == slow
        crossed = [limit for limit in LIMITS if slow.n_tokens["te1"] > limit]
        assert crossed and all(slow.lost[limit] for limit in crossed)  # the tag holding token limit+1 is lost
        if all(t.strip() in CLEAN_TAGS for t in caption.split(",")):
            assert fast.tag_last == _expected_last_positions(fast.tags)
            seen["checked against tag lengths"] += 1
        if lay.order_free:
            assert tag_token_lengths(lay.tags, get_bpe().encode, ",") == (lay.lengths, lay.sep_tokens)
        for limit in crossed:
            event(f"crosses {limit}")
            seen[f"crosses {limit}"] += 1
        seen["fast path past a cut"] += 1

    check()
    print(dict(seen))
    assert seen["fast path past a cut"] >= MIN_QUALIFYING, dict(seen)
    assert min(seen["crosses 75"], seen["crosses 150"], seen["crosses 225"]) >= MIN_QUALIFYING // 4, dict(seen)
    assert seen["slow path only"] >= 1 and seen["checked against tag lengths"] >= MIN_QUALIFYING // 4, dict(seen)


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
