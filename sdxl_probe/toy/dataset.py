"""Write a toy-world dataset as a kohya-style folder with ground truth.

Layout of ``OUT`` (``R`` = repeats, ``NAME`` = the trigger, else the concept, else ``toy``)::

    OUT/R_NAME/00000.png           image, RGB
    OUT/R_NAME/00000.txt           caption in the chosen style (what a trainer reads)
    OUT/R_NAME/00000.tags.txt      the same scene as tags
    OUT/R_NAME/00000.sentence.txt  the same scene as a sentence
    OUT/masks/00000.png            object labels, uint8: 0 = background, i + 1 = object i
    OUT/loss_masks/00000.png       the same as a loss mask: 255 on the objects, 0 on the background
                                   (``[dataset] masked_loss = true``, ``conditioning_data_dir = "OUT/loss_masks"``)
    OUT/metadata.jsonl             one JSON line per image: file, mask, caption, captions,
                                   background, objects (shape, colour, size, position, bbox, ...)
    OUT/toy_dataset.json           the settings that made the folder (see ToyDataset)

Masks live outside the image folder because kohya trains on every image file in ``R_NAME``; the
loss masks are named like the images, as sd-scripts' ``conditioning_data_dir`` expects them.
``metadata.jsonl`` has ``file`` and ``caption`` keys, so it also reads as a caption list.
Every file is written atomically, and the folder is a pure function of the settings.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sdxl_probe.errors import DatasetError
from sdxl_probe.io import write_bytes, write_json, write_text
from sdxl_probe.outputs import output_folder
from sdxl_probe.toy.world import (
    CAPTION_STYLES,
    CONCEPT_COLOURS,
    CONCEPT_SHAPES,
    SPLITS,
    Scene,
    caption_scene,
    object_centre,
    render_scene,
    sample_scene,
)

CONCEPTS: tuple[str, ...] = CONCEPT_SHAPES + tuple(CONCEPT_COLOURS)
SETTINGS_FILE = "toy_dataset.json"
METADATA_FILE = "metadata.jsonl"
MASK_DIR = "masks"
LOSS_MASK_DIR = "loss_masks"


@dataclass
class ToyDataset:
    """The settings of a written dataset, and where its parts are (saved as ``toy_dataset.json``)."""

    root: str
    image_dir: str  # relative to root: "R_NAME"
    n: int
    seed: int
    style: str = "tags"
    split: str = "train"
    concept: str | None = None
    trigger: str | None = None
    repeats: int = 1
    details: bool = False
    size: int = 64

    def save(self, path: str | Path | None = None) -> Path:
        return write_json(path or Path(self.root) / SETTINGS_FILE, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> ToyDataset:
        p = Path(path)
        p = p / SETTINGS_FILE if p.is_dir() else p
        try:
            return cls(**json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:
            raise DatasetError(f"{p}: not a toy dataset settings file ({e}); write one with `sdxl-probe toy dataset`") from e


def _check(out: Path, n: int, style: str, split: str, concept: str | None, trigger: str | None, repeats: int) -> None:
    """Raise DatasetError naming the bad value, what is expected and how to fix it."""
    if n < 1 or repeats < 1:
        raise DatasetError(f"--n {n} / --repeats {repeats}: both must be at least 1")
    if style not in CAPTION_STYLES:
        raise DatasetError(f"--style {style!r}: unknown caption style; use one of {', '.join(CAPTION_STYLES)}")
    if split not in SPLITS:
        raise DatasetError(f"--split {split!r}: unknown split; use one of {', '.join(SPLITS)}")
    if concept is not None and concept not in CONCEPTS:
        raise DatasetError(f"--concept {concept!r}: not a new concept; use one of {', '.join(CONCEPTS)}")
    if trigger is not None and (not trigger.strip() or any(ch in trigger for ch in ",\n/\\")):
        raise DatasetError(f"--trigger {trigger!r}: must be a word without commas, slashes or newlines (e.g. 'zkw')")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; choose a new OUT or remove it first")


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def scene_record(scene: Scene, masks: np.ndarray) -> dict:
    """Ground truth of one scene: background and objects with pixel ``bbox (x0, y0, x1, y1)``."""
    objects = []
    for obj, mask in zip(scene.objects, masks, strict=True):
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None
        cx, cy = object_centre(obj)
        objects.append({**obj.to_dict(), "centre": [round(cx, 4), round(cy, 4)], "bbox": bbox,
                        "area": int(mask.sum())})
    return {"background": scene.background, "objects": objects}


def _captions(scene: Scene, style: str, seed: int, index: int, trigger: str | None,
              names: dict[str, str] | None, details: bool) -> dict[str, str]:
    """Every style's caption for one scene, from an rng of its own (seed, index)."""
    rng = random.Random(f"{seed}:{index}:captions")
    caps = {s: caption_scene(scene, s, rng, trigger, details=details, names=names) for s in CAPTION_STYLES}
    return {"caption": caps[style], **caps}


