"""The embedding probe's measurements, from encoded captions to plain dicts of floats.

Pair measures, the unrelated-caption baseline, style effects, similarity matrices and the
sensitivity runs. Everything is seeded; nothing here reads files.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sdxl_probe.pipeline.device import precision_of
from sdxl_probe.pipeline.encoding_cache import Encoded, EncodeSettings
from sdxl_probe.probes.embed import sensitivity as sens
from sdxl_probe.probes.embed.metrics import (
    METRICS,
    TOKEN_VIEWS,
    VIEWS,
    as_array,
    best_match_similarity,
    content_positions,
    cosine,
    derangement,
    mean_pool,
    normalize_rows,
    shared_word_positions,
    style_effect,
    summarize,
    word_aligned_similarity,
)

if TYPE_CHECKING:
    from sdxl_probe.models.components import SDXLComponents
    from sdxl_probe.probes.embed.core import EmbedSettings
    from sdxl_probe.probes.embed.inputs import CaptionPair


def _layout(enc: Encoded, view: str):
    return enc.layout_te2 if view == "te2" else enc.layout_te1


def pair_values(a: Encoded, b: Encoded) -> tuple[dict[str, float | None], int]:
    """All similarities between two encoded captions, and the number of shared words.

    Returns:
        ``({"te1.cos": ..., "te1.word": ..., "te1.set": ..., ..., "pooled.cos": ...}, n_shared)``.
    """
    values: dict[str, float | None] = {}
    n_shared = 0
    for view in VIEWS:
        if view == "pooled":
            values["pooled.cos"] = cosine(a.pooled, b.pooled)
            continue
        sa, sb = as_array(sens.view_states(a, view)), as_array(sens.view_states(b, view))
        pa, pb = content_positions(_layout(a, view)), content_positions(_layout(b, view))
        shared = shared_word_positions(a.tokenized, _layout(a, view), b.tokenized, _layout(b, view))
        n_shared = max(n_shared, len(shared))
        values[f"{view}.cos"] = cosine(mean_pool(sa, pa), mean_pool(sb, pb))
        values[f"{view}.word"] = word_aligned_similarity(sa, sb, shared)
        values[f"{view}.set"] = best_match_similarity(sa[pa], sb[pb])
    return values, n_shared


def value_keys() -> list[str]:
    """The ``view.metric`` keys that :func:`pair_values` fills, in report order."""
    return [f"{v}.{m}" for v in VIEWS for m in METRICS if v in TOKEN_VIEWS or m == "cos"]


def aggregate(rows: Sequence[dict[str, float | None]], seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """``{view: {metric: Stats dict}}`` over rows of :func:`pair_values`."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for key in value_keys():
        view, metric = key.split(".")
        out.setdefault(view, {})[metric] = dataclasses.asdict(
            summarize([r.get(key) for r in rows], seed=seed)
        )
    return out


def pooled_matrix(tags: Sequence[Encoded], sentences: Sequence[Encoded], view: str) -> np.ndarray:
    """``(n, n)`` cosine matrix of mean-pooled states (or pooled vectors): tags x sentences."""

    def vec(e: Encoded) -> np.ndarray:
        if view == "pooled":
            return as_array(e.pooled)
        return mean_pool(sens.view_states(e, view), content_positions(_layout(e, view)))

    a = normalize_rows(np.stack([vec(e) for e in tags]))
    b = normalize_rows(np.stack([vec(e) for e in sentences]))
    return a @ b.T


def measure_pairs(
    pairs: Sequence[CaptionPair],
    tags: Sequence[Encoded],
    sentences: Sequence[Encoded],
    *,
    seed: int,
    matrix_size: int,
) -> dict[str, Any]:
    """Pair measures, unrelated baseline, style effect, retrieval and heatmap matrices.

    Returns:
        A dict with the :class:`EmbedResult` fields pairs, unrelated, aggregates,
        unrelated_aggregates, style_effect, retrieval and matrices.
    """
    rows = []
    for p, a, b in zip(pairs, tags, sentences, strict=True):
        values, n_shared = pair_values(a, b)
        rows.append(
            {
                "tags": p.tags,
                "sentence": p.sentence,
                "source": p.source,
                "values": values,
                "shared_words": n_shared,
                "n_tokens_tags": len(a.tokenized.tokens),
                "n_tokens_sentence": len(b.tokenized.tokens),
            }
        )
    unrelated = unrelated_rows(tags, sentences, seed=seed)
    effect: dict[str, dict[str, float | None]] = {}
    for key in value_keys():
        view, metric = key.split(".")
        effect.setdefault(view, {})[metric] = style_effect(_distances(rows, key), _distances(unrelated, key))
    n = len(pairs)
    retrieval, matrices = {}, {}
    for view in VIEWS:
        mat = pooled_matrix(tags, sentences, view)
        retrieval[view] = float((mat.argmax(axis=1) == np.arange(n)).mean())
        matrices[view] = [[round(float(x), 5) for x in row] for row in mat[:matrix_size, :matrix_size]]
    return {
        "pairs": rows,
        "unrelated": unrelated,
        "aggregates": aggregate([r["values"] for r in rows], seed),
        "unrelated_aggregates": aggregate([r["values"] for r in unrelated], seed),
        "style_effect": effect,
        "retrieval": retrieval,
        "matrices": matrices,
    }


