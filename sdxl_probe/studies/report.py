"""The study's analysis (``study.json``) and its index page (``index.html``), rendered from saved files only.

:func:`analyse` reads every run's ``study_metrics.json`` and computes, per metric and variant, the
mean with its bootstrap 95% CI across seeds, and per non-control variant the paired comparison with
the control, Holm-adjusted over all comparisons of the study (:mod:`sdxl_probe.studies.stats`).
:func:`render_study` turns ``study.json`` into the page: the question, a verdict per metric in plain
words with its uncertainty, plots, a sample grid per variant (same prompts and seeds), and links to
every run's training, memorization and attention reports. ``render_report("study", OUT)`` re-renders it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json
from sdxl_probe.studies import stats
from sdxl_probe.studies.spec import DIRECTION, StudySpec

RESULT = "study.json"
PAGE = "index.html"
LABELS = {"val_loss": "validation loss", "caption_adherence": "caption adherence (toy judge)",
          "diversity": "diversity (pairwise RMS)", "trigger_attention": "trigger-word attention IoU",
          "memorization": "memorization score (LoRA - base)", "clip_score": "CLIP score"}  # fmt: skip


def collect(spec: StudySpec, smoke: bool) -> tuple[dict, list[dict]]:
    """(values[variant][metric][seed], runs) from the run folders that have their metrics."""
    from sdxl_probe.studies.metrics import RESULT as RUN_RESULT
    from sdxl_probe.studies.runner import plan

    out = spec.output_dir(smoke).resolve()
    values: dict = {v: {m: {} for m in spec.study.metrics} for v in [spec.control, *spec.variants]}
    runs = []
    for run in plan(spec, smoke):
        path = run.run_dir / RUN_RESULT
        if not path.is_file():
            continue
        measured = json.loads(path.read_text(encoding="utf-8"))["metrics"]
        for metric, value in measured.items():
            values[run.variant].setdefault(metric, {})[str(run.seed)] = value
        runs.append({"variant": run.variant, "seed": run.seed, "links": run_links(run.run_dir, out),
                     "samples": str((run.run_dir / "study_samples.png").relative_to(out)),
                     "prompts": json.loads(path.read_text(encoding="utf-8")).get("prompts", [])})  # fmt: skip
    return values, runs


def run_links(run_dir: Path, out: Path) -> dict[str, str]:
    """Report pages of one run, relative to the study folder: training, memorization, attention."""
    pages = {"training": run_dir / "report.html", "attention": run_dir / "attention" / "attention.html"}
    memorization = sorted((run_dir / "memorization").glob("*.html"))
    if memorization:
        pages["memorization"] = memorization[0]
    return {name: str(p.relative_to(out)) for name, p in pages.items() if p.is_file()}


def analyse(spec: StudySpec, smoke: bool) -> dict:
    """Summaries per variant and metric, comparisons with the control, Holm over the comparisons."""
    values, runs = collect(spec, smoke)
    summaries = {v: {m: asdict(stats.summarize(list(seeds.values()))) for m, seeds in ms.items()}
                 for v, ms in values.items()}  # fmt: skip
    comparisons: dict = {}
    for v in spec.variants:
        if v != spec.control:
            comparisons[v] = {m: stats.paired_comparison({int(s): x for s, x in values[v][m].items()},
                                                         {int(s): x for s, x in values[spec.control][m].items()})
                              for m in spec.study.metrics}  # fmt: skip
    flat = [c for per in comparisons.values() for c in per.values() if not math.isnan(c.p)]
    for c, adjusted in zip(flat, stats.holm([c.p for c in flat]), strict=True):
        c.p_holm = adjusted
    return {"name": spec.name, "question": spec.study.question, "smoke": smoke, "control": spec.control,
            "variants": [spec.control] + [v for v in spec.variants if v != spec.control],
            "metrics": spec.study.metrics, "seeds": spec.seeds(smoke), "alpha": spec.study.alpha,
            "model": _model(spec), "values": values, "summaries": summaries, "runs": runs,
            "comparisons": {v: {m: c.to_dict() for m, c in per.items()} for v, per in comparisons.items()}}  # fmt: skip


def _model(spec: StudySpec) -> str:
    from sdxl_probe.studies.spec import base_config_data, merge

    return str(merge(base_config_data(spec), spec.train).get("model", {}).get("source", "toy"))


def verdict(metric: str, variant: str, control: str, c: dict, alpha: float) -> str:
    """One plain sentence: the difference, its CI, its Holm-adjusted p, and what may be concluded."""
    if c["n"] == 0:
        return f"{variant} vs {control}: no seed ran for both; nothing to compare."
    size = (f"{variant} minus {control} = {c['diff']:+.4g} (95% CI {c['ci_low']:+.4g} to {c['ci_high']:+.4g}, "
            f"d_z {c['d_z']:.2g}, permutation p {c['p']:.3g}, Holm-adjusted {c['p_holm']:.3g}, {c['n']} seeds)")  # fmt: skip
    if c["p_holm"] < alpha:
        better = (c["diff"] > 0) == (DIRECTION[metric] > 0)
        return f"{variant} is {'better' if better else 'worse'} than {control}: {size}."
    floor = ""
    if c["smallest_p"] >= alpha:
        floor = f"; with {c['n']} seeds no p below {c['smallest_p']:.3g} is possible, so more seeds are needed"
    return f"No detectable difference: {size}{floor}."


def write_report(spec: StudySpec, *, smoke: bool) -> Path:
    """Analyse the finished runs into OUT/study.json and render OUT/index.html."""
    out = spec.output_dir(smoke).resolve()
    write_json(out / RESULT, analyse(spec, smoke))
    return render_study(out)


def figures_table(data: dict) -> dict:
    """Every variant and metric: seeds, mean, CI, difference from the control, Holm p (rows of text)."""
    rows = []
    for v in data["variants"]:
        for m in data["metrics"]:
            s = data["summaries"][v][m]
            c = data["comparisons"].get(v, {}).get(m)
            rows.append([v, LABELS[m], s["n"], f"{s['mean']:.4g}", f"{s['ci_low']:.4g} to {s['ci_high']:.4g}",
                         "control" if c is None else f"{c['diff']:+.4g}", "" if c is None else f"{c['p_holm']:.3g}"])  # fmt: skip
    return {"columns": ["variant", "metric", "seeds", "mean", "95% CI", "vs control", "p (Holm)"], "rows": rows}


def headline_table(data: dict) -> str:
    """The study's headline table as plain text (the demo prints it verbatim)."""
    table = figures_table(data)
    widths = [max(len(str(x)) for x in col) for col in zip(table["columns"], *table["rows"], strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()
             for row in [table["columns"], *table["rows"]]]  # fmt: skip
    return "\n".join(lines)


def metric_plot(data: dict, metric: str) -> str:
    """Each seed's value per variant (dots) with the mean and its bootstrap 95% CI (bar), as a data URI."""
    from sdxl_probe.report.figures import figure_to_data_uri, new_figure

    fig = new_figure(max(3.5, 1.4 * len(data["variants"]) + 1.5), 3.0)
    ax = fig.add_subplot()
    for x, v in enumerate(data["variants"]):
        seeds = data["values"][v][metric]
        ax.plot([x] * len(seeds), list(seeds.values()), "o", color="#4c72b0", alpha=0.6)
        s = data["summaries"][v][metric]
        if s["n"]:
            ax.errorbar([x + 0.15], [s["mean"]], yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
                        fmt="s", color="#c44e52", capsize=4)  # fmt: skip
    ax.set_xticks(range(len(data["variants"])), [v.replace("$", r"\$") for v in data["variants"]])
    ax.set_title(f"{LABELS[metric]}: seeds (dots), mean and 95% CI (red)", fontsize=9)
    ax.grid(alpha=0.25)
    return figure_to_data_uri(fig)


def render_study(out: str | Path) -> Path:
    """OUT/index.html from OUT/study.json."""
    from sdxl_probe.report.figures import bytes_to_data_uri
    from sdxl_probe.report.render import ReportHeader, render_page

    out = Path(out)
    try:
        data = json.loads((out / RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProbeError(f"{out}: no readable {RESULT} ({e}); run `sdxl-probe study run SPEC` first") from None
    toy = data["model"] in ("toy", "tiny")
    intro = [f"Question: {data['question']}", f"Control: {data['control']}. Seeds: {data['seeds']}. "
             f"Family-wise alpha {data['alpha']} with Holm's correction over every (variant, metric) comparison. "
             "Uncertainty: percentile bootstrap 95% CI of the mean across seeds; paired sign-flip permutation "
             "test against the control on the same seeds; effect size Cohen's d_z."]  # fmt: skip
    if toy:
        intro.append("Toy model: every figure comes from the project's small toy model and toy world, not real SDXL.")
    if data["smoke"]:
        intro.append("Smoke mode: a few training steps per run; these figures only show that the pipeline runs.")
    sections = [{"title": "Study", "paragraphs": intro}]
    for m in data["metrics"]:
        words = [verdict(m, v, data["control"], c[m], data["alpha"]) for v, c in data["comparisons"].items()]
        sections.append({"title": f"Verdict: {LABELS[m]}", "paragraphs": words,
                         "figures": [{"uri": metric_plot(data, m), "caption": LABELS[m]}]})  # fmt: skip
    sections.append({"title": "All figures", "table": figures_table(data)})
    grids = []
    for v in data["variants"]:
        first = next((r for r in data["runs"] if r["variant"] == v and (out / r["samples"]).is_file()), None)
        if first is not None:
            uri = bytes_to_data_uri((out / first["samples"]).read_bytes(), "image/png")
            grids.append({"uri": uri, "caption": f"{v} (seed {first['seed']}): a row per prompt, a column per "
                                                  "sample seed; the same prompts and seeds for every variant"})  # fmt: skip
    if grids:
        prompts = next((r["prompts"] for r in data["runs"] if r.get("prompts")), [])
        rows = [f"row {i + 1}: {text}" for i, text in enumerate(prompts)]
        sections.append({"title": "Samples per variant", "paragraphs": rows, "figures": grids})
    links = [{"href": href, "text": f"{r['variant']} seed {r['seed']}: {name} report"}
             for r in data["runs"] for name, href in r["links"].items()]  # fmt: skip
    sections.append({"title": "Runs", "links": links, "paragraphs": [] if links else ["No run has finished yet."]})
    header = ReportHeader(title=f"Study: {data['name']}", model=data["model"], model_kind="toy" if toy else "sdxl",
                          config={"control": data["control"], "seeds": data["seeds"], "metrics": data["metrics"]})  # fmt: skip
    return render_page("simple.html.j2", {"sections": sections}, out / PAGE, header=header)
