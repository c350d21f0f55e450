"""Embedding probe: how far do tags and sentences land apart, per text encoder?

For each caption pair (same content as tags and as a sentence) the probe measures, per
view (TE1 states, TE2 states, TE2 pooled vector, the concatenated UNet context):

* ``cos``: cosine of the mean-pooled content states (BOS, EOS and padding excluded), or
  of the pooled vectors for the pooled view;
* ``word``: word-aligned cosine over the words both captions share;
* ``set``: symmetric mean best-match cosine of the two token sets (length independent);
* the normalized style effect: mean tag-to-sentence distance (1 - similarity) divided by
  the mean distance between unrelated captions of the same set (seeded derangement).

Then seeded sensitivity analyses (order, position, truncation, weighting) on the tags.
The core :func:`run_embed` returns an :class:`EmbedResult`; reports render from its files.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json, write_text
from sdxl_probe.probes.embed.inputs import CaptionPair
from sdxl_probe.report.render import utc_now

if TYPE_CHECKING:
    from sdxl_probe.models.components import SDXLComponents
    from sdxl_probe.pipeline.encoding_cache import Encoded, EncodingCache

RESULT_JSON = "embed.json"
RESULT_CSV = "embed.csv"


@dataclass
class EmbedSettings:
    """Settings of the embedding probe (the ``[embed]`` TOML table).

    Attributes:
        seed: seeds the unrelated pairing, shuffles, sampled captions and bootstrap.
        shuffles: K, tag shuffles per caption in the order analysis.
        sensitivity_captions: how many tag captions (seeded sample) the sensitivity analyses use.
        max_token_length: sd-scripts --max_token_length for the pair measures (None = 75).
        mode: "sd-scripts" (chunked, as training) or "diffusers" (pipeline encode_prompt).
        weight: the weight written as ``(tag:weight)`` in the weighting analysis.
        truncation_lengths: max_token_length settings of the truncation analysis (75 = None).
        synthetic_long: how many synthetic long captions to add to the truncation analysis.
        matrix_size: pairs shown in the similarity heatmaps (the full matrix is used for retrieval).
        batch_size: captions per text-encoder call.
    """

    seed: int = 0
    shuffles: int = 5
    sensitivity_captions: int = 32
    max_token_length: int | None = None
    mode: str = "sd-scripts"
    weight: float = 1.2
    truncation_lengths: list[int] = field(default_factory=lambda: [75, 150, 225])
    synthetic_long: int = 8
    matrix_size: int = 32
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_token_length == 75:
            self.max_token_length = None  # sd-scripts' default: one chunk
        if self.mode not in ("sd-scripts", "diffusers"):
            raise ValueError(f"mode {self.mode!r} is not 'sd-scripts' or 'diffusers'")
        if self.mode == "diffusers" and self.max_token_length is not None:
            raise ValueError(
                "mode 'diffusers' encodes one 77-slot window; max_token_length needs mode 'sd-scripts'"
            )
        for n in [self.max_token_length or 75, *self.truncation_lengths]:
            if n not in (75, 150, 225):
                raise ValueError(
                    f"max_token_length {n} is not 75, 150 or 225 (sd-scripts accepts only these)"
                )
        if self.shuffles < 1 or self.sensitivity_captions < 0 or self.batch_size < 1:
            raise ValueError("shuffles and batch_size must be >= 1, sensitivity_captions >= 0")


@dataclass
class EmbedResult:
    """Everything the embedding probe measured; ``save``/``load`` round-trip through embed.json.

    Attributes:
        settings: the resolved :class:`EmbedSettings` as a dict.
        model: source, kind, is_toy, model_hash, widths ``{te1, te2, pooled, context}``, context_length.
        pairs: ``[{tags, sentence, source, n_tokens_tags, n_tokens_sentence, shared_words, values}]``;
            ``values`` maps ``"<view>.<metric>"`` to a similarity or None.
        unrelated: the same values for the seeded unrelated pairs (tags-tags and sentence-sentence).
        aggregates: ``{view: {metric: Stats dict}}`` over pairs; ``unrelated_aggregates`` likewise.
        style_effect: ``{view: {metric: ratio or None}}``.
        retrieval: ``{view: top-1 accuracy}``: how often tag caption i is closest to sentence i.
        matrices: ``{view: (m, m) cosine of mean-pooled states, tags (rows) x sentences (cols)}``.
        drift_samples: raw sensitivity samples (``DriftSample`` dicts).
        drift_summary: ``{group: {value key: Stats dict}}``; group is the analysis (and setting).
        summary: plain-language findings, most important first.
        run: timings and cache counters.
    """

    settings: dict[str, Any]
    model: dict[str, Any]
    pairs: list[dict[str, Any]]
    unrelated: list[dict[str, Any]]
    aggregates: dict[str, dict[str, dict[str, Any]]]
    unrelated_aggregates: dict[str, dict[str, dict[str, Any]]]
    style_effect: dict[str, dict[str, float | None]]
    retrieval: dict[str, float]
    matrices: dict[str, list[list[float]]]
    drift_samples: list[dict[str, Any]]
    drift_summary: dict[str, dict[str, dict[str, Any]]]
    summary: list[str]
    run: dict[str, Any]
    dataset: str | None = None

    def save(self, out_dir: str | Path) -> Path:
        """Write ``embed.json`` (everything) and ``embed.csv`` (one row per pair) atomically."""
        out_dir = Path(out_dir)
        write_json(out_dir / RESULT_JSON, dataclasses.asdict(self))
        write_text(out_dir / RESULT_CSV, pairs_csv(self.pairs))
        return out_dir

    @classmethod
    def load(cls, out_dir: str | Path) -> EmbedResult:
        """Read a result saved by :meth:`save`."""
        path = Path(out_dir) / RESULT_JSON
        if not path.is_file():
            raise ProbeError(f"{path}: no embedding result here; run `sdxl-probe embed` with --out {out_dir}")
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def pairs_csv(pairs: Sequence[dict[str, Any]]) -> str:
    """CSV text with one row per pair: captions, token counts and every ``view.metric`` value."""
    import csv
    import io

    keys = list(pairs[0]["values"]) if pairs else []
    head = ["index", "source", "tags", "sentence", "n_tokens_tags", "n_tokens_sentence", "shared_words"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head + keys)
    for i, p in enumerate(pairs):
        row = [
            i,
            p["source"],
            p["tags"],
            p["sentence"],
            p["n_tokens_tags"],
            p["n_tokens_sentence"],
            p["shared_words"],
        ]
        writer.writerow(row + ["" if p["values"][k] is None else f"{p['values'][k]:.6f}" for k in keys])
    return buf.getvalue()


def run_embed(
    components: SDXLComponents,
    pairs: Sequence[CaptionPair],
    settings: EmbedSettings,
    *,
    cache: EncodingCache | None = None,
    dataset: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> EmbedResult:
    """Run the whole embedding probe.

    Args:
        components: the model (its two text encoders are used).
        pairs: caption pairs, tags and sentence for the same content.
        settings: probe settings.
        cache: an encoding cache for this model, or None to always encode.
        dataset: a label for the report header (path of the input).
        log: receives one-line progress messages.

    Returns:
        The :class:`EmbedResult`.
    """
    from sdxl_probe.pipeline.encoding_cache import EncodeSettings, encode_cached
    from sdxl_probe.probes.embed import measures as em

    if not pairs:
        raise ProbeError(
            "no caption pairs given; pass --pair, --csv, --tags-list/--sentences-list or --dataset"
        )
    t0 = time.perf_counter()
    main = EncodeSettings(max_token_length=settings.max_token_length, mode=settings.mode)

    def encode(captions: Sequence[str], s: EncodeSettings) -> list[Encoded]:
        return encode_cached(components, captions, s, cache=cache, batch_size=settings.batch_size)

    log(f"encoding {len(pairs)} pairs")
    tags = encode([p.tags for p in pairs], main)
    sentences = encode([p.sentence for p in pairs], main)
    t_pairs = time.perf_counter() - t0
    _check_tokens(pairs, tags, sentences)
    measured = em.measure_pairs(pairs, tags, sentences, seed=settings.seed, matrix_size=settings.matrix_size)
    log("sensitivity analyses")
    samples = em.run_sensitivity(
        [p.tags for p in pairs], [p.sentence for p in pairs], settings, encode, components
    )
    model = em.model_info(components, tags[0])
    result = EmbedResult(
        settings=dataclasses.asdict(settings),
        model=model,
        drift_samples=[dataclasses.asdict(s) for s in samples],
        drift_summary=em.summarize_drifts(samples, seed=settings.seed, chunk_tokens=model["chunk_tokens"]),
        summary=[],
        run={
            "created": utc_now(),
            "seconds_total": time.perf_counter() - t0,
            "seconds_pair_encoding": t_pairs,
            "cache_hits": cache.hits if cache else 0,
            "cache_misses": cache.misses if cache else 0,
        },
        dataset=dataset,
        **measured,
    )
    from sdxl_probe.probes.embed.summary import plain_summary

    result.summary = plain_summary(result)
    return result


def _check_tokens(
    pairs: Sequence[CaptionPair], tags: Sequence[Encoded], sentences: Sequence[Encoded]
) -> None:
    for pair, a, b in zip(pairs, tags, sentences, strict=True):
        for enc in (a, b):
            if not enc.tokenized.tokens:
                raise ProbeError(
                    f"{pair.source or 'pair'}: caption {enc.caption!r} has no CLIP token; "
                    "give it some text or remove the pair"
                )


def seeded_sample(n: int, k: int, seed: int) -> list[int]:
    """``k`` sorted indices out of ``range(n)`` drawn with ``seed`` (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))
