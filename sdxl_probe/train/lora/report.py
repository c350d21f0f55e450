"""The training report: loss, validation-loss and learning-rate curves and a sample grid per checkpoint.

Rendered from the run's saved files only (``config.json``, ``metrics.jsonl``, ``samples/``), through the
shared report layer, so ``render_report("train", RUN_DIR)`` re-renders it without a model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import read_jsonl


def read_metrics(run_dir: Path) -> list[dict]:
    """The metric records of a run (a line torn by a kill is skipped)."""
    return read_jsonl(run_dir / "metrics.jsonl")


def curves_uri(records: list[dict]) -> str:
    """Loss (and validation loss) and learning rate against the step, as a PNG data URI."""
    from sdxl_probe.report.figures import figure_to_data_uri, new_figure

    fig = new_figure(8.0, 3.2)
    ax_loss, ax_lr = fig.subplots(1, 2)
    steps = [r["step"] for r in records]
    ax_loss.plot(steps, [r["loss"] for r in records], lw=0.8, label="train loss")
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        ax_loss.plot(*zip(*val, strict=True), "o-", label="validation loss (t = 200..800)")
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log")
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in records])
    ax_lr.set(xlabel="step", ylabel="learning rate")
    return figure_to_data_uri(fig)


def sample_grid(run_dir: Path) -> tuple[np.ndarray, list[str]] | None:
    """(grid, row labels): one row per sampled step, one column per prompt (same seeds on every row)."""
    from PIL import Image

    steps = sorted(p for p in (run_dir / "samples").glob("step-*") if p.is_dir())
    rows, labels = [], []
    for folder in steps:
        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
        if images and all(im.shape == images[0].shape for im in images):
            rows.append(np.concatenate(images, axis=1))  # (H, n * W, 3)
            labels.append(folder.name)
    if not rows or any(r.shape != rows[0].shape for r in rows):
        return None
    return np.concatenate(rows, axis=0), labels


def render_report(run_dir: str | Path) -> Path:
    """``RUN_DIR/report.html`` from the saved run files."""
    from PIL import Image

    from sdxl_probe.report.figures import bytes_to_data_uri
    from sdxl_probe.report.render import ReportHeader, render_page

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ProbeError(f"{run_dir}: no config.json; not a training run folder written by `sdxl-probe train`")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    records = read_metrics(run_dir)
    sections = []
    if records:
        last = records[-1]
        rows = [["steps", last["step"]], ["last loss", f"{last['loss']:.4f}"], ["last lr", f"{last['lr']:.3g}"]]
        vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
        if vals:
            rows.append(["last validation loss", f"{vals[-1]:.4f}"])
        sections.append({"title": "Training", "table": {"columns": ["figure", "value"], "rows": rows},
                         "figures": [{"uri": curves_uri(records), "caption": "loss and learning rate by step"}]})  # fmt: skip
    grid = sample_grid(run_dir)
    if grid is not None:
        buf = io.BytesIO()
        Image.fromarray(grid[0]).save(buf, format="PNG")
        caption = "samples, one row per checkpoint (" + ", ".join(grid[1]) + "), same prompts and seeds"
        sections.append({"title": "Samples", "figures": [{"uri": bytes_to_data_uri(buf.getvalue(), "image/png"),
                                                          "caption": caption}]})  # fmt: skip
    if (run_dir / "memorization" / "memorization.html").is_file():  # written by `sdxl-probe memorization RUN_DIR`
        sections.append({"title": "Memorization", "links": [{"href": "memorization/memorization.html",
                                                            "text": "memorization scores and the checkpoint to keep"}]})  # fmt: skip
    source = config["model"]["source"]
    flat = {f"{s}.{k}": v for s, table in config.items() for k, v in table.items()}
    header = ReportHeader(title=f"LoRA training: {config['saving']['output_name']}", model=source,
                          model_kind="toy" if source == "toy" else "sdxl", dataset=config["dataset"]["path"],
                          config=flat)  # fmt: skip
    return render_page("simple.html.j2", {"sections": sections}, run_dir / "report.html", header=header)