def unrelated_rows(
    tags: Sequence[Encoded], sentences: Sequence[Encoded], *, seed: int
) -> list[dict[str, Any]]:
    """Similarities between unrelated captions of the same style (seeded derangement).

    Caption i is paired with caption perm[i] of the same list (tags with tags, sentences
    with sentences); empty when there are fewer than two pairs.
    """
    if len(tags) < 2:
        return []
    perm = derangement(len(tags), random.Random(seed))
    rows = []
    for style, encs in (("tags", tags), ("sentence", sentences)):
        for i, j in enumerate(perm):
            values, _ = pair_values(encs[i], encs[j])
            rows.append({"style": style, "a": i, "b": j, "values": values})
    return rows


def _distances(rows: Sequence[dict[str, Any]], key: str) -> list[float | None]:
    return [None if r["values"].get(key) is None else 1.0 - r["values"][key] for r in rows]


def model_info(components: SDXLComponents, sample: Encoded) -> dict[str, Any]:
    """Model identity and the widths read from an actual encoding (never constants)."""
    return {
        "source": str(components.source),
        "kind": components.kind,
        "is_toy": components.is_toy,
        "model_hash": components.model_hash(),
        **precision_of(components),
        "widths": {
            "te1": int(sample.te1.shape[-1]),
            "te2": int(sample.te2.shape[-1]),
            "pooled": int(sample.pooled.shape[-1]),
            "context": int(sample.te1.shape[-1] + sample.te2.shape[-1]),
        },
        "context_length": int(sample.te1.shape[0]),
        "chunk_tokens": int(components.tokenizer.model_max_length) - 2,
    }


def run_sensitivity(
    tag_captions: Sequence[str],
    sentence_captions: Sequence[str],
    settings: EmbedSettings,
    encode: sens.EncodeFn,
    components: SDXLComponents,
) -> list[sens.DriftSample]:
    """Order, position, weighting (on tags) and truncation (tags, sentences, synthetic long)."""
    from sdxl_probe.probes.embed.core import seeded_sample

    picked = seeded_sample(len(tag_captions), settings.sensitivity_captions, settings.seed)
    tags = [tag_captions[i] for i in picked]
    main = EncodeSettings(max_token_length=settings.max_token_length, mode=settings.mode)
    samples = sens.order_sensitivity(
        tags, k=settings.shuffles, seed=settings.seed, encode=encode, settings=main
    )
    samples += sens.position_sensitivity(tags, encode=encode, settings=main)
    # Weighting and max_token_length exist only in sd-scripts' encoding, whatever the pair mode.
    sd = EncodeSettings(max_token_length=settings.max_token_length, mode="sd-scripts")
    samples += sens.weighting_sensitivity(
        tags, weight=settings.weight, seed=settings.seed, encode=encode, settings=sd
    )
    chunk = int(components.tokenizer.model_max_length) - 2  # 75 content tokens per chunk
    lengths = [None if n == chunk else n for n in settings.truncation_lengths]
    natural = tags + [sentence_captions[i] for i in picked]
    truncate = functools.partial(
        sens.truncation_sensitivity,
        chunk_tokens=chunk,
        max_token_lengths=lengths,
        encode=encode,
        mode="sd-scripts",
    )
    samples += truncate(natural)
    # Long enough that 150 also cuts (2.5 chunks), so the three settings differ.
    synthetic = sens.long_captions(
        list(tag_captions), min_tokens=chunk * 5 // 2, limit=settings.synthetic_long
    )
    samples += [dataclasses.replace(s, analysis="truncation (synthetic long)") for s in truncate(synthetic)]
    return samples


def summarize_drifts(
    samples: Sequence[sens.DriftSample], *, seed: int, chunk_tokens: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {value key: Stats dict}}``; truncation groups are split by setting.

    Truncation groups count only captions longer than ``chunk_tokens``: for the others
    nothing is cut and the drift is 0 by construction (the tests check that it is).
    """
    groups: dict[str, list[sens.DriftSample]] = {}
    for s in samples:
        if s.analysis.startswith("truncation") and s.n_tokens <= chunk_tokens:
            continue
        group = f"{s.analysis} | {s.variant}" if s.analysis.startswith("truncation") else s.analysis
        groups.setdefault(group, []).append(s)
    out = {}
    for group, items in groups.items():
        keys = list(dict.fromkeys(k for s in items for k in s.values))
        out[group] = {
            k: dataclasses.asdict(summarize([s.values.get(k) for s in items], seed=seed)) for k in keys
        }
    return out
