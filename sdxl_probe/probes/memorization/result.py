"""The memorization probe's result: ``memorization.json`` (everything) and ``memorization.csv`` (per image).

Nothing here imports torch or a model, so the report re-renders from these files alone.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json, write_text

RESULT_JSON = "memorization.json"
RESULT_CSV = "memorization.csv"
IMAGE_DIR = "images"


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


@dataclass
class MemorizationResult:
    """Memorization scores of a run's checkpoints, each LoRA minus base.

    Attributes:
        toy_model: made with the toy (or tiny) model; the report says so.
        headline: the score the recommendation uses.
        checkpoints: per checkpoint ``{"step", "file", "sha256", "scores": {score: mean over training
            images}, "held_out": {score: [per held-out image]}, "membership_auc", "split_auc": {score: AUC},
            "train_loss", "val_loss", "generated", "seconds": {"generation", "scoring"}}``.
        recommended: ``{"step", "rule", "crossed_at", "threshold"}``.
        images: per image ``{"file", "caption", "split", "base": {raw measures}, "scores": {step: {score}},
            "panels": {"training", "last", "recommended", "base": PNG name under images/}}``: the image and
            its nearest generation at the last and recommended checkpoints and on the base model.
        model: source, kind, hash, device and dtype.
        settings: seeds, steps, cfg, sampler, size, first_steps, thresholds.
        directions: score -> +1 (higher = more copying), -1 (lower = more copying) or 0 (not a score).
        sensitivity: per perturbation, the drop of copying at the last checkpoint (LoRA minus base).
        token_significance: per training caption, [(token, LoRA minus base gradient norm)].
        source: the run folder, or "files" for ``--lora ... --dataset``.
    """

    toy_model: bool
    headline: str
    checkpoints: list[dict[str, Any]]
    recommended: dict[str, Any]
    images: list[dict[str, Any]]
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    directions: dict[str, int] = field(default_factory=dict)
    sensitivity: dict[str, Any] = field(default_factory=dict)
    token_significance: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    kind: str = "memorization"

    def checkpoint(self, step: int) -> dict[str, Any]:
        """The entry of checkpoint ``step``; ProbeError listing the steps when absent."""
        for c in self.checkpoints:
            if c["step"] == step:
                return c
        raise ProbeError(f"no checkpoint at step {step}; steps: {', '.join(str(c['step']) for c in self.checkpoints)}")

    def image_scores(self, step: int, name: str, split: str | None = None) -> list[float]:
        """Per-image ``name`` at checkpoint ``step`` (optionally of one split), in image order."""
        return [im["scores"][str(step)][name] for im in self.images
                if (split is None or im["split"] == split) and im["scores"].get(str(step), {}).get(name) is not None]  # fmt: skip

    def csv_text(self) -> str:
        """One row per (checkpoint, image): step, split, file, caption, then every score."""
        names = sorted({n for im in self.images for s in im["scores"].values() for n in s})
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["step", "split", "file", "caption", *names])
        for c in self.checkpoints:
            for im in self.images:
                row = im["scores"].get(str(c["step"]), {})
                writer.writerow([c["step"], im["split"], im["file"], im["caption"], *(row.get(n, "") for n in names)])
        return buf.getvalue()

    def save(self, folder: str | Path) -> Path:
        """Write ``memorization.json`` and ``memorization.csv`` into ``folder``."""
        folder = Path(folder)
        write_json(folder / RESULT_JSON, finite(asdict(self)))
        write_text(folder / RESULT_CSV, self.csv_text())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MemorizationResult:
        """Read a folder written by ``save``."""
        path = Path(folder) / RESULT_JSON
        if not path.is_file():
            raise ProbeError(f"{path}: not found; run `sdxl-probe memorization RUN_DIR --out {folder}` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ProbeError(f"{path}: cannot read it ({e}); run the probe again") from None
        if data.get("kind") != "memorization":
            raise ProbeError(f"{path}: not a memorization result (kind {data.get('kind')!r})")
        return cls(**data)
