"""The attention probe's result: raw maps in safetensors plus a JSON sidecar.

Later probes and the report read these files; nothing here imports a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json, write_with

META_NAME = "attention.json"
MAPS_NAME = "attention_maps.safetensors"


@dataclass
class AttentionResult:
    """Per-token cross-attention maps for a batch of captions under one or more conditions.

    Attributes:
        mode: "generate" (prompt -> image) or "inspect" (training image noised at t).
        model: source, kind, hash and ``is_toy`` of the model used.
        settings: the resolved options (aggregation, steps, layers, heads, seed, size).
        captions: the B captions.
        conditions: C labels, e.g. ["generate"] or ["t=300/base", "t=300/lora"].
        token_maps: (C, B, T, H, W) float32 DAAM heat maps per context position.
        token_mass: (C, B, T) attention mass per position, averaged over steps, layers,
            heads and pixels (sums to 1 over T).
        kinds: (B, T) labels bos/content/eos/pad of every context position.
        token_labels: (B, T) decoded text of every context position.
        words: per caption, dicts of ``heatmaps.Word`` fields (text, start, end, positions, n_tokens).
        images: (C, B, H, W, 3) uint8 images the maps belong to, or None.
        metrics: per-word and per-caption metrics (see ``probes.attention``).
        tags: per caption, the same fields for each tag (caption split on commas).
    """

    mode: str
    model: dict[str, Any]
    settings: dict[str, Any]
    captions: list[str]
    conditions: list[str]
    token_maps: torch.Tensor
    token_mass: torch.Tensor
    kinds: list[list[str]]
    token_labels: list[list[str]]
    words: list[list[dict[str, Any]]]
    images: np.ndarray | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    tags: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def is_toy(self) -> bool:
        """True when made with the toy or tiny model (reports must say so)."""
        return bool(self.model.get("is_toy", False))

    def condition_index(self, label: str) -> int:
        """Index of a condition label; ProbeError listing the labels if absent."""
        if label not in self.conditions:
            raise ProbeError(
                f"no condition '{label}' in this result; available: {', '.join(self.conditions)}"
            )
        return self.conditions.index(label)

    def save(self, folder: str | Path) -> Path:
        """Write ``attention.json`` and ``attention_maps.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {
            "token_maps": self.token_maps.float().contiguous(),
            "token_mass": self.token_mass.float().contiguous(),
        }
        if self.images is not None:
            tensors["images"] = torch.from_numpy(np.ascontiguousarray(self.images, dtype=np.uint8))
        write_with(folder / MAPS_NAME, lambda p: save_file(tensors, str(p)))
        meta = {k: getattr(self, k) for k in ("mode", "model", "settings", "captions", "conditions", "kinds")}
        meta |= {
            "token_labels": self.token_labels,
            "words": self.words,
            "tags": self.tags,
            "metrics": self.metrics,
        }
        meta["shapes"] = {k: list(v.shape) for k, v in tensors.items()}
        write_json(folder / META_NAME, meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AttentionResult:
        """Read a result folder written by ``save``."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path, maps_path = folder / META_NAME, folder / MAPS_NAME
        for path in (meta_path, maps_path):
            if not path.is_file():
                raise ProbeError(f"{path}: not found; pass a folder written by `sdxl-probe attention`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(maps_path))
        images = tensors["images"].numpy() if "images" in tensors else None
        meta.pop("shapes", None)
        return cls(**meta, token_maps=tensors["token_maps"], token_mass=tensors["token_mass"], images=images)
