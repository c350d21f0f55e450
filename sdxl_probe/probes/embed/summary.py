"""Plain-language findings of the embedding probe, written from a saved result only.

Every effect is put on one scale: a drift (1 - cosine) divided by the mean distance
between unrelated captions of the same set in the same view. 0 means "no change",
1 means "as far as a caption about something else". Below SMALL it is called small,
below LARGE moderate, above large.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdxl_probe.probes.embed.core import EmbedResult

# A tenth of the unrelated distance is well inside the spread between unrelated pairs.
SMALL = 0.1
# A third of the way to an unrelated caption is a change a model can plausibly act on.
LARGE = 0.33
VIEW_NAMES = {"te1": "TE1", "te2": "TE2", "pooled": "pooled", "context": "context"}


def size_word(ratio: float | None) -> str:
    """ "small" | "moderate" | "large" for an effect on the unrelated-distance scale."""
    if ratio is None:
        return "unknown"
    return "small" if ratio < SMALL else "moderate" if ratio < LARGE else "large"


def unrelated_distance(result: EmbedResult, view: str) -> float | None:
    """Mean 1 - cosine between unrelated captions in ``view`` (None without a baseline)."""
    mean = result.unrelated_aggregates.get(view, {}).get("cos", {}).get("mean")
    return None if mean is None else 1.0 - mean


def relative(result: EmbedResult, view: str, drift: float | None) -> float | None:
    """A drift on the unrelated-distance scale of ``view``."""
    base = unrelated_distance(result, view)
    return None if drift is None or not base else drift / base


def plain_summary(result: EmbedResult) -> list[str]:
    """Findings, most important first; each line is a complete sentence with its numbers."""
    lines = []
    if result.model.get("kind") == "tiny":
        lines.append(
            "Toy model (tiny, random weights): these encoders learned nothing. The figures only exercise "
            "the method; they say nothing about real SDXL's CLIP encoders."
        )
    elif result.model.get("is_toy"):
        lines.append(
            "Toy model: these figures come from the project's small toy encoders trained on a toy world. "
            "They show the method; they do not describe real SDXL's CLIP encoders."
        )
    lines += _style_lines(result)
    lines += _word_lines(result)
    lines += _sensitivity_lines(result)
    return lines


def _fmt_effects(values: dict[str, float | None]) -> str:
    return ", ".join(
        f"{VIEW_NAMES[v]} {r:.2f} ({size_word(r)})" if r is not None else f"{VIEW_NAMES[v]} –"
        for v, r in values.items()
    )


def _style_lines(result: EmbedResult) -> list[str]:
    effects = {v: result.style_effect.get(v, {}).get("cos") for v in VIEW_NAMES}
    if all(r is None for r in effects.values()):
        return [
            "With fewer than two pairs there is no unrelated-caption baseline, so no style effect is given."
        ]
    lines = [
        "Style effect (tag-to-sentence distance / unrelated-caption distance, mean-pooled states): "
        + _fmt_effects(effects)
        + "."
    ]
    te1, te2 = effects.get("te1"), effects.get("te2")
    if te1 is not None and te2 is not None:
        more, less = ("TE2", "TE1") if te2 > te1 else ("TE1", "TE2")
        lines.append(
            f"{more} separates tags from sentences more than {less} does ({max(te1, te2):.2f} vs {min(te1, te2):.2f})."
        )
    n = len(result.pairs)
    rec = ", ".join(f"{VIEW_NAMES[v]} {acc:.0%}" for v, acc in result.retrieval.items())
    lines.append(
        f"Each tag caption is closest to its own sentence (out of {n}) in: {rec}; chance is {1 / n:.1%}."
    )
    return lines


def _word_lines(result: EmbedResult) -> list[str]:
    word = {v: result.aggregates.get(v, {}).get("word", {}) for v in ("te1", "te2")}
    if not any(w.get("n") for w in word.values()):
        return ["The captions share no words, so no word-aligned similarity is given."]
    parts = [f"{VIEW_NAMES[v]} {w['mean']:.3f}" for v, w in word.items() if w.get("mean") is not None]
    return [
        f"A word present in both captions keeps a mean cosine of {', '.join(parts)} between the two styles "
        f"({word['te1'].get('n', 0)} pairs share at least one word): the rest of the caption changes the word's state."
    ]


def _median(summary: dict[str, Any], key: str) -> float | None:
    return summary.get(key, {}).get("median")


def _sensitivity_lines(result: EmbedResult) -> list[str]:
    ds = result.drift_summary
    lines = []
    for group, what in (("order", "Shuffling the tags"), ("position", "Moving the first tag to the end")):
        if group in ds:
            rel = {v: relative(result, v, _median(ds[group], f"{v}.cos")) for v in VIEW_NAMES}
            lines.append(
                f"{what} moves the embeddings (median, unrelated-distance scale): {_fmt_effects(rel)}."
            )
    if "position" in ds:
        tag = {v: _median(ds["position"], f"tag_{v}.cos") for v in ("te1", "te2")}
        if all(t is not None for t in tag.values()):
            lines.append(
                f"The moved tag's own states drift by 1 - cosine {tag['te1']:.3f} (TE1) and {tag['te2']:.3f} (TE2): "
                "a causal encoder sees different left context at the end of the caption."
            )
    lines += _truncation_lines(result)
    if "weighting" in ds:
        w = ds["weighting"]
        lines.append(
            f"Writing a tag as (tag:{result.settings['weight']:g}) changes that tag's context states by a relative L2 of "
            f"{_median(w, 'tag_context.rel_l2') or 0:.3f} and their direction by 1 - cosine {_median(w, 'tag_context.cos') or 0:.3g}; "
            f"the pooled vector moves by {_median(w, 'pooled.cos') or 0:.3g} (sd-scripts does not weight it)."
        )
    return lines


def _truncation_lines(result: EmbedResult) -> list[str]:
    chunk = result.model["chunk_tokens"]
    n_sampled = sum(1 for d in result.drift_samples if d["analysis"] == "truncation") // max(
        1, len(result.settings["truncation_lengths"])
    )
    lines = []
    for analysis, what in (
        ("truncation", "sampled captions"),
        ("truncation (synthetic long)", "synthetic long captions"),
    ):
        groups = {
            g.split(" | ")[1]: st for g, st in result.drift_summary.items() if g.split(" | ")[0] == analysis
        }
        if analysis == "truncation" and not groups:
            lines.append(
                f"None of the {n_sampled} sampled captions is longer than {chunk} tokens: nothing is cut."
            )
        parts = []
        for setting, st in groups.items():
            rel = relative(result, "context", _median(st, "context.cos"))
            parts.append(
                f"{setting}: context {_median(st, 'context.cos') or 0:.3g} ({size_word(rel)}), "
                f"pooled {_median(st, 'pooled.cos') or 0:.3g}"
            )
        if parts:
            n = max(st.get("context.cos", {}).get("n", 0) for st in groups.values())
            lines.append(
                f"Cutting {n} {what} after token {chunk} moves them by (median 1 - cosine) "
                + "; ".join(parts)
                + ". "
                f"Under {chunk} the encoder already drops the tail; the pooled vector sees only the first chunk."
            )
    return lines
