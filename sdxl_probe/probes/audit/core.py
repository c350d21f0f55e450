"""Caption-dataset audit: what the SDXL text encoders never see, before a GPU-day is spent.

Pure core: :func:`run_audit` streams a :class:`~sdxl_probe.data.dataset.Dataset` caption by caption,
writes one CSV row per caption as it goes, aggregates dataset statistics incrementally
(:mod:`sdxl_probe.probes.audit.stats`) and returns an :class:`AuditResult` that saves to and
loads from ``audit.json``. The HTML page is rendered from the saved files by
:mod:`sdxl_probe.probes.audit.report`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any

from sdxl_probe.data.dataset import FOLDER_RE, CaptionRecord, Dataset, Subset
from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.io import atomic_path, write_json
from sdxl_probe.probes.audit.caption import (
    CachedEncoder,
    CaptionAudit,
    TagLayout,
    audit_caption,
    audit_tag_layout,
    tag_layout,
)
from sdxl_probe.probes.audit.shuffle import cut_probabilities, split_tags, tag_token_lengths
from sdxl_probe.probes.audit.stats import POOLED_LIMIT, AuditAggregator
from sdxl_probe.probes.audit.summary import summarize
from sdxl_probe.text.captions import CaptionOptions, process_caption
from sdxl_probe.text.tokens import tokenize_caption

LIMITS = (75, 150, 225)  # sd-scripts --max_token_length: None (75), 150, 225 caption tokens
RESULT_FILE = "audit.json"
CSV_FILE = "audit.csv"
CSV_COLUMNS = (
    "row", "subset", "image", "caption_file", "source", "non_utf8", "n_tags", "n_tokens_te1", "n_tokens_te2",
    *(f"cut_{limit}" for limit in LIMITS), *(f"lost_tags_{limit}" for limit in LIMITS),
    "pooled_blind_tags", "trigger_pos", "kept_end_pos", "style", "caption",
)  # fmt: skip
# Options the tag-length model in audit_shuffle does not cover: when one is active, shuffles are
# simulated through process_caption instead (tag dropout, separators, warmup, wildcards).
_SIMPLE_SHUFFLE_OFF = (
    "keep_tokens_separator",
    "secondary_separator",
    "caption_tag_dropout_rate",
    "token_warmup_step",
    "enable_wildcard",
)


@dataclasses.dataclass
class AuditSettings:
    """How to audit.

    Attributes:
        max_token_length: the training ``--max_token_length`` (None = 75); shuffle effects use it.
        trigger: a trigger word whose position is reported; None to skip.
        weighted: parse sd-scripts weighted syntax ``(tag:1.2)`` before tokenizing.
        seed: seed for Monte Carlo shuffles and wildcard choices.
        shuffle_samples: random orders per caption when Monte Carlo is needed.
        top_k: rows kept in "most frequent" tables.
    """

    max_token_length: int | None = None
    trigger: str | None = None
    weighted: bool = False
    seed: int = 0
    shuffle_samples: int = 64
    top_k: int = 40

    def __post_init__(self) -> None:
        if self.max_token_length not in (None, *LIMITS):
            raise ConfigError(
                f"max_token_length={self.max_token_length} is not supported; use 75, 150 or 225 (sd-scripts' values)"
            )

    @property
    def limit(self) -> int:
        return self.max_token_length or LIMITS[0]


@dataclasses.dataclass
class AuditResult:
    """Everything the report shows, JSON-native (dict keys are strings). See :func:`summarize`."""

    name: str
    header: dict[str, Any]
    dataset: dict[str, Any]
    settings: dict[str, Any]
    n_captions: int
    stats: dict[str, Any]
    elapsed_s: float

    def save(self, out_dir: str | Path) -> Path:
        """Write ``<out_dir>/audit.json`` atomically."""
        return write_json(Path(out_dir) / RESULT_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> AuditResult:
        """Load from ``audit.json`` or the folder holding it."""
        p = Path(path)
        p = p / RESULT_FILE if p.is_dir() else p
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{p}: audit result not found; run `sdxl-probe audit` first") from None
        return cls(**data)


def caption_options(subset: Subset) -> CaptionOptions:
    """The subset's kohya caption settings as the TEXT pipeline's :class:`CaptionOptions`."""
    names = {f.name for f in dataclasses.fields(CaptionOptions)}
    return CaptionOptions(**{k: v for k, v in subset.caption_options.items() if k in names})


def run_audit(
    dataset: Dataset, out_dir: str | Path, settings: AuditSettings, *, name: str, header: dict
) -> AuditResult:
    """Audit every caption of ``dataset``; stream ``audit.csv`` and save ``audit.json`` in ``out_dir``.

    Raises:
        DatasetError: the dataset yields no caption at all (the message lists what was found).
    """
    import numpy as np

    start = time.perf_counter()
    out_dir = Path(out_dir)
    agg = AuditAggregator(LIMITS, tuple(sorted({POOLED_LIMIT, settings.limit})))
    ctx = _RunContext(settings, np.random.default_rng(settings.seed), random.Random(settings.seed))
    with atomic_path(out_dir / CSV_FILE) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for record in dataset.records():
            if record.source != "unreadable":
                writer.writerow(ctx.audit_record(record, agg))
        if agg.n_captions == 0:
            raise DatasetError(_empty_message(dataset))
    stats = summarize(agg, dataset.issues, settings, ctx.summary())
    result = AuditResult(
        name=name,
        header=header,
        dataset={
            "path": str(dataset.path),
            "format": dataset.format,
            "subsets": [_subset_info(s) for s in dataset.subsets],
        },
        settings=dataclasses.asdict(settings) | {"limit": settings.limit, "limits": list(LIMITS)},
        n_captions=agg.n_captions,
        stats=stats,
        elapsed_s=round(time.perf_counter() - start, 3),
    )
    result.save(out_dir)
    return result


class _RunContext:
    """Per-run state: RNGs, per-subset options and the shuffle method bookkeeping."""

    def __init__(self, settings: AuditSettings, rng, prng: random.Random) -> None:
        self.settings, self.rng, self.prng = settings, rng, prng
        self._options: dict[int, CaptionOptions] = {}
        self.row = 0
        self.pipeline_captions = 0
        self.slow_captions = 0
        self.encode = CachedEncoder()

    def options(self, subset: Subset) -> CaptionOptions:
        key = id(subset)
        if key not in self._options:
            self._options[key] = caption_options(subset)
        return self._options[key]

    def audit_record(self, record: CaptionRecord, agg: AuditAggregator) -> list[Any]:
        self.row += 1
        opts = self.options(record.subset)
        text = fixed_caption(record.caption, opts, self.prng)
        sep, trigger = opts.caption_separator, self.settings.trigger
        lay = None if self.settings.weighted else tag_layout(text, sep, self.encode)
        if lay is not None:
            a = audit_tag_layout(text, lay, limits=LIMITS, trigger=trigger, keep_tokens=opts.keep_tokens,
                                 separator=sep, encode=self.encode)  # fmt: skip
        else:
            self.slow_captions += 1
            tc = tokenize_caption(text, weighted=self.settings.weighted, separator=sep)
            a = audit_caption(tc, limits=LIMITS, trigger=trigger, keep_tokens=opts.keep_tokens, separator=sep)
        where = record.caption_file or record.image or f"row {self.row}"
        agg.add(a, caption=text, where=where, subset=record.subset.name, tag_text=record.tag_text,
                source=record.source, separator=sep, has_trigger=bool(trigger))  # fmt: skip
        self.add_shuffle(record, text, a, opts, agg, lay)
        return csv_row(self.row, record, text, a)

    def add_shuffle(
        self,
        record: CaptionRecord,
        text: str,
        a: CaptionAudit,
        opts: CaptionOptions,
        agg,
        lay: TagLayout | None,
    ) -> None:
        """Per-tag cut probabilities at each shuffle limit (see :mod:`audit_shuffle` for the method)."""
        if not opts.shuffle_caption:
            for limit in agg.shuffle_limits:
                agg.add_shuffle(limit, a.tags, [float(p is not None and p > limit) for p in a.tag_last], True)
            return
        tags = split_tags(text, opts.caption_separator)
        simple = not any(getattr(opts, k) for k in _SIMPLE_SHUFFLE_OFF)
        additive = None
        if simple and lay is not None and lay.order_free:
            additive = lay.lengths, lay.sep_tokens
        elif simple:
            additive = tag_token_lengths(tags, self.encode, opts.caption_separator)
        n = self.settings.shuffle_samples
        for limit in agg.shuffle_limits:
            if additive is not None:
                probs, exact = cut_probabilities(
                    additive[0], opts.keep_tokens, limit, self.rng, n, additive[1]
                )
            else:
                probs, exact = self.pipeline_probabilities(record.caption, tags, opts, limit), False
            agg.add_shuffle(limit, tags, probs, exact)

    def pipeline_probabilities(
        self, caption: str, tags: list[str], opts: CaptionOptions, limit: int
    ) -> list[float]:
        """Monte Carlo through sd-scripts' own caption pipeline (process_caption), by tag text."""
        self.pipeline_captions += 1
        hits: dict[str, int] = {}
        n = self.settings.shuffle_samples
        for _ in range(n):
            tc = tokenize_caption(process_caption(caption, opts, self.prng), separator=opts.caption_separator)
            last: dict[int, int] = {}
            for i, tok in enumerate(tc.tokens):
                last[tok.tag] = i + 1
            for idx, pos in last.items():
                if pos > limit and 0 <= idx < len(tc.tags):
                    key = tc.tags[idx][0].lower()
                    hits[key] = hits.get(key, 0) + 1
        return [hits.get(t.lower(), 0) / n for t in tags]

    def summary(self) -> dict[str, Any]:
        return {"pipeline_captions": self.pipeline_captions, "span_tokenized_captions": self.slow_captions}


