"""Pure similarity math for the embedding probe: tensors and token bookkeeping in, floats out.

Every function takes explicit tensors of token states and explicit context positions.
Shapes: ``states`` is ``(L, d)`` for one caption (``L`` the context length 77/152/227,
``d`` the width of the view), ``positions`` are indices into ``L``.

Which tokens count: only *content* tokens, the caption's own tokens that survive
chunking. BOS, EOS and padding are excluded. BOS is excluded because CLIP is causal, so
its state is the same for every caption and would inflate every similarity; EOS is
excluded because it summarises the caption rather than standing for a word, and the
pooled vector already measures that summary.

The math runs in float64 numpy: inputs may be torch tensors or arrays. The arrays are
small (tens of tokens), and numpy keeps such work on one core, where torch's intra-op
thread pool is many times slower on a busy machine.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from sdxl_probe.text.tokens import ChunkLayout, TokenizedCaption


TOKEN_VIEWS: tuple[str, ...] = ("te1", "te2", "context")
VIEWS: tuple[str, ...] = ("te1", "te2", "pooled", "context")
# "cos": cosine of mean-pooled content states (token views) or of the pooled vectors.
# "word": word-aligned cosine over shared words. "set": symmetric mean best-match cosine.
METRICS: tuple[str, ...] = ("cos", "word", "set")
ROUNDING_FLOOR = 1e-12
_WORD = re.compile(r"[^\W_]+")


def as_array(x: np.ndarray | Tensor) -> np.ndarray:
    """A float64 numpy copy of a torch tensor (any device) or array."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def cosine(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Cosine similarity of two vectors ``(d,)``, computed in float64 and clamped to [-1, 1]."""
    a, b = as_array(a).ravel(), as_array(b).ravel()
    if np.array_equal(a, b):
        return 1.0  # exact, rather than 1 - 2e-16 from rounding (and defined for zero vectors)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0:
        return 0.0
    return float(np.clip(a @ b / denom, -1.0, 1.0))


def content_positions(layout: ChunkLayout) -> list[int]:
    """Context positions of the caption tokens that survive chunking (no BOS/EOS/padding)."""
    return [p for p in layout.positions if p is not None]


def mean_pool(states: np.ndarray | Tensor, positions: Sequence[int]) -> np.ndarray:
    """Mean of ``states[positions]``: ``(L, d)`` -> ``(d,)``, in float64.

    Raises:
        ValueError: when ``positions`` is empty (a caption with no content token).
    """
    if len(positions) == 0:
        raise ValueError("no content tokens to pool")
    return as_array(states)[list(positions)].mean(axis=0)


