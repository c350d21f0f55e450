"""Render ``memorization.html`` from ``memorization.json`` and the image panels (no torch, no model).

Every caption and path reaches the page through the shared report layer, whose jinja2 environment
escapes all text (``sdxl_probe.report.render``). The page is ``simple.html.j2`` plus one block, the
per-image table, whose rows carry their images (:data:`PAGE`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_text
from sdxl_probe.report.figures import bytes_to_data_uri, figure_to_data_uri, new_figure
from sdxl_probe.report.render import ReportHeader, make_environment, precision_text

REPORT_NAME = "memorization.html"
IMAGE_COLUMNS = ("copy_tiled_l2", "copy_cosine", "clique", "diversity", "noise_norm", "loss_gap")
# simple.html.j2's sections, then the per-image table: score cells, then one inline PNG per panel
PAGE = """{% extends "simple.html.j2" %}
{% block content %}
{{ super() }}
<section>
  <h2>Per image, most memorized first</h2>
  <p>{{ per_image.note }}</p>
  <table class="per-image">
    <tr>{% for col in per_image.columns %}<th>{{ col }}</th>{% endfor %}</tr>
    {% for row in per_image.rows %}
    <tr>{% for cell in row.cells %}<td>{{ cell }}</td>{% endfor %}
      {% for pic in row.pictures %}<td class="picture">{% if pic.uri %}<img src="{{ pic.uri }}" alt="{{ pic.alt }}" style="max-width:160px">{% else %}–{% endif %}</td>{% endfor %}</tr>
    {% endfor %}
  </table>
