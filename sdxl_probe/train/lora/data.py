"""Training images: dataset records -> decoded images in aspect-ratio buckets, and the batch order.

Buckets and crops follow sd-scripts (``library/model_util.make_bucket_resolutions``,
``BucketManager.select_bucket``, ``trim_and_resize_if_required``): buckets have area at most
``resolution**2``, sides in ``[min_bucket_reso, max_bucket_reso]`` and multiples of
``bucket_reso_steps``; an image goes to the bucket of nearest aspect ratio, is resized to cover
it and centre-cropped. SDXL micro-conditioning gets the **true** original size (the image on
disk) and the crop's top-left in the resized image; a flipped image mirrors the left crop.

The batch order is a pure function of (seed, epoch): a resumed run draws the same batches.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.data.kohya_toml import CAPTION_OPTION_KEYS
from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.text.captions import CaptionOptions


@dataclass(frozen=True)
class TrainImage:
    """One image of the dataset with its caption and kohya settings.

    Attributes:
        path: image file.
        caption: the raw caption (the caption pipeline runs at each draw).
        options: the subset's caption settings.
        repeats: kohya ``num_repeats``.
        subset: the subset name (``ss_tag_frequency`` key).
        sha256: hash of the image file's bytes (manifest, latent-cache key).
        original: (h, w) of the image on disk.
        bucket: (h, w) it is trained at.
    """

    path: Path
    caption: str
    options: CaptionOptions
    repeats: int
    subset: str
    sha256: str
    original: tuple[int, int]
    bucket: tuple[int, int]


@dataclass(frozen=True)
class Buckets:
    """Bucket settings (sd-scripts names)."""

    resolution: int
    enable: bool
    min_reso: int
    max_reso: int
    steps: int
    no_upscale: bool


def caption_options(values: dict) -> CaptionOptions:
    """CaptionOptions from kohya-named settings (unknown names are not caption settings)."""
    names = {f.name for f in fields(CaptionOptions)}
    return CaptionOptions(**{k: v for k, v in values.items() if k in names and v is not None})


def check_buckets(b: Buckets, multiple: int) -> None:
    """Refuse sizes the model cannot take: every trained side must be a multiple of ``multiple``."""
    if not b.enable and b.resolution % multiple:
        raise ConfigError(
            f"[dataset] resolution = {b.resolution}: not a multiple of {multiple} (the model's VAE factor x UNet "
            f"downsampling); use {max(multiple, b.resolution // multiple * multiple)}"
        )
    if b.enable:
        if b.steps % multiple:
            raise ConfigError(f"[dataset] bucket_reso_steps = {b.steps}: not a multiple of {multiple} (the model's "
                              f"size factor); use {max(multiple, b.steps // multiple * multiple)}")  # fmt: skip
        if not b.min_reso <= b.resolution <= b.max_reso or b.min_reso % b.steps or b.max_reso % b.steps:
            raise ConfigError(
                f"[dataset] resolution = {b.resolution} with buckets {b.min_reso}..{b.max_reso} step {b.steps}: "
                "resolution must lie in the bucket range and both ends be multiples of bucket_reso_steps"
            )


def make_buckets(b: Buckets) -> list[tuple[int, int]]:
    """sd-scripts' ``make_bucket_resolutions``: (h, w) pairs of area <= resolution**2."""
    max_area, step = b.resolution * b.resolution, b.steps
    side = int(math.sqrt(max_area) // step) * step
    resos = {(side, side)}
    width = b.min_reso
    while width <= b.max_reso:
        height = min(b.max_reso, int((max_area // width) // step) * step)
        if height >= b.min_reso:
            resos |= {(height, width), (width, height)}
        width += step
    return sorted(resos)


def select_bucket(b: Buckets, buckets: list[tuple[int, int]], h: int, w: int) -> tuple[int, int]:
    """The (h, w) bucket of an image (sd-scripts ``BucketManager.select_bucket``)."""
    if not b.enable:
        return b.resolution, b.resolution
    aspect = w / h
    if b.no_upscale:
        if w * h > b.resolution**2:  # shrink to the area, keep the aspect, round to steps
            rw = math.sqrt(b.resolution**2 * aspect)
            rh = b.resolution**2 / rw
            return max(b.steps, int(rh // b.steps) * b.steps), max(b.steps, int(rw // b.steps) * b.steps)
        return max(b.steps, h // b.steps * b.steps), max(b.steps, w // b.steps * b.steps)
    return min(buckets, key=lambda hw: abs(hw[1] / hw[0] - aspect))


def crop_geometry(original: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized h, w), (crop top, left)): resize to cover ``bucket``, then centre-crop."""
    (h, w), (bh, bw) = original, bucket
    scale = max(bh / h, bw / w)
    rh, rw = max(bh, round(h * scale)), max(bw, round(w * scale))
    return (rh, rw), ((rh - bh) // 2, (rw - bw) // 2)


def micro_conditioning(image: TrainImage, flipped: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(original (h, w), crop top-left (top, left)) for ``time_ids``; a flip mirrors the left crop."""
    (rh, rw), (top, left) = crop_geometry(image.original, image.bucket)
    if flipped:
        left = rw - image.bucket[1] - left
    return image.original, (top, left)


def load_pixels(image: TrainImage, flipped: bool) -> np.ndarray:
    """(bh, bw, 3) uint8: the image resized to cover its bucket, centre-cropped, maybe mirrored."""
    from PIL import Image

    with Image.open(image.path) as im:
        rgb = im.convert("RGB")
    (rh, rw), (top, left) = crop_geometry(image.original, image.bucket)
    if (rh, rw) != image.original:
        rgb = rgb.resize((rw, rh), Image.Resampling.LANCZOS)
    arr = np.asarray(rgb)[top : top + image.bucket[0], left : left + image.bucket[1]]
    return np.ascontiguousarray(arr[:, ::-1] if flipped else arr)


def read_images(
    path: str, *, caption_extension: str | None, caption_settings: dict, buckets: Buckets,
    on_bad_image: str, log: Callable[[str], None],
) -> list[TrainImage]:  # fmt: skip
    """Open the dataset (the data room's one reader) and decode every image's size.

    Raises:
        DatasetError: missing dataset or image folder, a caption file that is not UTF-8, an
            undecodable image (unless ``on_bad_image = "skip"``: then it is named and skipped),
            or no image at all.
    """
    ds = open_dataset(path, caption_extension=caption_extension,
                      cli_defaults={k: v for k, v in caption_settings.items() if k in CAPTION_OPTION_KEYS})  # fmt: skip
    table = make_buckets(buckets) if buckets.enable else []
    images = []
    for rec in ds.records():
        if rec.non_utf8:
            raise DatasetError(f"{rec.caption_file}: caption file is not valid UTF-8; re-save it as UTF-8")
        if rec.image is None:
            continue
        size, digest = _decode(Path(rec.image), on_bad_image, log)
        if size is None:
            continue
        opts = caption_options({**caption_settings, **rec.subset.caption_options})
        images.append(TrainImage(Path(rec.image), rec.caption, opts, rec.subset.num_repeats, rec.subset.name, digest,
                                 size, select_bucket(buckets, table, *size)))  # fmt: skip
    missing = ds.issues.examples.get("missing_image_dir")
    if missing:
        raise DatasetError(missing[0][1])
    if not images:
        raise DatasetError(f"{path}: no trainable images found ({dict(ds.issues.counts) or 'empty'}); "
                           "give a kohya folder with N_name subfolders of images and captions")  # fmt: skip
    return images


def _decode(path: Path, on_bad_image: str, log) -> tuple[tuple[int, int] | None, str]:
    """((h, w), sha256) of an image file; (None, "") for a skipped undecodable one."""
    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(path) as im:
            im.load()
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        message = f"{path}: cannot decode the image ({str(e).splitlines()[0][:120]})"
        if on_bad_image == "error":
            raise DatasetError(f"{message}; fix or remove it, or set [dataset] on_bad_image = \"skip\"") from None
        log(f"skipped {message}")
        return None, ""
    return (h, w), hashlib.sha256(data).hexdigest()


def split_validation(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) image indices: ``round(n * share)`` images held out by a seeded draw."""
    k = min(n - 1, round(n * share)) if share > 0 else 0
    held = set(random.Random(f"validation-{seed}").sample(range(n), k))
    return [i for i in range(n) if i not in held], sorted(held)


class BatchOrder:
    """Which images each micro-batch holds: per epoch, each bucket's repeated images shuffled and cut
    into batches, then the batches shuffled (sd-scripts' order), all from ``Random(seed, epoch)``."""

    def __init__(self, images: list[TrainImage], train_idx: list[int], batch_size: int, seed: int):
        self.images, self.train_idx, self.batch_size, self.seed = images, train_idx, batch_size, seed
        self.per_epoch = len(self.epoch(0))

    @lru_cache(maxsize=2)  # noqa: B019 - one order object per run
    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-order-{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i in self.train_idx:
            by_bucket.setdefault(self.images[i].bucket, []).extend([i] * self.images[i].repeats)
        batches = []
        for bucket in sorted(by_bucket):
            items = by_bucket[bucket]
            rng.shuffle(items)
            batches += [items[s : s + self.batch_size] for s in range(0, len(items), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def at(self, micro_step: int) -> tuple[int, list[int]]:
        """(epoch from 0, image indices) of a global micro-step."""
        epoch = micro_step // self.per_epoch
        return epoch, self.epoch(epoch)[micro_step % self.per_epoch]


def manifest(images: list[TrainImage], validation: list[int]) -> list[dict]:
    """The exact dataset of a run: file, hash, caption, sizes and split per image."""
    held = set(validation)
    return [{"file": str(im.path), "sha256": im.sha256, "caption": im.caption, "subset": im.subset,
             "repeats": im.repeats, "original": list(im.original), "bucket": list(im.bucket),
             "split": "validation" if i in held else "train"} for i, im in enumerate(images)]  # fmt: skip
