"""Training images: dataset records -> decoded images in aspect-ratio buckets, and the batch order.

Buckets and crops follow sd-scripts (``library/model_util.make_bucket_resolutions``,
``BucketManager.select_bucket``, ``trim_and_resize_if_required``): buckets have area at most
``resolution**2``, sides in ``[min_bucket_reso, max_bucket_reso]`` and multiples of
``bucket_reso_steps``; an image goes to the bucket of nearest aspect ratio, is resized to cover
it and centre-cropped. SDXL micro-conditioning gets the **true** original size (the image on
disk) and the crop's top-left in the resized image; a flipped image mirrors the left crop.

Regularization images (kohya ``is_reg`` subsets, or the ``reg_path`` folder: sd-scripts'
``reg_data_dir``) are repeated or cut to the training count as sd-scripts'
``DreamBoothDataset.__init__`` does (:func:`balanced_repeats`), are never held out for validation,
and carry the per-sample loss weight ``prior_loss_weight`` (sd-scripts' ``loss_weights``).

Masked loss (:mod:`~sdxl_probe.train.lora.masks`): an image may carry a loss mask, from a mask file
(``conditioning_data_dir``, R channel / 255) or its own alpha channel (``alpha_mask``); :func:`load_mask`
takes it through exactly the resize, crop and flip of :func:`load_pixels`. The mask is never part of
the latent cache: it is read again at each draw.

The batch order is a pure function of (seed, epoch): a resumed run draws the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.data.kohya_toml import CAPTION_OPTION_KEYS
from sdxl_probe.errors import ConfigError, DatasetError
from sdxl_probe.text.captions import CaptionOptions
from sdxl_probe.train.lora.masks import (
    MaskSettings,
    check_mask_folders,
    check_mask_size,
    check_no_extra_masks,
    check_some_mask,
    find_mask,
    mask_dirs,
)


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
        is_reg: a regularization image (sd-scripts ``is_reg``): balanced and loss-weighted.
        mask_file: its loss mask (R channel / 255), from ``conditioning_data_dir``; None: no mask file.
        alpha_mask: its loss mask is its own alpha channel / 255 (all ones without alpha).
    """

    path: Path
    caption: str
    options: CaptionOptions
    repeats: int
    subset: str
    sha256: str
    original: tuple[int, int]
    bucket: tuple[int, int]
    is_reg: bool = False
    mask_file: Path | None = None
    alpha_mask: bool = False

    @property
    def masked(self) -> bool:
        """Whether the image has a loss mask (else its loss is unweighted)."""
        return self.mask_file is not None or self.alpha_mask


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