</section>
{% endblock %}
"""
CURVE_SCORES = ("copy_tiled_l2", "copy_cosine", "clique", "diversity", "noise_norm", "attn_entropy", "bos_mass",
                "loss_gap", "coverage", "adherence")  # fmt: skip


def _fmt(value: Any) -> str:
    return "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))


def curves_uri(meta: dict) -> str:
    """Training and validation loss, then each score (training-image mean, LoRA minus base), against step."""
    ckpts = meta["checkpoints"]
    steps = [c["step"] for c in ckpts]
    names = [n for n in CURVE_SCORES if any(c["scores"].get(n) is not None for c in ckpts)]
    fig = new_figure(10.0, 2.4 * ((len(names) + 1 + 3) // 4))
    axes = fig.subplots((len(names) + 1 + 3) // 4, 4, squeeze=False).flatten()
    for key, style in (("train_loss", "o-"), ("val_loss", "s--")):
        pts = [(s, c[key]) for s, c in zip(steps, ckpts, strict=True) if c.get(key) is not None]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), style, label=key.replace("_", " "))
    axes[0].set(title="loss (none logged)" if not axes[0].lines else "loss", xlabel="step")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    for ax, name in zip(axes[1:], names, strict=False):
        pts = [(s, c["scores"][name]) for s, c in zip(steps, ckpts, strict=True) if c["scores"].get(name) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-")
        ax.axhline(0.0, color="gray", lw=0.5)
        ax.axvline(meta["recommended"]["step"], color="green", lw=0.8, ls=":")
        ax.set(title=name, xlabel="step")
    for ax in axes[len(names) + 1 :]:
        ax.set_axis_off()
    return figure_to_data_uri(fig)


def checkpoint_table(meta: dict) -> dict:
    names = sorted({n for c in meta["checkpoints"] for n in c["scores"]})
    rows = [[c["step"], _fmt(c.get("train_loss")), _fmt(c.get("val_loss")), _fmt(c.get("membership_auc")),
             *(_fmt(c["scores"].get(n)) for n in names)] for c in meta["checkpoints"]]  # fmt: skip
    return {"columns": ["step", "train loss", "val loss", "membership AUC", *names], "rows": rows}


def ranked_images(meta: dict) -> list[dict]:
    """The images by the headline score at the last checkpoint, highest first; images without it last."""
    last, head = str(meta["checkpoints"][-1]["step"]), meta["headline"]

    def value(im: dict) -> float:
        v = im["scores"].get(last, {}).get(head)
        return float("-inf") if v is None else v

    return sorted(meta["images"], key=value, reverse=True)


def panels_shown(meta: dict) -> list[tuple[str, str]]:
    """(panel, column title): the training image, then its nearest generation at last, recommended, base."""
    last, rec = meta["checkpoints"][-1]["step"], meta["recommended"]["step"]
    shown = [("training", "training image"), ("last", f"nearest generation, step {last} (last)")]
    if rec != last:
        shown.append(("recommended", f"nearest generation, step {rec} (recommended)"))
    return [*shown, ("base", "nearest generation, base model")]


def picture(result_dir: Path, name: str | None, alt: str) -> dict:
    """An inline PNG (a data URI) of a saved panel; no URI when the file is missing."""
    path = result_dir / name if name else None
    uri = bytes_to_data_uri(path.read_bytes(), "image/png") if path is not None and path.is_file() else None
    return {"uri": uri, "alt": alt}


def image_rows(meta: dict, result_dir: Path) -> dict:
    """The per-image table at the last checkpoint, most memorized first, each row with its images."""
    last, shown = str(meta["checkpoints"][-1]["step"]), panels_shown(meta)
    rows = [{"cells": [im["split"], im["caption"], *(_fmt(im["scores"].get(last, {}).get(c)) for c in IMAGE_COLUMNS)],
             "pictures": [picture(result_dir, im.get("panels", {}).get(p), f"{title}: {im['caption']}")
                          for p, title in shown]} for im in ranked_images(meta)]  # fmt: skip
    note = (f"Sorted by {meta['headline']} at step {last} (LoRA minus base), highest first; each row shows the "
            f"training image beside the nearest of its {meta['settings'].get('seeds', 'N')} generations.")  # fmt: skip
    return {"columns": ["split", "caption", *IMAGE_COLUMNS, *(t for _, t in shown)], "rows": rows, "note": note}


def render_report(result_dir: str | Path) -> Path:
    """Write ``memorization.html`` next to ``memorization.json``."""
    result_dir = Path(result_dir)
    path = result_dir / "memorization.json"
    if not path.is_file():
        raise ProbeError(f"{path}: not found; run `sdxl-probe memorization RUN_DIR --out {result_dir}` first")
    meta = json.loads(path.read_text(encoding="utf-8"))
    rec = meta["recommended"]
    toy = " (toy model: these figures come from the project's toy model, not real SDXL)" if meta["toy_model"] else ""
    sections = [
        {"title": "Recommended checkpoint", "paragraphs": [
            f"Keep step {rec['step']}{toy}.", f"Rule: {rec['rule']}.",
            "Scores are LoRA minus base on the same captions and seeds; higher means more copying, except "
            "diversity (lower: the seeds collapse onto one image) and bos_mass (lower: attention leaves BOS).",
            f"copy_cosine feature space: {meta['settings'].get('features', 'VAE latents')}."]},
        {"title": "Across checkpoints", "figures": [{"uri": curves_uri(meta), "caption": "loss and scores by step; "
                                                     "dotted line: the recommended checkpoint"}],
         "table": checkpoint_table(meta)},
        {"title": "Training against held-out images (AUC per score, last checkpoint)",
         "table": {"columns": ["score", "AUC"], "rows": [[n, _fmt(v)] for n, v in
                                                          sorted(meta["checkpoints"][-1].get("split_auc", {}).items())]}},
        {"title": "Caption sensitivity (last checkpoint)", "paragraphs": [
            "Rise of the nearest tiled L2 to the training image when the caption is perturbed (Somepalli et al. "
            "2023): a large rise means the copying is keyed to the exact caption."],
         "table": {"columns": ["probe", "LoRA", "base", "LoRA minus base"],
                   "rows": [[k, _fmt(v["lora"]), _fmt(v["base"]), _fmt(v["lora_minus_base"])]
                            for k, v in meta.get("sensitivity", {}).items()]}},
        {"title": "Token significance (Wen et al. 2024, last checkpoint)",
         "table": {"columns": ["caption", "tokens, most significant first (LoRA minus base)"],
                   "rows": [[im["caption"], ", ".join(f"{r['token']} {r['lora_minus_base']:.3g}" for r in ts["tokens"][:6])]
                            for im, ts in zip([i for i in meta["images"] if i["split"] == "train"],
                                              meta.get("token_significance", []), strict=False)]}},
    ]  # fmt: skip
    model = meta["model"]
    device, dtype = precision_text(model)
    header = ReportHeader(title=f"Memorization: {meta['source']}", model=model.get("source"),
                          model_kind=model.get("kind"), dataset=meta["source"], config=meta["settings"],
                          device=device, dtype=dtype)  # fmt: skip
    page = make_environment().from_string(PAGE).render(sections=sections, per_image=image_rows(meta, result_dir),
                                                       header=header)  # fmt: skip
    return write_text(result_dir / REPORT_NAME, page)
