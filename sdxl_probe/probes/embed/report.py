"""The embedding probe's HTML report, rendered from a saved ``embed.json`` only (no model, no torch).

Figures: tag x sentence similarity heatmaps per view, matched-pair versus unrelated
similarity histograms, and drift distributions per sensitivity analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxl_probe.probes.embed.core import EmbedResult
from sdxl_probe.probes.embed.summary import VIEW_NAMES, relative, size_word
from sdxl_probe.report.figures import figure_to_data_uri, new_figure
from sdxl_probe.report.render import ReportHeader, precision_text, render_page, utc_now

REPORT_HTML = "embed.html"
TEMPLATE = "embed.html.j2"
SHOWN_PAIRS = 25
SHOWN_KEYS = ("te1.cos", "te2.cos", "pooled.cos", "context.cos", "te1.word", "te2.word", "context.set")


def render_report(result_dir: str | Path) -> Path:
    """Render ``<result_dir>/embed.html`` from ``<result_dir>/embed.json``."""
    result_dir = Path(result_dir)
    result = EmbedResult.load(result_dir)
    device, dtype = precision_text(result.model)
    header = ReportHeader(
        title="Embedding probe: tags versus sentences",
        model=result.model["source"],
        model_kind=result.model["kind"],
        dataset=result.dataset,
        config=result.settings,
        created=result.run.get("created") or utc_now(),
        device=device,
        dtype=dtype,
    )
    return render_page(TEMPLATE, report_context(result), result_dir / REPORT_HTML, header=header)


def report_context(result: EmbedResult) -> dict[str, Any]:
    """Everything the template shows, as plain values and figure data URIs."""
    return {
        "summary": result.summary,
        "model": result.model,
        "n_pairs": len(result.pairs),
        "encoder_rows": encoder_rows(result),
        "drift_rows": drift_rows(result),
        "pairs": result.pairs[:SHOWN_PAIRS],
        "shown_keys": [k for k in SHOWN_KEYS if result.pairs and k in result.pairs[0]["values"]],
        "run": result.run,
        "matrix_size": len(result.matrices.get("te1", [])),
        "heatmaps": heatmap_figure(result) if result.matrices else None,
        "separation": separation_figure(result) if result.unrelated else None,
        "drifts": drift_figure(result) if result.drift_samples else None,
    }


def encoder_rows(result: EmbedResult) -> list[dict[str, Any]]:
    """One table row per view: width, mean similarities, unrelated baseline, style effects, retrieval."""
    rows = []
    for view, name in VIEW_NAMES.items():
        agg, unrel = result.aggregates.get(view, {}), result.unrelated_aggregates.get(view, {})
        effect = result.style_effect.get(view, {})
        rows.append(
            {
                "view": name,
                "width": result.model["widths"][view],
                "cos": _stat(agg, "cos"),
                "word": _stat(agg, "word"),
                "set": _stat(agg, "set"),
                "unrelated_cos": unrel.get("cos", {}).get("mean"),
                "effect_cos": effect.get("cos"),
                "effect_set": effect.get("set"),
                "effect_size": size_word(effect.get("cos")),
                "retrieval": result.retrieval.get(view),
            }
        )
    return rows


def _stat(agg: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """The Stats dict of ``metric``, or empty values where the view has no such metric (pooled)."""
    return agg.get(metric) or {"mean": None, "ci_low": None, "ci_high": None}


def drift_rows(result: EmbedResult) -> list[dict[str, Any]]:
    """One row per sensitivity group: median cosine drift per view and its relative size."""
    rows = []
    for group, stats in result.drift_summary.items():
        cells = []
        for view in VIEW_NAMES:
            median = stats.get(f"{view}.cos", {}).get("median")
            rel = relative(result, view, median)
            cells.append({"median": median, "relative": rel, "size": size_word(rel)})
        n = max((s.get("n", 0) for s in stats.values()), default=0)
        tag = stats.get("tag_context.rel_l2", {}).get("median")
        rows.append({"group": group, "n": n, "cells": cells, "tag_rel_l2": tag})
    return rows


def heatmap_figure(result: EmbedResult) -> str:
    """2 x 2 heatmaps of tag (rows) x sentence (columns) cosine, double-centred, one per view."""
    import numpy as np

    fig = new_figure(10.0, 8.6)
    for k, (view, name) in enumerate(VIEW_NAMES.items()):
        ax = fig.add_subplot(2, 2, k + 1)
        mat = np.asarray(result.matrices[view], dtype=float)
        # Double-centred: anisotropic encoders give every caption a near-constant offset
        # (stripes) that would hide the diagonal; raw values stay in embed.json.
        centred = mat - mat.mean(axis=1, keepdims=True) - mat.mean(axis=0, keepdims=True) + mat.mean()
        im = ax.imshow(centred, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(f"{name} (width {result.model['widths'][view]})", fontsize=10)
        ax.set_xlabel("sentence caption #")
        ax.set_ylabel("tag caption #")
    return figure_to_data_uri(fig)


def separation_figure(result: EmbedResult) -> str:
    """Histograms of the matched-pair and unrelated-pair cosine per view."""
    fig = new_figure(10.0, 5.6)
    for k, (view, name) in enumerate(VIEW_NAMES.items()):
        ax = fig.add_subplot(2, 2, k + 1)
        key = f"{view}.cos"
        matched = [p["values"][key] for p in result.pairs]
        unrelated = [u["values"][key] for u in result.unrelated]
        ax.hist(unrelated, bins=30, alpha=0.6, color="#c44e52", label="unrelated (same style)")
        ax.hist(matched, bins=30, alpha=0.6, color="#4c72b0", label="tags vs sentence (same content)")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("cosine")
        if k == 0:
            ax.legend(fontsize=8)
    return figure_to_data_uri(fig)


def drift_figure(result: EmbedResult) -> str:
    """Box plots of cosine drift per view, one panel per sensitivity group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in result.drift_samples:
        if s["analysis"].startswith("truncation") and s["n_tokens"] <= result.model["chunk_tokens"]:
            continue  # nothing cut: drift is 0 by construction
        group = (
            f"{s['analysis']} | {s['variant']}" if s["analysis"].startswith("truncation") else s["analysis"]
        )
        groups.setdefault(group, []).append(s["values"])
    cols = 2
    rows = (len(groups) + cols - 1) // cols
    fig = new_figure(10.0, 2.6 * rows + 0.4)
    for k, (group, values) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        data = [[v.get(f"{view}.cos", 0.0) for v in values] for view in VIEW_NAMES]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(VIEW_NAMES) + 1), list(VIEW_NAMES.values()))
        ax.set_title(f"{group} (n={len(values)})", fontsize=9)
        ax.set_ylabel("1 - cosine")
    return figure_to_data_uri(fig)
