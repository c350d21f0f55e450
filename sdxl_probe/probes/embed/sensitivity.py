"""Sensitivity of the text embeddings to tag order, tag position, truncation and weighting.

Each analysis builds caption variants (pure string work, seeded), encodes all of them in
one batched call through ``encode``, and measures drift between a caption and its variant:

* mean-pooled content states per view (``te1``, ``te2``, ``context``) and the ``pooled``
  vector, as ``<view>.cos`` (1 - cosine) and ``<view>.rel_l2`` (|a - b| / |a|);
* for position and weighting, also the states of the moved or weighted tag alone,
  as ``tag_<view>.cos`` / ``tag_<view>.rel_l2``.

Tags are split on ``,`` and re-joined with ``", "`` as sd-scripts does after shuffling.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sdxl_probe.pipeline.encoding_cache import Encoded, EncodeSettings
from sdxl_probe.probes.embed.metrics import TOKEN_VIEWS, content_positions, drift, mean_pool

EncodeFn = Callable[[Sequence[str], EncodeSettings], list[Encoded]]
_BRACKETS = str.maketrans({"(": r"\(", ")": r"\)", "[": r"\[", "]": r"\]"})


@dataclass(frozen=True)
class DriftSample:
    """One caption-versus-variant measurement.

    Attributes:
        analysis: "order" | "position" | "truncation" | "weighting".
        caption: index of the caption in the list the analysis was given.
        variant: what changed, e.g. ``"shuffle 2"``, ``"max_token_length 150"``.
        values: ``{"<view>.cos": ..., "<view>.rel_l2": ..., "tag_<view>.cos": ...}``.
        n_tokens: caption tokens without BOS/EOS (set by the truncation analysis).
    """

    analysis: str
    caption: int
    variant: str
    values: dict[str, float]
    n_tokens: int = 0


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Non-empty stripped tags of a caption."""
    return [t.strip() for t in caption.split(separator) if t.strip()]


def join_tags(tags: Sequence[str]) -> str:
    """Join tags with ``", "`` (sd-scripts' re-join after shuffling)."""
    return ", ".join(tags)


def tag_span(tags: Sequence[str], index: int) -> tuple[int, int]:
    """Character span of ``tags[index]`` inside ``join_tags(tags)``."""
    start = sum(len(t) + 2 for t in tags[:index])
    return start, start + len(tags[index])


def span_positions(enc: Encoded, start: int, end: int, view: str) -> list[int]:
    """Context positions of the kept tokens whose character span overlaps ``[start, end)``."""
    layout = enc.layout_te2 if view == "te2" else enc.layout_te1
    return [
        pos
        for token, pos in zip(enc.tokenized.tokens, layout.positions, strict=True)
        if pos is not None and token.start < end and start < token.end
    ]


def view_states(enc: Encoded, view: str):
    """``(L, d)`` token states of a view: te1, te2 or context."""
    if view == "te1":
        return enc.te1
    return enc.te2 if view == "te2" else enc.context


def embedding_drifts(a: Encoded, b: Encoded) -> dict[str, float]:
    """Drift of the mean-pooled content states per token view, and of the pooled vector."""
    out: dict[str, float] = {}
    for view in TOKEN_VIEWS:
        layout_a = a.layout_te2 if view == "te2" else a.layout_te1
        layout_b = b.layout_te2 if view == "te2" else b.layout_te1
        d = drift(
            mean_pool(view_states(a, view), content_positions(layout_a)),
            mean_pool(view_states(b, view), content_positions(layout_b)),
        )
        out[f"{view}.cos"], out[f"{view}.rel_l2"] = d.cos, d.rel_l2
    d = drift(a.pooled, b.pooled)
    out["pooled.cos"], out["pooled.rel_l2"] = d.cos, d.rel_l2
    return out


