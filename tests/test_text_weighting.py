"""Weighted-caption parser: sd-scripts examples and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdxl_probe.text.weighting import parse_prompt_attention, parse_weighted_segments


def _approx(pairs):
    return [(t, pytest.approx(w)) for t, w in pairs]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
             (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)],
        ),
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]", [("x", 1 / 1.21)]),
        ("a) b] c", [("a) b] c", 1.0)]),
        ("x:1.2) (y:1.5)", [("x:1.2) ", 1.0), ("y", 1.5)]),
        ("(a:-1)", [("a", -1.0)]),
        ("\\\\ back", [("\\ back", 1.0)]),
        ("(a (b) c)", [("a ", 1.1), ("b", 1.21), (" c", 1.1)]),
        ("(x:1.2.3)", [("x:1.2.3)", 1.1)]),  # sd-scripts raises ValueError here; we keep the text
        ("(a:.)", [("a:.)", 1.1)]),
    ],
)
def test_sd_scripts_examples(text, expected):
    assert parse_prompt_attention(text) == _approx(expected)


def test_weights_are_exact_products():
    """Weights are multiplied in sd-scripts' order, so exact floats match its output."""
    house = parse_prompt_attention("a (((house:1.3)) x")[1]
    assert house == ("house", 1.3 * 1.1 * 1.1)


def test_offsets_point_into_original():
    text = "a (\\(b\\):1.5) [c]"
    for seg in parse_weighted_segments(text):
        assert "".join(text[i] for i in seg.offsets) == seg.text


@given(st.text(max_size=60))
def test_never_crashes_and_offsets_hold(text):
    segments = parse_weighted_segments(text)
    assert segments
    for seg in segments:
        assert len(seg.offsets) == len(seg.text)
        assert all(text[i] == c for i, c in zip(seg.offsets, seg.text, strict=True))
        assert seg.offsets == sorted(seg.offsets)


@given(st.text(st.characters(exclude_characters="()[]\\:"), max_size=60))
def test_plain_text_round_trips(text):
    assert parse_prompt_attention(text) == [(text, 1.0)]


def _strip_syntax(text: str) -> str:
    """Reference: drop brackets that open, or close an open one; keep unmatched closers."""
    out, depth = [], {"(": 0, "[": 0}
    closer = {")": "(", "]": "["}
    for c in text:
        if c in depth:
            depth[c] += 1
        elif c in closer and depth[closer[c]] > 0:
            depth[closer[c]] -= 1
        else:
            out.append(c)
    return "".join(out)


@given(st.text(st.sampled_from(list("ab ,()[]")), max_size=40))
def test_concatenation_is_text_without_syntax(text):
    assert "".join(t for t, _ in parse_prompt_attention(text)) == _strip_syntax(text)


@given(st.lists(st.tuples(st.sampled_from(["cat", "red", "sky"]), st.integers(0, 3), st.integers(0, 2)), max_size=6))
def test_nesting_multiplies(items):
    """Each word wrapped in r round and s square brackets gets 1.1**r / 1.1**s."""
    text = " ".join("(" * r + "[" * s + w + "]" * s + ")" * r for w, r, s in items)
    expected = {}
    for w, r, s in items:
        expected.setdefault(round(1.1**r / 1.1**s, 9), []).append(w)
    for seg_text, weight in parse_prompt_attention(text):
        words = [w for w in seg_text.split() if w]
        assert all(w in expected[round(weight, 9)] for w in words)
