"""Render the attention probe's HTML report from its saved files (no torch, no model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ProbeError
from sdxl_probe.report.figures import bytes_to_data_uri
from sdxl_probe.report.render import ReportHeader, precision_text, render_page

REPORT_NAME = "attention.html"


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_") or "maps"


def _png(path: Path) -> str | None:
    return bytes_to_data_uri(path.read_bytes(), "image/png") if path.is_file() else None


def _caption_view(meta: dict[str, Any], c: int, b: int) -> dict[str, Any]:
    entry = meta["metrics"]["words"][c][b]
    ren = meta["metrics"].get("ren")
    cut = [w["text"] for w in meta["words"][b] if not w["positions"]]
    return {"caption": meta["captions"][b], "shares": entry["caption"]["shares"],
            "token_entropy": entry["caption"]["token_entropy"], "words": entry["words"],
            "tags": entry.get("tags", []) if len(entry.get("tags", [])) != len(entry["words"]) else [],
            "ren": ren[b] if ren else None, "cut_words": cut}  # fmt: skip


def render_report(result_dir: str | Path) -> Path:
    """Write ``attention.html`` next to ``attention.json`` and the overlay PNGs."""
    result_dir = Path(result_dir)
    meta_path = result_dir / "attention.json"
    if not meta_path.is_file():
        raise ProbeError(
            f"{meta_path}: not found; run `sdxl-probe attention generate|inspect --out {result_dir}` first"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    views = [{"label": label, "overlay": _png(result_dir / f"overlay_{_slug(label)}.png"),
              "captions": [_caption_view(meta, c, b) for b in range(len(meta["captions"]))]}
             for c, label in enumerate(meta["conditions"])]  # fmt: skip
    diffs = sorted(result_dir.glob("overlay_diff_*.png"))
    context = {"mode": meta["mode"], "is_toy": meta["model"].get("is_toy", False), "captions": meta["captions"],
               "conditions": meta["conditions"], "map_shape": meta["shapes"]["token_maps"], "settings": meta["settings"],
               "conditions_view": views, "lora_rows": meta["metrics"].get("lora_change", []),
               "diff_overlays": [_png(p) for p in diffs]}  # fmt: skip
    header = ReportHeader(title=f"Cross-attention maps ({meta['mode']})", model=meta["model"].get("source"),
                          model_kind=meta["model"].get("kind"), config=meta["settings"],
                          device=precision_text(meta["model"])[0], dtype=precision_text(meta["model"])[1])  # fmt: skip
    return render_page("attention.html.j2", context, result_dir / REPORT_NAME, header=header)