def fixed_caption(caption: str, opts: CaptionOptions, prng: random.Random) -> str:
    """The caption as trained before any random step: prefix/suffix and wildcards applied (sd-scripts §2)."""
    if not (opts.caption_prefix or opts.caption_suffix or opts.enable_wildcard or opts.secondary_separator):
        return caption
    fixed = dataclasses.replace(
        opts, shuffle_caption=False, caption_dropout_rate=0.0, caption_dropout_every_n_epochs=0,
        caption_tag_dropout_rate=0.0, token_warmup_step=0,
    )  # fmt: skip
    return process_caption(caption, fixed, prng)


def csv_row(row: int, record: CaptionRecord, text: str, a: CaptionAudit) -> list[Any]:
    """One ``audit.csv`` row (list cells are JSON arrays)."""
    blind = [
        t for t, first in zip(a.tags, a.tag_first, strict=True) if first is not None and first > POOLED_LIMIT
    ]
    return [
        row, record.subset.name, record.image or "", record.caption_file or "", record.source, int(record.non_utf8),
        len(a.tags), a.n_tokens["te1"], a.n_tokens["te2"],
        *(int(bool(a.lost[limit])) for limit in LIMITS),
        *(json.dumps(a.lost[limit], ensure_ascii=False) for limit in LIMITS),
        json.dumps(blind, ensure_ascii=False), "" if a.trigger_pos is None else a.trigger_pos,
        "" if a.kept_end is None else a.kept_end, a.style, text,
    ]  # fmt: skip


def _subset_info(s: Subset) -> dict[str, Any]:
    return {
        "name": s.name, "kind": s.kind, "image_dir": str(s.image_dir) if s.image_dir else None,
        "caption_extension": s.caption_extension, "num_repeats": s.num_repeats, "class_tokens": s.class_tokens,
        "is_reg": s.is_reg, "metadata_file": str(s.metadata_file) if s.metadata_file else None,
        "caption_options": s.caption_options,
    }  # fmt: skip


def _empty_message(dataset: Dataset) -> str:
    found = "; ".join(m for examples in dataset.issues.examples.values() for _, m in examples[:3])
    where = f"{len(dataset.subsets)} subset(s)" if dataset.subsets else "no 'N_name' subfolder or subset"
    hint = ""
    if not dataset.subsets and FOLDER_RE.match(dataset.path.name):
        hint = f"; '{dataset.path.name}' is itself an N_name folder: pass its parent, {dataset.path.parent}"
    return f"{dataset.path}: empty dataset, no captions found ({where}){'; ' + found if found else ''}{hint}"
