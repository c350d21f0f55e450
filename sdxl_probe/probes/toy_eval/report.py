"""Files of ``toy evaluate``: ``evaluate.json``, one PNG grid per prompt group, ``report.html``.

The HTML page is rendered from the saved JSON and PNGs only (through the shared report
layer, ``simple.html.j2``), and carries the "toy model" banner when the model is a toy.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from sdxl_probe.io import atomic_path
from sdxl_probe.probes.toy_eval.core import GROUP_SHARES, ToyEvaluation

GRID_COLUMNS = 16


def image_grid(images: np.ndarray, columns: int = GRID_COLUMNS, pad: int = 2) -> np.ndarray:
    """Tile ``images (N, H, W, 3)`` uint8 into one ``(rows*(H+pad), columns*(W+pad), 3)`` image."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad), columns * (w + pad), 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = im
    return grid


def write_grids(out: Path, images: np.ndarray, groups: list[str]) -> dict[str, Path]:
    """One ``grid_<group>.png`` per group, images in prompt order (see evaluate.json per_image)."""
    from PIL import Image

    paths = {}
    for group in GROUP_SHARES:
        idx = [i for i, g in enumerate(groups) if g == group]
        if not idx:
            continue
        path = Path(out) / f"grid_{group}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(image_grid(images[idx])).save(tmp, format="PNG")
        paths[group] = path
    return paths


def render_report(out: str | Path) -> Path:
    """``report.html`` from ``evaluate.json`` and the grids (no model, no recomputation)."""
    from sdxl_probe.report.render import ReportHeader, precision_text, render_page

    out = Path(out)
    result = ToyEvaluation.load(out)
    rows = [[name, f"{value:.3f}", verdict] for name, value, verdict in result.acceptance()]
    figures = []
    for group in GROUP_SHARES:
        png = out / f"grid_{group}.png"
        if png.exists():
            uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
            figures.append({"uri": uri, "caption": f"{group}: {result.counts.get(group, 0)} images (prompts in evaluate.json)"})
    sections = [
        {"title": "Acceptance figures", "table": {"columns": ["figure", "value", "verdict"], "rows": rows}},
        {"title": "Generations", "figures": figures},
    ]
    header = ReportHeader(title="Toy model evaluation", model=result.model,
                          model_kind="toy" if result.is_toy else "sdxl", config=result.settings,
                          device=precision_text(result.precision)[0], dtype=precision_text(result.precision)[1])
    return render_page("simple.html.j2", {"sections": sections}, out / "report.html", header=header)


def write_outputs(out: Path, result: ToyEvaluation, images: np.ndarray, prompts) -> None:
    """Save the result, the grids and the HTML report into ``out``."""
    result.save(out)
    write_grids(out, images, [p.group for p in prompts])
    render_report(out)