def write_dataset(
    out: str | Path,
    *,
    n: int,
    seed: int,
    style: str = "tags",
    split: str = "train",
    concept: str | None = None,
    trigger: str | None = None,
    repeats: int = 1,
    details: bool = False,
    size: int = 64,
) -> ToyDataset:
    """Write ``n`` seeded scenes to ``out`` (see the module docstring for the layout).

    Args:
        concept: a shape or colour never used in pretraining (:data:`CONCEPTS`); every scene
            shows it in its first object. With ``trigger`` the captions name it by the trigger
            word (``"red zkw"`` for a heart); without, by its own word.
        trigger: without ``concept``, prepended to every caption (``"zkw, red circle, ..."``).
        details: captions also give sizes and positions.
    """
    root = Path(out)
    _check(root, n, style, split, concept, trigger, repeats)
    names = {concept: trigger} if concept and trigger else None
    prefix = None if names else trigger
    ds = ToyDataset(str(root), f"{repeats}_{trigger or concept or 'toy'}", n, seed, style, split,
                    concept, trigger, repeats, details, size)
    rng = random.Random(seed)
    lines = []
    with output_folder(root, fresh=True, option="OUT") as tmp:  # all of it appears at once, or none
        for i in range(n):
            scene = sample_scene(rng, split=split, concept=concept)
            image, masks = render_scene(scene, size)
            caps = _captions(scene, style, seed, i, prefix, names, details)
            stem = f"{ds.image_dir}/{i:05d}"
            write_bytes(tmp / f"{stem}.png", _png(image))
            write_text(tmp / f"{stem}.txt", caps["caption"] + "\n")
            write_text(tmp / f"{stem}.tags.txt", caps["tags"] + "\n")
            write_text(tmp / f"{stem}.sentence.txt", caps["sentence"] + "\n")
            labels = (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(0).astype(np.uint8)
            write_bytes(tmp / MASK_DIR / f"{i:05d}.png", _png(labels))
            write_bytes(tmp / LOSS_MASK_DIR / f"{i:05d}.png", _png(np.where(labels > 0, 255, 0).astype(np.uint8)))
            record = {"file": f"{stem}.png", "mask": f"{MASK_DIR}/{i:05d}.png",
                      "loss_mask": f"{LOSS_MASK_DIR}/{i:05d}.png", **caps, **scene_record(scene, masks)}  # fmt: skip
            lines.append(json.dumps(record, ensure_ascii=False))
        write_text(tmp / METADATA_FILE, "\n".join(lines) + "\n")
        ds.save(tmp / SETTINGS_FILE)
    return ds


def read_metadata(root: str | Path) -> list[dict]:
    """The records of ``root/metadata.jsonl``, in image order."""
    path = Path(root) / METADATA_FILE
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read toy metadata ({e}); write it with `sdxl-probe toy dataset`") from e