def select_bucket(b: Buckets, buckets: list[tuple[int, int]], h: int, w: int) -> tuple[int, int] | None:
    """The (h, w) bucket of an image (sd-scripts ``BucketManager.select_bucket``).

    Under ``bucket_no_upscale`` the bucket is the image (shrunk to the area) rounded down to
    ``bucket_reso_steps``, and min/max_bucket_reso do not apply (as in sd-scripts). A side that rounds
    down to 0 would need upscaling (sd-scripts makes a zero-size bucket): None, the image is unusable.
    """
    if not b.enable:
        return b.resolution, b.resolution
    aspect = w / h
    if b.no_upscale:
        rh, rw = float(h), float(w)
        if w * h > b.resolution**2:  # shrink to the area, keep the aspect, round to steps
            rw = math.sqrt(b.resolution**2 * aspect)
            rh = b.resolution**2 / rw
        bh, bw = int(rh // b.steps) * b.steps, int(rw // b.steps) * b.steps
        return (bh, bw) if bh and bw else None
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
    return _fit(rgb, image, flipped)


def load_mask(image: TrainImage, flipped: bool) -> np.ndarray:
    """(bh, bw) float32 in [0, 1]: the image's loss mask through the same resize, crop and flip as its pixels.

    The mask file's R channel / 255 (sd-scripts reads it as an RGB conditioning image and keeps R), or
    the image's alpha / 255 (sd-scripts ``load_image`` converts to RGBA: no alpha reads as 255); all
    ones for an image without a mask source.
    """
    from PIL import Image

    if not image.masked:
        return np.ones(image.bucket, dtype=np.float32)
    with Image.open(image.mask_file or image.path) as im:
        band = im.convert("RGB").getchannel("R") if image.mask_file else im.convert("RGBA").getchannel("A")
    return _fit(band, image, flipped).astype(np.float32) / 255.0


def _fit(im, image: TrainImage, flipped: bool) -> np.ndarray:
    """A PIL image of the original size resized (LANCZOS) to cover the bucket, centre-cropped, maybe mirrored."""
    from PIL import Image

    (rh, rw), (top, left) = crop_geometry(image.original, image.bucket)
    if (rh, rw) != image.original:
        im = im.resize((rw, rh), Image.Resampling.LANCZOS)
    arr = np.asarray(im)[top : top + image.bucket[0], left : left + image.bucket[1]]  # (bh, bw[, C])
    return np.ascontiguousarray(arr[:, ::-1] if flipped else arr)


def read_images(
    path: str, *, caption_extension: str | None, caption_settings: dict, buckets: Buckets,
    on_bad_image: str, log: Callable[[str], None], reg_path: str | None = None, masks: MaskSettings = MaskSettings(),
) -> list[TrainImage]:  # fmt: skip
    """Open the dataset (and the ``reg_path`` folder) with the data room's one reader, decode every size.

    Raises:
        DatasetError: missing dataset or image folder, a caption file that is not UTF-8, an
            undecodable image (unless ``on_bad_image = "skip"``: then it is named and skipped), a
            subset left without a usable image, or no training image at all (see :func:`_check_subsets`);
            a missing, undecodable, wrongly sized or unmatched loss mask (:mod:`~sdxl_probe.train.lora.masks`).
        ConfigError: ``conditioning_data_dir`` without ``masked_loss``, or ``masked_loss`` and no mask.
    """
    cli = {k: v for k, v in caption_settings.items() if k in CAPTION_OPTION_KEYS}
    datasets = [open_dataset(path, caption_extension=caption_extension, cli_defaults=cli)]
    if reg_path:  # sd-scripts' reg_data_dir: a kohya folder whose every subset is is_reg
        reg = open_dataset(reg_path, caption_extension=caption_extension, cli_defaults=cli)
        reg.subsets = [dataclasses.replace(sub, is_reg=True) for sub in reg.subsets]
        datasets.append(reg)
    table = make_buckets(buckets) if buckets.enable else []
    images: list[TrainImage] = []
    for n, ds in enumerate(datasets):
        check_mask_folders(masks, ds.subsets)
        dirs = {id(sub): mask_dirs(sub, masks, is_reg_path=n > 0) for sub in ds.subsets}
        tally: dict[int, Counter] = {}
        stems, folders = set(), set()  # every image's name, every mask folder looked in
        for rec in ds.records():
            if rec.image:
                stems.add(Path(rec.image).stem)
            folders.update(dirs[id(rec.subset)])
            image = _train_image(rec, caption_settings, buckets, table, on_bad_image, log, tally)
            if image is not None:
                images.append(_with_mask(image, rec.subset, dirs[id(rec.subset)], masks.alpha_mask))
        _check_subsets(ds, tally, buckets)
        check_no_extra_masks(folders, stems)
    if images and all(im.is_reg for im in images):
        raise DatasetError(f"{path}: only regularization images (is_reg subsets or reg_path); add a subset of "
                           "training images without is_reg")  # fmt: skip
    if not images:
        raise DatasetError(f"{path}: no trainable images found ({dict(datasets[0].issues.counts) or 'empty'}); "
                           "give a kohya folder with N_name subfolders of images and captions")  # fmt: skip
    _log_masks(images, masks, log)
    return images


def _with_mask(image: TrainImage, subset, dirs: list[Path], alpha_default: bool) -> TrainImage:
    """The image with its loss-mask source: a checked mask file from ``dirs``, else alpha when the subset
    (or ``[dataset]``) sets ``alpha_mask``; the folder wins as in sd-scripts' ``apply_masked_loss``."""
    if dirs:
        mask = find_mask(image.path, dirs)
        check_mask_size(mask, image.path, image.original)
        return dataclasses.replace(image, mask_file=mask)
    alpha = subset.alpha_mask if subset.alpha_mask is not None else alpha_default
    return dataclasses.replace(image, alpha_mask=True) if alpha else image


def _log_masks(images: list[TrainImage], masks: MaskSettings, log) -> None:
    """Refuse ``masked_loss`` without a single mask; say how many images train with which mask."""
    n_file, n_alpha = sum(im.mask_file is not None for im in images), sum(im.alpha_mask for im in images)
    check_some_mask(masks, n_file + n_alpha)
    if n_file or n_alpha:
        log(f"masked loss: {n_file} images with a mask file, {n_alpha} with their alpha channel, "
            f"{len(images) - n_file - n_alpha} without a mask (unweighted)")  # fmt: skip


def _train_image(rec, caption_settings: dict, buckets: Buckets, table, on_bad_image: str, log,
                 tally: dict[int, Counter]) -> TrainImage | None:  # fmt: skip
    """One record as a TrainImage, or None (no image, skipped undecodable, too small); counts per subset."""
    if rec.non_utf8:
        raise DatasetError(f"{rec.caption_file}: caption file is not valid UTF-8; re-save it as UTF-8")
    if rec.image is None:
        return None
    counts = tally.setdefault(id(rec.subset), Counter())
    counts["listed"] += 1
    size, digest = _decode(Path(rec.image), on_bad_image, log)
    if size is None:
        counts["undecodable"] += 1
        return None
    bucket = select_bucket(buckets, table, *size)
    if bucket is None:
        counts["too small"] += 1
        log(f"skipped {rec.image}: {size[0]}x{size[1]} px has a side under bucket_reso_steps = {buckets.steps} "
            "and bucket_no_upscale forbids upscaling it")  # fmt: skip
        return None
    opts = caption_options({**caption_settings, **rec.subset.caption_options})
    return TrainImage(Path(rec.image), rec.caption, opts, rec.subset.num_repeats, rec.subset.name, digest, size,
                      bucket, rec.subset.is_reg)  # fmt: skip


def _check_subsets(ds, tally: dict[int, Counter], buckets: Buckets) -> None:
    """A missing image folder, or a subset with no usable image, is one line naming it and the fix."""
    missing = ds.issues.examples.get("missing_image_dir")
    if missing:
        raise DatasetError(missing[0][1])
    for sub in ds.subsets:
        counts = tally.get(id(sub), Counter())
        if counts["listed"] > counts["undecodable"] + counts["too small"]:
            continue
        where = f"{sub.image_dir or sub.metadata_file}: subset '{sub.name}'{' (is_reg)' if sub.is_reg else ''}"
        if not counts["listed"]:
            raise DatasetError(f"{where} has no images; add images (png, jpg, webp, ... directly in that folder) "
                               "or remove the subset")  # fmt: skip
        fixes = ["fix or replace the undecodable images"] if counts["undecodable"] else []
        if counts["too small"]:
            fixes.append(f"lower bucket_reso_steps (now {buckets.steps}) or set bucket_no_upscale = false")
        raise DatasetError(f"{where} has no usable image ({counts['listed']} found: {counts['undecodable']} "
                           f"undecodable, {counts['too small']} too small); {' or '.join(fixes)}, "
                           "or remove the subset")  # fmt: skip


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


def split_images(images: list[TrainImage], share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: :func:`split_validation` over the training images only; every
    regularization image trains (without one, the same split as ``split_validation(len(images))``)."""
    pool = [i for i, im in enumerate(images) if not im.is_reg]
    train, held = split_validation(len(pool), share, seed) if pool else ([], [])
    kept = {pool[j] for j in train}
    return [i for i in range(len(images)) if i in kept or images[i].is_reg], [pool[j] for j in held]


def balanced_repeats(images: list[TrainImage], train_idx: list[int]) -> dict[int, int]:
    """Repeats per trained image, regularization images balanced against the training count.

    A transcription of sd-scripts' ``DreamBoothDataset.__init__``: ``num_train_images`` is the sum of
    the training images' repeats. Walking the reg images in order, the first pass registers each
    with its own repeats until the running count reaches ``num_train_images`` (the rest are unused);
    later passes add one repeat per image until it does. So with fewer reg images (counting repeats)
    than training images the reg count is repeated up to exactly the training count; with more,
    only the first ones are used, and the count may pass the training count by less than the last
    image's repeats (exactly equal when reg repeats are 1). Unused reg images get 0.
    """
    repeats = {i: images[i].repeats for i in train_idx if not images[i].is_reg}
    reg = [i for i in train_idx if images[i].is_reg]
    num_train = sum(repeats.values())
    repeats.update({i: 0 for i in reg})
    n, first_loop = 0, True
    while reg and n < num_train:
        for i in reg:
            if first_loop:
                repeats[i] = images[i].repeats
                n += repeats[i]
            else:
                repeats[i] += 1
                n += 1
            if n >= num_train:
                break
        first_loop = False
    return repeats


class BatchOrder:
    """Which images each micro-batch holds: per epoch, each bucket's repeated images shuffled and cut
    into batches, then the batches shuffled (sd-scripts' order), all from ``Random(seed, epoch)``.
    Batches are never empty; the last of a bucket may be short (as in sd-scripts)."""

    def __init__(self, images: list[TrainImage], train_idx: list[int], batch_size: int, seed: int,
                 prior_loss_weight: float = 1.0):  # fmt: skip
        self.images, self.train_idx, self.batch_size, self.seed = images, train_idx, batch_size, seed
        self.prior_loss_weight = prior_loss_weight
        self.repeats = balanced_repeats(images, train_idx)
        if not any(self.repeats.values()):
            raise DatasetError("no image left to train on after the validation split; lower validation_split")
        self.per_epoch = len(self.epoch(0))

    @lru_cache(maxsize=2)  # noqa: B019 - one order object per run
    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-order-{epoch}")
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i in self.train_idx:
            by_bucket.setdefault(self.images[i].bucket, []).extend([i] * self.repeats[i])
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

    def loss_weights(self, idx: list[int]) -> list[float]:
        """Per-sample loss weights (sd-scripts ``loss_weights``): ``prior_loss_weight`` for reg images, else 1."""
        return [self.prior_loss_weight if self.images[i].is_reg else 1.0 for i in idx]


def manifest(images: list[TrainImage], validation: list[int]) -> list[dict]:
    """The exact dataset of a run: file, hash, caption, sizes, split and repeats trained per epoch per image."""
    held = set(validation)
    trained = balanced_repeats(images, [i for i in range(len(images)) if i not in held])
    return [{"file": str(im.path), "sha256": im.sha256, "caption": im.caption, "subset": im.subset,
             "is_reg": im.is_reg, "repeats": im.repeats, "trained_repeats": trained.get(i, 0),
             "original": list(im.original), "bucket": list(im.bucket),
             "mask": str(im.mask_file) if im.mask_file else "alpha" if im.alpha_mask else None,
             "split": "validation" if i in held else "train"} for i, im in enumerate(images)]  # fmt: skip
