"""Render ``reports/<name>/index.html`` from a saved ``audit.json`` (no torch, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxl_probe.probes.audit.core import CSV_FILE, RESULT_FILE, AuditResult
from sdxl_probe.report import ReportHeader, render_page
from sdxl_probe.report.figures import count_histogram, horizontal_bars

ISSUE_TITLES = {
    "missing_image_dir": "missing image directories",
    "unreadable": "unreadable files",
    "non_utf8": "caption files that are not UTF-8 (decoded with replacement)",
    "image_without_caption": "images without a caption file",
    "caption_without_image": "captions without an image",
    "ignored_folder": "folders ignored (not N_name)",
    "empty_subset": "subsets without images",
    "bad_row": "caption list rows skipped",
    "bad_file": "caption lists skipped",
}


def render_report(result_dir: str | Path) -> Path:
    """Render ``index.html`` next to ``audit.json`` in ``result_dir`` and return its path."""
    result_dir = Path(result_dir)
    result = AuditResult.load(result_dir)
    header = ReportHeader.from_dict(result.header)
    context = {"r": result, "s": result.stats, "figures": audit_figures(result), "issue_titles": ISSUE_TITLES,
               "csv_file": CSV_FILE, "json_file": RESULT_FILE}  # fmt: skip
    return render_page("audit.html.j2", context, result_dir / "index.html", header=header)


def audit_figures(result: AuditResult) -> dict[str, Any]:
    """Inline figures (data URIs) of the audit page, keyed by name."""
    s, limits, limit = result.stats, result.settings["limits"], result.settings["limit"]
    te1 = _counts(s["histograms"]["te1"])
    figs = {"hist_te1": count_histogram(te1, limits=limits, title="TE1 tokens per caption (CLIP ViT-L BPE)")}
    te2 = _counts(s["histograms"]["te2"])
    if te2 != te1:
        figs["hist_te2"] = count_histogram(
            te2, limits=limits, title="TE2 tokens per caption (OpenCLIP bigG BPE)"
        )
    lost = s["lost_tags"][str(limit)][:25]
    if lost:
        figs["lost"] = horizontal_bars([t for t, _ in lost], [c for _, c in lost],
                                       title=f"most often cut tags at {limit} tokens", xlabel="captions")  # fmt: skip
    trig = _counts(s["trigger"]["positions"])
    if trig:
        figs["trigger"] = count_histogram(trig, limits=[75], title=f"position of trigger '{s['trigger']['word']}'",
                                          xlabel="token position (1 = first caption token)")  # fmt: skip
    table = s["shuffle"]["tables"].get(str(limit), [])[:25]
    if table:
        figs["shuffle"] = horizontal_bars([r["tag"] for r in table], [r["mean_prob"] for r in table], xlim=(0, 1),
                                          title=f"P(tag cut at {limit} tokens) under shuffle", xlabel="probability")  # fmt: skip
    return figs


def _counts(d: dict[str, int]) -> dict[int, int]:
    return {int(k): v for k, v in d.items()}
