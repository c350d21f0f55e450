"""The table of report kinds: kind -> the renderer that re-renders its page from saved files.

Every page the project renders is listed here, so probes, the trainer and studies can each
keep their renderer in their own room while ``render_report(kind, folder)`` reaches all of
them. The renderers are imported lazily (this module is imported by the CLI); none imports
torch or a model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdxl_probe.errors import ProbeError

Renderer = Callable[[Path], Path]


def renderers() -> dict[str, Renderer]:
    """kind -> ``render_report(result_dir) -> page path``."""
    from sdxl_probe.probes.attention.report import render_report as attention
    from sdxl_probe.probes.audit.report import render_report as audit
    from sdxl_probe.probes.embed.report import render_report as embed
    from sdxl_probe.probes.memorization.report import render_report as memorization
    from sdxl_probe.probes.toy_eval.report import render_report as toy_eval
    from sdxl_probe.studies.report import render_study as study
    from sdxl_probe.train.lora.report import render_report as train

    return {"attention": attention, "audit": audit, "embed": embed, "toy-eval": toy_eval, "train": train, "study": study,
            "memorization": memorization}


def render_report(kind: str, result_dir: str | Path) -> Path:
    """Re-render the report of ``kind`` from the result files saved in ``result_dir``."""
    table = renderers()
    if kind not in table:
        raise ProbeError(f"no report renderer for kind '{kind}'; known kinds: {', '.join(sorted(table))}")
    result_dir = Path(result_dir)
    if not result_dir.is_dir():
        raise ProbeError(f"{result_dir}: result folder not found; run the probe first or check the path")
    return table[kind](result_dir)