def tag_drifts(a: Encoded, span_a: tuple[int, int], b: Encoded, span_b: tuple[int, int]) -> dict[str, float]:
    """Drift of one tag's mean token state between two captions, per token view."""
    out: dict[str, float] = {}
    for view in TOKEN_VIEWS:
        pos_a, pos_b = span_positions(a, *span_a, view), span_positions(b, *span_b, view)
        if not pos_a or not pos_b:
            continue  # the tag was cut by chunking in one of the captions
        d = drift(mean_pool(view_states(a, view), pos_a), mean_pool(view_states(b, view), pos_b))
        out[f"tag_{view}.cos"], out[f"tag_{view}.rel_l2"] = d.cos, d.rel_l2
    return out


def shuffled_orders(tags: Sequence[str], k: int, rng: random.Random) -> list[list[str]]:
    """``k`` seeded shuffles of ``tags``, each different from the original order.

    Returns an empty list when no different order exists (fewer than two distinct tags).
    """
    if len(set(tags)) < 2:
        return []
    orders = []
    while len(orders) < k:
        order = list(tags)
        rng.shuffle(order)
        if order != list(tags):
            orders.append(order)
    return orders


def order_sensitivity(
    captions: Sequence[str], *, k: int, seed: int, encode: EncodeFn, settings: EncodeSettings
) -> list[DriftSample]:
    """Drift caused by shuffling each caption's tags ``k`` times (seeded)."""
    rng = random.Random(seed)
    jobs = []  # (caption index, shuffle number, base text, shuffled text)
    for i, caption in enumerate(captions):
        tags = split_tags(caption)
        for j, order in enumerate(shuffled_orders(tags, k, rng)):
            jobs.append((i, j, join_tags(tags), join_tags(order)))
    encoded = _encode_map(encode, [t for job in jobs for t in job[2:]], settings)
    return [
        DriftSample("order", i, f"shuffle {j + 1}", embedding_drifts(encoded[base], encoded[shuffled]))
        for i, j, base, shuffled in jobs
    ]


def position_sensitivity(
    captions: Sequence[str], *, encode: EncodeFn, settings: EncodeSettings
) -> list[DriftSample]:
    """Drift caused by moving each caption's first tag to the end (tag states and pooled)."""
    jobs = []  # (caption index, base tags, moved tags)
    for i, caption in enumerate(captions):
        tags = split_tags(caption)
        if len(tags) >= 2:
            jobs.append((i, tags, tags[1:] + tags[:1]))
    encoded = _encode_map(encode, [join_tags(t) for job in jobs for t in job[1:]], settings)
    samples = []
    for i, tags, moved in jobs:
        a, b = encoded[join_tags(tags)], encoded[join_tags(moved)]
        values = {
            **embedding_drifts(a, b),
            **tag_drifts(a, tag_span(tags, 0), b, tag_span(moved, len(moved) - 1)),
        }
        samples.append(DriftSample("position", i, f"first tag -> last ({len(tags)} tags)", values))
    return samples


def weighting_sensitivity(
    captions: Sequence[str], *, weight: float, seed: int, encode: EncodeFn, settings: EncodeSettings
) -> list[DriftSample]:
    """Drift caused by writing one seeded tag of each caption as ``(tag:weight)``.

    Both the plain and the weighted caption are encoded with weighted parsing on (brackets
    already in the tags are escaped), so only the weight differs.
    """
    rng = random.Random(seed)
    weighted_settings = EncodeSettings(settings.max_token_length, settings.mode, weighted=True)
    jobs = []  # (caption index, plain text, weighted text, span of the tag in the plain text)
    for i, caption in enumerate(captions):
        tags = [t.translate(_BRACKETS) for t in split_tags(caption)]
        if tags:
            pick = rng.randrange(len(tags))
            marked = tags[:pick] + [f"({tags[pick]}:{weight:g})"] + tags[pick + 1 :]
            jobs.append((i, join_tags(tags), join_tags(marked), tag_span(tags, pick)))
    encoded = _encode_map(encode, [t for job in jobs for t in job[1:3]], weighted_settings)
    samples = []
    for i, plain, marked, span in jobs:
        a, b = encoded[plain], encoded[marked]
        # The weighted caption has the same tokens at the same positions; only states are scaled.
        values = {**embedding_drifts(a, b), **_same_position_tag_drifts(a, b, span)}
        samples.append(DriftSample("weighting", i, f"(tag:{weight:g})", values))
    return samples