def best_match_similarity(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> float:
    """Symmetric mean best-match cosine between token sets ``a (n, d)`` and ``b (m, d)``.

    Each token of ``a`` is matched to its most similar token of ``b`` and the best
    cosines are averaged (precision); the same from ``b`` to ``a`` (recall); the result
    is the arithmetic mean of both. It does not depend on ``n`` or ``m`` and needs no
    alignment, unlike linear CKA, which needs paired rows. It is the greedy matching of
    BERTScore (Zhang et al., 2020) without idf weights, with P and R averaged rather than
    combined harmonically.
    """
    sim = normalize_rows(as_array(a)) @ normalize_rows(as_array(b)).T  # (n, m)
    precision = sim.max(axis=1).mean()
    recall = sim.max(axis=0).mean()
    return float(np.clip((precision + recall) / 2, -1.0, 1.0))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def words(text: str) -> list[tuple[str, int, int]]:
    """Words of ``text`` as ``(lowercased word, start, end)`` character spans.

    A word is a maximal run of letters or digits, so ``"red_circle"`` is two words and
    punctuation and weighting brackets are never part of a word.
    """
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def word_positions(tc: TokenizedCaption, layout: ChunkLayout) -> dict[str, list[int]]:
    """Map each word of a caption to the context positions of its kept tokens.

    A token belongs to a word when their character spans overlap. All occurrences of a
    word are merged. Words whose tokens were all cut by chunking are left out.

    Args:
        tc: the caption's token bookkeeping (character spans per token).
        layout: the chunk layout of one encoder for that caption.

    Returns:
        ``{word: sorted positions}`` in order of first occurrence.
    """
    out: dict[str, list[int]] = {}
    for word, start, end in words(tc.caption):
        for token, pos in zip(tc.tokens, layout.positions, strict=True):
            if pos is not None and token.start < end and start < token.end:
                out.setdefault(word, [])
                if pos not in out[word]:
                    out[word].append(pos)
    return {w: sorted(p) for w, p in out.items()}


def shared_word_positions(
    tc_a: TokenizedCaption, layout_a: ChunkLayout, tc_b: TokenizedCaption, layout_b: ChunkLayout
) -> dict[str, tuple[list[int], list[int]]]:
    """Words present in both captions, each with its positions in caption a and caption b."""
    pos_a = word_positions(tc_a, layout_a)
    pos_b = word_positions(tc_b, layout_b)
    return {w: (pos_a[w], pos_b[w]) for w in pos_a if w in pos_b}


def word_aligned_similarity(
    states_a: np.ndarray | Tensor,
    states_b: np.ndarray | Tensor,
    shared: dict[str, tuple[list[int], list[int]]],
) -> float | None:
    """Mean over shared words of the cosine between the word's mean token state in a and in b.

    Args:
        states_a: ``(La, d)`` token states of caption a.
        states_b: ``(Lb, d)`` token states of caption b.
        shared: output of :func:`shared_word_positions`.

    Returns:
        The mean cosine, or None when the captions share no word.
    """
    if not shared:
        return None
    sims = [cosine(mean_pool(states_a, pa), mean_pool(states_b, pb)) for pa, pb in shared.values()]
    return sum(sims) / len(sims)


@dataclass(frozen=True)
class Drift:
    """How far one embedding moved: ``cos`` = 1 - cosine, ``rel_l2`` = |a - b| / |a|.

    Cosine distance ignores scale (a weight of 1.2 on every state of a tag leaves it at 0);
    the relative L2 change sees scale too.
    """

    cos: float
    rel_l2: float


def drift(a: np.ndarray | Tensor, b: np.ndarray | Tensor) -> Drift:
    """Drift from vector ``a`` to vector ``b`` (both ``(d,)``)."""
    a64, b64 = as_array(a).ravel(), as_array(b).ravel()
    norm = float(np.linalg.norm(a64))
    diff = float(np.linalg.norm(a64 - b64))
    rel = diff / norm if norm > 0 else diff
    cos = 1.0 - cosine(a64, b64)
    # Below ROUNDING_FLOOR, 1 - cosine of parallel vectors is float64 rounding, not drift.
    return Drift(cos=0.0 if cos < ROUNDING_FLOOR else cos, rel_l2=rel)


def derangement(n: int, rng: random.Random) -> list[int]:
    """A seeded permutation of ``range(n)`` with no fixed point (``n >= 2``).

    Used to pair each caption with an unrelated one from the same set.
    """
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


@dataclass(frozen=True)
class Stats:
    """Summary of a list of values; ``ci_low``/``ci_high`` bound the mean (95% percentile bootstrap)."""

    n: int
    mean: float | None
    median: float | None
    std: float | None
    min: float | None
    max: float | None
    ci_low: float | None
    ci_high: float | None


def summarize(values: Sequence[float | None], *, seed: int = 0, n_boot: int = 1000) -> Stats:
    """Summary statistics of ``values`` (None entries are skipped), with a seeded bootstrap CI."""
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return Stats(0, None, None, None, None, None, None, None)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    return Stats(
        n=int(v.size),
        mean=float(v.mean()),
        median=float(np.median(v)),
        std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
        min=float(v.min()),
        max=float(v.max()),
        ci_low=float(np.quantile(means, 0.025)),
        ci_high=float(np.quantile(means, 0.975)),
    )


def style_effect(
    pair_distances: Sequence[float | None], unrelated_distances: Sequence[float | None]
) -> float | None:
    """Normalized style effect: mean tag-to-sentence distance / mean unrelated-caption distance.

    0 means the style change does not move the embedding; 1 means it moves it as far as
    swapping in a caption about something else entirely.
    """
    num = summarize(pair_distances, n_boot=1).mean
    den = summarize(unrelated_distances, n_boot=1).mean
    if num is None or den is None or den <= 0:
        return None
    return num / den
