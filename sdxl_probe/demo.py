"""`make demo`: the main job on the toy model, end to end, with one index page under reports/demo/.

It runs the same commands a user would type, each in its own process, and prints them:

1. ``toy dataset``: a kohya-style folder of toy-world scenes with long captions (past 75 tokens);
2. ``audit``: what the text encoders never see of those captions, with keep_tokens=1 and shuffle;
3. ``embed``: tag versus sentence captions of the same scenes, per text encoder of the toy model;
4. ``attention generate``: per-word cross-attention maps of toy-model generations;
5. ``toy evaluate``: how well the toy model draws what it is asked, scored by the judge; the
   index page states those figures, measured in the same run;
6. ``study run studies/tags_vs_sentences.toml``: an A/B caption study, 2 variants x 2 seeds, each a
   LoRA trained on the toy model and scored (validation loss, caption adherence, diversity,
   trigger-word attention), compared with bootstrap CIs and paired permutation tests;
7. ``memorization``: the memorization report across the checkpoints of one of the study's runs.

The closing lines print the study's headline table and the demo's wall time.

Everything here comes from the project's toy model and toy world, and every page says so.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from sdxl_probe.report.render import ReportHeader, render_page

OUT = Path("reports/demo")
STUDY = Path(__file__).resolve().parents[1] / "studies" / "tags_vs_sentences.toml"
STUDY_RUN = "study/runs/tags/seed-0"  # the run whose checkpoints the memorization report scores
PROMPTS = ["a red circle to the left of a blue square on a white background", "green triangle, black background"]


def steps(out: Path) -> list[tuple[str, list[str], str]]:
    """(title, command arguments, report path relative to ``out``) for each demo step."""
    data = out / "data"
    return [
        ("Toy dataset (200 scenes, long captions)",
         ["toy", "dataset", str(data), "--n", "200", "--seed", "0", "--style", "long"], ""),
        ("Caption audit: what each text encoder never sees",
         ["audit", str(data), "--name", "audit", "--out", str(out), "--caption-extension", ".txt",
          "--keep-tokens", "1", "--shuffle", "--seed", "0"], "audit/index.html"),
        ("Embedding probe: tags versus sentences (toy model)",
         ["embed", "--dataset", str(data), "--ext-a", ".tags.txt", "--ext-b", ".sentence.txt",
          "--model", "toy", "--out", str(out / "embed"), "--seed", "0"], "embed/embed.html"),
        ("Cross-attention maps per word (toy model)",
         ["attention", "generate", *PROMPTS, "--model", "toy", "--out", str(out / "attention"),
          "--seed", "0", "--steps", "25"], "attention/attention.html"),
        ("Toy model quality: the judge's scores on 212 prompts",
         ["toy", "evaluate", "--out", str(out / "toy-eval"), "--seed", "0"], "toy-eval/report.html"),
        ("A/B caption study: tags versus sentences (toy model, 2 seeds per variant)",
         ["study", "run", str(STUDY), "--out", str(out / "study")], "study/index.html"),
        ("Memorization across the checkpoints of one study run (toy model)",
         ["memorization", str(out / STUDY_RUN), "--out", str(out / "memorization"), "--seeds", "4", "--steps", "12",
          "--sensitivity-seeds", "0", "--significance-captions", "0"],
         "memorization/memorization.html"),
    ]  # fmt: skip


def model_status(out: Path) -> str:
    """One sentence with the toy model's acceptance figures, read from this run's ``toy evaluate``."""
    from sdxl_probe.probes.toy_eval.core import ToyEvaluation

    try:
        result = ToyEvaluation.load(out / "toy-eval")
    except (OSError, ValueError) as e:
        return f"The toy model's quality figures are missing ({e}); run `sdxl-probe toy evaluate`."
    parts = [f"{name} {value:.2f} ({verdict})" for name, value, verdict in result.acceptance()]
    return "Toy model quality measured in this run (sdxl-probe toy evaluate): " + "; ".join(parts) + "."


def study_summary(out: Path) -> tuple[str, dict]:
    """(the study's headline table as text, an index section with its verdicts and table), from this run's study.json."""
    import json

    from sdxl_probe.studies.report import LABELS, figures_table, headline_table, verdict

    title = "Study: tags versus sentences (toy model)"
    try:
        data = json.loads((out / "study" / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        missing = f"The study's figures are missing ({e}); run `sdxl-probe study run {STUDY.name}`."
        return missing, {"title": title, "paragraphs": [missing]}
    words = [f"{LABELS[m]}: " + verdict(m, v, data["control"], c[m], data["alpha"])
             for v, c in data["comparisons"].items() for m in data["metrics"]]  # fmt: skip
    return headline_table(data), {"title": title, "paragraphs": words, "table": figures_table(data)}


def run_step(args: list[str]) -> tuple[int, float]:
    cmd = [sys.executable, "-m", "sdxl_probe.cli", *args]
    print("$ sdxl-probe " + shlex.join(args), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    return code, time.perf_counter() - start


def main() -> int:
    """Run every step into a temp sibling of OUT, swapped in whole at the end (a killed demo leaves the last one)."""
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.outputs import output_folder

    try:
        with output_folder(OUT, owns=("index.html",)) as tmp:
            return run_all(tmp)
    except ProbeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_all(out: Path) -> int:
    """Run the demo steps into ``out`` and write its index page; 1 if a step failed."""
    start = time.perf_counter()
    links, failed = [], []
    for title, args, report in steps(out):
        code, seconds = run_step(args)
        print(f"  -> exit {code} in {seconds:.1f} s", flush=True)
        if code != 0:
            failed.append(title)
        elif report:
            links.append({"href": report, "text": f"{title} ({seconds:.0f} s)"})
    sections = [{"title": "Reports", "links": links,
                 "paragraphs": ["Every figure on these pages comes from the project's toy model and toy world "
                                "(a small learned SDXL-architecture model), not from real SDXL.",
                                model_status(out)]}]  # fmt: skip
    table, section = study_summary(out)
    sections.append(section)
    if failed:
        sections.append({"title": "Steps that failed", "paragraphs": failed})
    header = ReportHeader(title="sdxl-probe demo", model="toy", model_kind="toy", dataset=str(OUT / "data"))
    render_page("simple.html.j2", {"sections": sections}, out / "index.html", header=header)
    print("study headline table (toy model):")
    print(table)
    print(f"demo wall time {time.perf_counter() - start:.0f} s (without make install)")
    print(f"wrote {OUT / 'index.html'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
