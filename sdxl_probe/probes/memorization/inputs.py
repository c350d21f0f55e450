"""What the memorization probe measures, read from a run folder or given as files, and checked first.

A run folder (``sdxl-probe train``) holds ``config.json``, ``manifest.json`` (file, sha256, caption,
split per image), ``metrics.jsonl`` and ``NAME-stepXXXXXXXX.safetensors`` / ``NAME.safetensors`` LoRA
files. Probes do not import the trainer: these files are read as files. Every check here runs
before a model is loaded or an image generated.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import read_jsonl

STEP_RE = re.compile(r"^(?P<name>.+)-step(?P<step>\d+)\.safetensors$")


@dataclass
class Checkpoint:
    """One LoRA file to score: its training step, path and content hash (the generation cache key)."""

    step: int
    path: Path
    sha256: str


@dataclass
class ScoredImage:
    """One image of the dataset: its caption, pixels (H, W, 3) uint8 and whether it was trained on."""

    file: str
    caption: str
    split: str  # "train" or "held-out"
    pixels: np.ndarray = field(repr=False)


@dataclass
class Inputs:
    """Everything ``measure`` needs besides the model."""

    checkpoints: list[Checkpoint]
    images: list[ScoredImage]
    metrics: list[dict]
    model: str
    source: str  # the run folder or "files"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ProbeError(f"{path}: not found; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: cannot read it as JSON ({e}); {what}") from None


def read_metrics(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` records (a line torn by a kill is skipped)."""
    return read_jsonl(run_dir / "metrics.jsonl")


def run_checkpoints(run_dir: Path, name: str, metrics: list[dict], which: str) -> list[Checkpoint]:
    """The run's LoRA files by step: ``NAME-stepXXXXXXXX`` files, then ``NAME`` (final) at the last step."""
    found: dict[int, Path] = {}
    for path in run_dir.glob(f"{name}-step*.safetensors"):
        m = STEP_RE.match(path.name)
        if m and m["name"] == name:
            found[int(m["step"])] = path
    final = run_dir / f"{name}.safetensors"
    if final.is_file():
        last = max([r["step"] for r in metrics if "step" in r] + list(found) + [0])
        found.setdefault(last, final)  # the final file equals the last step's checkpoint when both exist
    if not found:
        raise ProbeError(f"{run_dir}: no LoRA checkpoints ({name}-step*.safetensors or {name}.safetensors); "
                         "train with [saving] save_every_n_steps > 0 or pass a finished run folder")  # fmt: skip
    steps = sorted(found) if which == "all" else [max(found)]
    return [Checkpoint(s, found[s], file_sha256(found[s])) for s in steps]


def load_pixels(path: Path, size: tuple[int, int]) -> np.ndarray:
    """An image as (H, W, 3) uint8 at ``size`` (h, w): centre-cropped to the aspect, then resized."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        h, w = size
        scale = max(h / im.height, w / im.width)
        rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
        im = im.resize((rw, rh), Image.Resampling.LANCZOS) if (rw, rh) != im.size else im
        left, top = (rw - w) // 2, (rh - h) // 2
        return np.asarray(im.crop((left, top, left + w, top + h)), dtype=np.uint8)


def relocate(file: str, dataset_root: str, new_root: Path | None) -> Path:
    """Where a manifest file lies when the dataset was moved to ``new_root`` (same relative path)."""
    path = Path(file)
    if new_root is None:
        return path
    try:
        return new_root / path.relative_to(dataset_root)
    except ValueError:
        return new_root / path.name


def verified_manifest(run_dir: Path, config: dict, dataset: Path | None) -> list[tuple[Path, dict]]:
    """(path now, manifest entry) per image, each file checked against the manifest's sha256."""
    entries = read_json(run_dir / "manifest.json", "pass a run folder written by `sdxl-probe train`").get("images")
    if not entries:
        raise ProbeError(f"{run_dir / 'manifest.json'}: lists no images; pass a run folder written by `sdxl-probe train`")
    root = config.get("dataset", {}).get("path", "")
    out = []
    for entry in entries:
        path = relocate(entry["file"], root, dataset)
        if not path.is_file():
            raise ProbeError(f"{path}: image of the run's manifest not found; pass --dataset with the run's dataset")
        if file_sha256(path) != entry["sha256"]:
            raise ProbeError(f"{path}: does not match the run's manifest (sha256 differs); pass --dataset with "
                             "the exact images the run was trained on")  # fmt: skip
        out.append((path, entry))
    return out


def manifest_images(verified: list[tuple[Path, dict]], size: tuple[int, int]) -> list[ScoredImage]:
    """The run's images (from :func:`verified_manifest`) at ``size``; validation images count as held-out."""
    return [ScoredImage(str(path), entry["caption"], "train" if entry.get("split", "train") == "train" else "held-out",
                        load_pixels(path, size)) for path, entry in verified]  # fmt: skip


def bucket_size(run_dir: Path, native: int) -> tuple[int, int]:
    """(h, w) to generate and compare at: the manifest's first bucket, else the model's native size."""
    entries = read_json(run_dir / "manifest.json", "pass a run folder written by `sdxl-probe train`")["images"]
    bucket = entries[0].get("bucket") if entries else None
    return (int(bucket[1]), int(bucket[0])) if bucket else (native, native)


def dataset_images(dataset: Path, size: tuple[int, int]) -> list[ScoredImage]:
    """Every captioned image of a dataset (``--dataset DIR`` form): all count as training images."""
    from sdxl_probe.data.dataset import open_dataset

    records = [r for r in open_dataset(dataset).records() if r.image and r.caption]
    if not records:
        raise ProbeError(f"{dataset}: no captioned images found; pass the dataset the LoRA was trained on")
    return [ScoredImage(r.image, r.caption, "train", load_pixels(Path(r.image), size)) for r in records]


def lora_step(path: Path, index: int) -> int:
    """A LoRA file's step: ``-stepN`` in its name, else kohya's ``ss_steps`` metadata, else its index."""
    m = STEP_RE.match(path.name)
    if m:
        return int(m["step"])
    from sdxl_probe.models.safetensors_file import read_header

    steps = read_header(path).metadata.get("ss_steps", "")
    return int(steps) if steps.isdigit() else index


def file_checkpoints(loras: list[Path]) -> list[Checkpoint]:
    """``--lora FILE ...``: each file checked to exist, ordered by step."""
    out = []
    for i, path in enumerate(loras):
        if not path.is_file():
            raise ProbeError(f"--lora {path}: file not found; pass LoRA .safetensors files")
        out.append(Checkpoint(lora_step(path, i), path, file_sha256(path)))
    return sorted(out, key=lambda c: c.step)


def check_architecture(checkpoints: list[Checkpoint]) -> None:
    """Refuse a LoRA file for another base model family from its header alone (``model info``'s check)."""
    from sdxl_probe.models.lora_info import is_lora, lora_info
    from sdxl_probe.models.safetensors_file import read_header

    for ckpt in checkpoints:
        header = read_header(ckpt.path)
        if not is_lora(list(header.tensors)):
            raise ProbeError(f"{ckpt.path}: not a LoRA file (no lora_down/lora_A weights); pass a LoRA .safetensors")
        arch = lora_info(ckpt.path, header).architecture
        if "not an SDXL LoRA" in arch:
            raise ProbeError(f"{ckpt.path}: a LoRA for another base model ({arch}); pass a LoRA trained on this model")