def cut_after_tokens(caption: str, n_keep: int) -> str:
    """The caption cut after its first ``n_keep`` CLIP tokens (unchanged when not longer).

    The cut is at the character end of token ``n_keep``; a word split by the cut is
    re-tokenized as a shorter word, as when a user trims the caption by hand.
    """
    from sdxl_probe.text.tokens import tokenize_caption

    tokens = tokenize_caption(caption).tokens
    return caption if len(tokens) <= n_keep else caption[: tokens[n_keep - 1].end]


def truncation_sensitivity(
    captions: Sequence[str],
    *,
    chunk_tokens: int,
    max_token_lengths: Sequence[int | None],
    encode: EncodeFn,
    mode: str,
) -> list[DriftSample]:
    """Drift when the part after token ``chunk_tokens`` (75) is cut, per max_token_length.

    For each setting the full caption and the cut caption are encoded under that same
    setting. With ``None`` (75) the encoder already drops the tail, so cutting it should
    change nothing; with 150 or 225 the drift measures what the tail adds. A caption with
    no more than ``chunk_tokens`` tokens is not cut, and its drift is 0.
    """
    from sdxl_probe.text.tokens import tokenize_caption

    cuts = [(c, cut_after_tokens(c, chunk_tokens), len(tokenize_caption(c).tokens)) for c in captions]
    samples = []
    for mtl in max_token_lengths:
        settings = EncodeSettings(max_token_length=mtl, mode=mode)
        encoded = _encode_map(encode, [t for full, cut, _ in cuts for t in (full, cut)], settings)
        label = f"max_token_length {mtl or chunk_tokens}"
        for i, (full, cut, n) in enumerate(cuts):
            samples.append(
                DriftSample("truncation", i, label, embedding_drifts(encoded[full], encoded[cut]), n)
            )
    return samples


def long_captions(captions: Sequence[str], *, min_tokens: int, limit: int) -> list[str]:
    """Synthetic long captions: each caption joined with the ones after it until ``min_tokens``.

    The list is cycled when it is shorter than ``min_tokens`` in all. These captions show
    the truncation effect even when the user's captions are all short.
    """
    from sdxl_probe.text.tokens import tokenize_caption

    counts = [len(tokenize_caption(c).tokens) + 1 for c in captions]  # +1 for the ", " joint
    out = []
    for start in range(min(limit, len(captions))):
        parts, total, j = [], 0, start
        while total < min_tokens:
            parts.append(captions[j % len(captions)])
            total += counts[j % len(captions)]
            j += 1
        out.append(", ".join(parts))
    return out


def _same_position_tag_drifts(a: Encoded, b: Encoded, span: tuple[int, int]) -> dict[str, float]:
    if [t.id for t in a.tokenized.tokens] != [t.id for t in b.tokenized.tokens]:
        return {}
    out: dict[str, float] = {}
    for view in TOKEN_VIEWS:
        pos = span_positions(a, *span, view)
        if pos:
            d = drift(mean_pool(view_states(a, view), pos), mean_pool(view_states(b, view), pos))
            out[f"tag_{view}.cos"], out[f"tag_{view}.rel_l2"] = d.cos, d.rel_l2
    return out


def _encode_map(encode: EncodeFn, texts: Sequence[str], settings: EncodeSettings) -> dict[str, Encoded]:
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, encode(unique, settings), strict=True)) if unique else {}
