"""Weighted-caption syntax with sd-scripts' ``parse_prompt_attention`` semantics.

Source: kohya-ss/sd-scripts ``library/strategy_base.py`` (``TokenizeStrategy._re_attention`` and
the nested ``parse_prompt_attention``, itself from AUTOMATIC1111's prompt_parser):

* ``(x)`` multiplies the weight of ``x`` by 1.1, ``[x]`` divides it by 1.1, ``(x:w)`` multiplies
  it by ``w``; nesting multiplies; an unclosed bracket applies to the rest of the text;
* ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal characters; an unmatched closing bracket
  is literal text;
* adjacent segments with exactly equal weights are merged; empty text gives ``[("", 1.0)]``.

One deliberate difference: sd-scripts raises ``ValueError`` on a weight that is not a number
(``(x:1.2.3)``, ``(x:.)``); here that ``:w)`` stays literal text, so an audit never crashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Same alternatives, in the same order, as sd-scripts' re_attention.
RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


@dataclass
class WeightedSegment:
    """A run of caption text sharing one weight.

    Attributes:
        text: the segment text with the syntax removed (what sd-scripts tokenizes alone).
        weight: product of the bracket multipliers around it.
        offsets: for each character of ``text``, its index in the original caption.
    """

    text: str
    weight: float
    offsets: list[int]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """``[(segment text, weight), ...]`` exactly as sd-scripts parses a weighted caption."""
    return [(s.text, s.weight) for s in parse_weighted_segments(text)]


def _number(weight: str) -> float | None:
    try:
        return float(weight)
    except ValueError:
        return None


def parse_weighted_segments(text: str) -> list[WeightedSegment]:
    """Like :func:`parse_prompt_attention`, keeping where each character came from."""
    res: list[WeightedSegment] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for seg in res[start:]:
            seg.weight *= multiplier

    for m in RE_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        value = _number(weight) if weight is not None else None
        if piece.startswith("\\"):
            res.append(WeightedSegment(piece[1:], 1.0, list(range(m.start() + 1, m.end()))))
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif value is not None and round_open:
            multiply_range(round_open.pop(), value)
        elif piece == ")" and round_open:
            multiply_range(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            multiply_range(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            res.append(WeightedSegment(piece, 1.0, list(range(m.start(), m.end()))))
    for pos in round_open:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_open:
        multiply_range(pos, SQUARE_MULTIPLIER)
    return _merge_equal_weights(res) if res else [WeightedSegment("", 1.0, [])]


def _merge_equal_weights(segments: list[WeightedSegment]) -> list[WeightedSegment]:
    """Merge runs of segments whose weights are exactly equal (sd-scripts compares with ==)."""
    merged = [segments[0]]
    for seg in segments[1:]:
        if seg.weight == merged[-1].weight:
            merged[-1] = WeightedSegment(merged[-1].text + seg.text, seg.weight, merged[-1].offsets + seg.offsets)
        else:
            merged.append(seg)
    return merged
