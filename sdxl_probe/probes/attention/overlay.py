"""Overlay grids: an image next to its heat maps, one column per word or special token."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sdxl_probe.io import write_with
from sdxl_probe.probes.attention.metrics import minmax, resize_to

LABEL_HEIGHT = 14  # pixels of the caption strip under each cell (PIL's default bitmap font is ~11 px)


def colorize(heat: torch.Tensor, size: tuple[int, int], cmap: str = "jet") -> np.ndarray:
    """(h, w) map -> (H, W, 3) uint8 colour image after bicubic resize and min-max."""
    import matplotlib

    lut = matplotlib.colormaps[cmap]
    norm = minmax(resize_to(heat, size)).clamp(0, 1).numpy()
    return (lut(norm)[..., :3] * 255).astype(np.uint8)


def blend(image: np.ndarray, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """Alpha-blend a heat map over an (H, W, 3) uint8 image."""
    colour = colorize(heat, image.shape[:2]).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def enlarge(image: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W, 3) image to height ``cell``, keeping its aspect ratio."""
    from PIL import Image

    cell_w = max(1, round(cell * image.shape[1] / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((cell_w, cell), Image.NEAREST))


def overlay_row(
    image: np.ndarray, maps: Sequence[torch.Tensor], labels: Sequence[str], cell: int
) -> np.ndarray:
    """One grid row: the image, then one blended overlay per map, each labelled.

    Args:
        image: (H, W, 3) uint8.
        maps: (h, w) heat maps.
        labels: the image's label followed by one label per map.
        cell: cell height in pixels (width follows the image's aspect ratio).

    Returns:
        (cell + LABEL_HEIGHT, n * cell_w, 3) uint8.
    """
    big = enlarge(image, cell)
    return label_strip([big] + [blend(big, m) for m in maps], labels)


def label_strip(tiles: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Place equal-size (h, w, 3) tiles side by side with a text label under each."""
    from PIL import Image, ImageDraw

    h, w = tiles[0].shape[:2]
    row = Image.new("RGB", (w * len(tiles), h + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(row)
    for i, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        row.paste(Image.fromarray(tile), (i * w, 0))
        draw.text((i * w + 2, h + 1), label[: max(4, w // 6)], fill="black")
    return np.asarray(row)


def save_grid(rows: Sequence[np.ndarray], path: str | Path) -> Path:
    """Stack rows of possibly different widths (white-padded) and write a PNG atomically."""
    from PIL import Image

    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = Image.fromarray(np.concatenate(padded, axis=0))
    return write_with(path, lambda p: grid.save(p, format="PNG"))


def diff_tile(image: np.ndarray, base: torch.Tensor, lora: torch.Tensor, alpha: float = 0.6) -> np.ndarray:
    """LoRA minus base on a diverging scale (red = more attention with the LoRA, blue = less)."""
    import matplotlib

    size = image.shape[:2]
    p, q = (resize_to(m, size).clamp(min=0) for m in (base, lora))
    d = q / q.sum().clamp(min=1e-12) - p / p.sum().clamp(min=1e-12)
    scaled = (d / d.abs().max().clamp(min=1e-12) * 0.5 + 0.5).numpy()
    colour = matplotlib.colormaps["coolwarm"](scaled)[..., :3] * 255
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def caption_tiles(result, condition: int, caption: int) -> tuple[list[torch.Tensor], list[str]]:
    """Word maps (DAAM word = mean of its tokens) then BOS/EOS/padding maps, with labels."""
    from sdxl_probe.probes.attention.heatmaps import group_map, kind_maps

    token_maps = result.token_maps[condition, caption]  # (T, H, W)
    words = [w for w in result.words[caption] if w["positions"]]
    maps = [group_map(token_maps, w["positions"]) for w in words]
    labels = [w["text"] for w in words]
    for kind, heat in kind_maps(token_maps, result.kinds[caption]).items():
        maps.append(heat)
        labels.append(f"<{kind}>")
    return maps, labels


def tag_tiles(result, condition: int, caption: int) -> tuple[list[torch.Tensor], list[str]]:
    """Tag maps (mean of the tag's tokens), only when some tag holds more than one word."""
    from sdxl_probe.probes.attention.heatmaps import group_map

    tags = [t for t in (result.tags[caption] if result.tags else []) if t["positions"]]
    words = {tuple(w["positions"]) for w in result.words[caption]}
    if all(tuple(t["positions"]) in words for t in tags):
        return [], []
    token_maps = result.token_maps[condition, caption]
    return [group_map(token_maps, t["positions"]) for t in tags], [t["text"] for t in tags]


def write_overlays(result, folder: str | Path, cell: int = 128, per_row: int = 12) -> list[Path]:
    """One PNG grid per condition: per caption, the image then one overlay per word and special token.

    A second row per caption shows tag maps when some tag holds several words.

    With base/LoRA condition pairs, an extra ``overlay_diff_*.png`` shows LoRA minus base per word.

    Returns:
        The written paths.
    """
    folder = Path(folder)
    paths = []
    for c, label in enumerate(result.conditions):
        rows = []
        for b in range(len(result.captions)):
            maps, labels = caption_tiles(result, c, b)
            rows += _wrapped_rows(result.images[c, b], maps, [f"{label} #{b}"] + labels, cell, per_row)
            tag_maps, tag_labels = tag_tiles(result, c, b)
            if tag_maps:
                rows += _wrapped_rows(
                    result.images[c, b], tag_maps, [f"tags #{b}"] + tag_labels, cell, per_row
                )
        paths.append(save_grid(rows, folder / f"overlay_{_slug(label)}.png"))
    for c, label in enumerate(result.conditions):
        if label.endswith("/base") and label.replace("/base", "/lora") in result.conditions:
            paths.append(
                _write_diff(result, c, result.conditions.index(label.replace("/base", "/lora")), folder, cell)
            )
    return paths


def _wrapped_rows(image, maps, labels, cell, per_row):
    rows = []
    for start in range(0, max(len(maps), 1), per_row):
        part = maps[start : start + per_row]
        rows.append(overlay_row(image, part, [labels[0]] + labels[1 + start : 1 + start + len(part)], cell))
    return rows


def _write_diff(result, base: int, lora: int, folder: Path, cell: int) -> Path:
    rows = []
    for b in range(len(result.captions)):
        base_maps, labels = caption_tiles(result, base, b)
        lora_maps, _ = caption_tiles(result, lora, b)
        image = enlarge(result.images[base, b], cell)
        tiles = [diff_tile(image, p, q) for p, q in zip(base_maps, lora_maps, strict=True)]
        rows.append(label_strip([image] + tiles, [f"lora-base #{b}"] + labels))
    return save_grid(rows, folder / f"overlay_diff_{_slug(result.conditions[base].split('/')[0])}.png")


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_") or "maps"
