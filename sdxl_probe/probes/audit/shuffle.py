"""Where do tags land under ``shuffle_caption``? Per-tag probability of being cut at a limit.

Model (sd-scripts ``process_caption``, see docs/sd-scripts-compat.md §2): the caption is split on
``caption_separator``, each piece stripped; the first ``keep_tokens`` tags stay in place, the
rest are shuffled, and all are rejoined with ``separator + " "`` (``", "``). A tag is *cut* at limit ``L`` when any
of its tokens sits past caption token ``L`` (it is partly or wholly lost).

CLIP BPE never merges across whitespace, so unless a tag's last word merges with the separator
glued to it, the token count of the rejoined caption, in any order, is the sum of the tags' own
counts plus the separators'. :func:`tag_token_lengths` checks that for every tag. Where it
holds, the probability is computed from tag lengths: **exactly** by enumerating every order
when at most :data:`EXACT_MAX_FLEX` tags move, otherwise by **Monte Carlo** over random orders
drawn from a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

EXACT_MAX_FLEX = 7  # 7! = 5,040 orders: cheap to enumerate with numpy


def split_tags(caption: str, separator: str) -> list[str]:
    """Tags as sd-scripts' shuffle sees them: ``[t.strip() for t in caption.strip().split(sep)]``."""
    return [t.strip() for t in caption.strip().split(separator)]


def tag_token_lengths(tags: list[str], encode, separator: str = ",") -> tuple[list[int], int] | None:
    """Token count of each tag and of the separator, or None when counts are not order-free.

    Rejoined tags are ``separator + " "`` apart and CLIP BPE encodes whitespace-separated words
    independently, so only a tag's last word can interact with the separator glued to it. If
    ``encode(tag + separator) == encode(tag) + encode(separator)`` for every tag, the ids of the
    caption in ANY order are the concatenation of the parts, and positions follow from lengths.

    Args:
        tags: tags in written order.
        encode: ``str -> list[int]`` without BOS/EOS (``ClipBPE.encode``).
        separator: the caption separator.

    Returns:
        ``(lengths, separator_tokens)``, or None when some tag merges with the separator.
    """
    sep_ids = encode(separator)
    lengths = []
    for tag in tags:
        ids = encode(tag)
        if encode(tag + separator) != ids + sep_ids:
            return None
        lengths.append(len(ids))
    return lengths, len(sep_ids)


@lru_cache(maxsize=EXACT_MAX_FLEX + 1)
def _all_orders(m: int) -> np.ndarray:
    import numpy as np

    return np.array(list(itertools.permutations(range(m))), dtype=np.int32).reshape(-1, m)


def cut_probabilities(
    lengths: list[int],
    n_keep: int,
    limit: int,
    rng: np.random.Generator | None,
    samples: int,
    sep_tokens: int = 1,
) -> tuple[list[float], bool]:
    """Probability, per tag (written order), that the tag ends past caption token ``limit``.

    Args:
        lengths: token count of each tag, in written order.
        n_keep: ``keep_tokens``: how many leading tags stay fixed.
        limit: the token limit (75, 150 or 225 caption tokens).
        rng: source of random orders for Monte Carlo (unused when exact).
        samples: number of random orders for Monte Carlo.
        sep_tokens: tokens of the separator between two tags (1 for ",").

    Returns:
        ``(probabilities, exact)``.
    """
    import numpy as np

    n = len(lengths)
    k = min(n_keep, n)
    m = n - k
    base = np.asarray(lengths, dtype=np.int64)
    gaps = np.arange(n) * sep_tokens  # separator tokens before each slot
    if sum(lengths) + (n - 1) * sep_tokens <= limit or m <= 1:
        ends = np.cumsum(base) + gaps
        return (ends > limit).astype(float).tolist(), True
    exact = m <= EXACT_MAX_FLEX
    if exact:
        orders = _all_orders(m)
    else:
        orders = rng.permuted(np.tile(np.arange(m, dtype=np.int32), (samples, 1)), axis=1)
    seq = np.concatenate([np.broadcast_to(np.arange(k), (len(orders), k)), orders + k], axis=1)  # (S, n)
    ends = np.cumsum(base[seq], axis=1) + gaps  # (S, n) last token index + 1 of each slot
    cut = ends > limit
    per_tag = np.zeros((len(orders), n), dtype=bool)
    np.put_along_axis(per_tag, seq, cut, axis=1)
    return per_tag.mean(axis=0).tolist(), exact
