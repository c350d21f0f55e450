"""Turn the streaming audit counters into the JSON-native ``stats`` of an :class:`AuditResult`."""

from __future__ import annotations

from typing import Any

from sdxl_probe.data.dataset import IssueLog
from sdxl_probe.probes.audit.caption import STYLE_RULE
from sdxl_probe.probes.audit.stats import POOLED_LIMIT, AuditAggregator


def summarize(agg: AuditAggregator, issues: IssueLog, settings: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """Dataset statistics (see the keys below); ``settings`` is the run's ``AuditSettings``."""
    n, k = agg.n_captions, settings.top_k
    dups = agg.duplicates()
    return {
        "sources": dict(agg.sources),
        "te_mismatch": agg.te_mismatch,
        "histograms": {enc: _int_keyed(h) for enc, h in agg.hist.items()},
        "cut": {
            str(lim): {"count": agg.cut[lim], "fraction": agg.cut[lim] / n if n else 0.0}
            for lim in agg.limits
        },
        "lost_tags": {str(lim): agg.lost[lim].most_common(k) for lim in agg.limits},
        "tag_frequency": {d: dict(c.most_common()) for d, c in agg.tag_frequency.items()},
        "pooled_blind": _pooled_blind(agg, k),
        "styles": dict(agg.styles),
        "style_rule": STYLE_RULE,
        "style_examples": agg.style_examples,
        "duplicates": {
            "groups": len(dups),
            "extra_copies": sum(d["count"] - 1 for d in dups),
            "unique": agg.n_unique(),
            "top": dups[:k],
        },
        "empty": {"count": agg.styles.get("empty", 0), "examples": agg.empty_examples},
        "issues": issues.to_dict(),
        "trigger": _trigger(agg, settings),
        "kept": {
            "ends": _int_keyed(agg.kept_end),
            "past_pooled": sum(v for p, v in agg.kept_end.items() if p > POOLED_LIMIT),
        },
        "shuffle": _shuffle(agg, settings, extra),
        "longest": [
            {"n_tokens": t, "row": -neg_row, "caption": c, "where": w}
            for t, neg_row, c, w in sorted(agg.longest, reverse=True)
        ],
    }


def _int_keyed(counter) -> dict[str, int]:
    return {str(key): counter[key] for key in sorted(counter)}


def _pooled_blind(agg: AuditAggregator, k: int) -> list[dict[str, Any]]:
    """Tags that usually sit past token 75: blind occurrences / all occurrences > 0.5, most blind first."""
    rows = []
    for tag, blind in agg.tag_blind.items():
        occ = agg.tag_occurrences[tag]
        if blind / occ > 0.5:
            rows.append({"tag": tag, "occurrences": occ, "blind": blind, "partly": agg.tag_partly_blind[tag],
                         "fraction": blind / occ})  # fmt: skip
    rows.sort(key=lambda r: (-r["blind"], r["tag"]))
    return rows[:k]


def _trigger(agg: AuditAggregator, settings: Any) -> dict[str, Any]:
    positions = agg.trigger_positions
    return {
        "word": settings.trigger,
        "missing": agg.trigger_missing,
        "found": sum(positions.values()),
        "positions": _int_keyed(positions),
        "past_pooled": sum(v for p, v in positions.items() if p > POOLED_LIMIT),
        "past_limit": sum(v for p, v in positions.items() if p > settings.limit),
    }


def _shuffle(agg: AuditAggregator, settings: Any, extra: dict[str, Any]) -> dict[str, Any]:
    tables = {}
    for limit, tally in agg.shuffle.items():
        rows = [
            {
                "tag": tag,
                "occurrences": occ,
                "expected_cut": tally.prob_sum[tag],
                "mean_prob": tally.prob_sum[tag] / occ,
            }
            for tag, occ in tally.occurrences.items()
            if tally.prob_sum[tag] > 0
        ]
        rows.sort(key=lambda r: (-r["expected_cut"], r["tag"]))
        tables[str(limit)] = rows[: settings.top_k]
    return {
        "limits": [int(x) for x in agg.shuffle],
        "method": dict(agg.shuffle_method),
        "seed": settings.seed,
        "samples": settings.shuffle_samples,
        "pipeline_captions": extra.get("pipeline_captions", 0),
        "tables": tables,
    }
