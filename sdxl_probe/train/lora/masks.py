"""Where each training image's loss mask comes from, checked when the dataset is read (before weights load).

sd-scripts' masked loss (``--masked_loss``, docs ``masked_loss_README``) takes the mask from one of:

- ``conditioning_data_dir``: a folder of mask images named like the training images (same stem, any
  image extension); sd-scripts reads it as an RGB conditioning image and uses its R channel / 255
  (``ControlNetDataset``, ``apply_masked_loss``). It refuses a mask whose size differs from its image's,
  an image without a mask and a mask without an image (``ControlNetDataset.__init__``'s missing and
  extra lists), and accepts the key only with ``--masked_loss``;
- ``alpha_mask``: the image's alpha channel / 255; an image without alpha gets an all-ones mask
  (``BaseDataset.__getitem__``). sd-scripts masks these images' loss even without ``--masked_loss``
  (``train_network.py``: ``if args.masked_loss or batch["alpha_masks"] is not None``), and so does this trainer.

Both settings resolve per subset (a kohya dataset TOML's subset value, else ``[dataset]``'s); when a
subset has both, the folder wins (sd-scripts' ``apply_masked_loss`` checks conditioning images first).
``[dataset] conditioning_data_dir`` is our spelling for a kohya folder without a TOML: it serves the
subsets of ``[dataset] path`` that set none, from ``DIR/<subset folder>/`` when that folder exists, else
from ``DIR`` itself; regularization images of ``reg_path`` take no folder mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdxl_probe.data.records import IMAGE_EXTENSIONS, Subset
from sdxl_probe.errors import ConfigError, DatasetError


@dataclass(frozen=True)
class MaskSettings:
    """The ``[dataset]`` masked-loss keys (sd-scripts names)."""

    masked_loss: bool = False
    alpha_mask: bool = False
    conditioning_data_dir: str | None = None


def check_mask_folders(settings: MaskSettings, subsets: list[Subset]) -> None:
    """Refuse a mask folder without ``masked_loss``, or one that is not a folder (one line each)."""
    folders = [str(s.conditioning_data_dir) for s in subsets if s.conditioning_data_dir]
    if settings.conditioning_data_dir:
        folders.insert(0, settings.conditioning_data_dir)
    if folders and not settings.masked_loss:
        raise ConfigError(f"conditioning_data_dir = {folders[0]!r} is set but [dataset] masked_loss is false; set "
                          "masked_loss = true to weight the loss by these masks (sd-scripts refuses the key "
                          "without --masked_loss), or remove conditioning_data_dir")  # fmt: skip
    for folder in folders:
        if not Path(folder).is_dir():
            raise DatasetError(f"{folder}: conditioning_data_dir is not a folder; give the folder of loss masks "
                               "named like the training images")  # fmt: skip


def mask_dirs(subset: Subset, settings: MaskSettings, is_reg_path: bool) -> list[Path]:
    """The folders that may hold this subset's masks, in lookup order (empty: no folder mask)."""
    if subset.conditioning_data_dir:
        return [Path(subset.conditioning_data_dir)]
    if not settings.conditioning_data_dir or is_reg_path:
        return []
    root = Path(settings.conditioning_data_dir)
    return [root / subset.name, root] if (root / subset.name).is_dir() else [root]


def find_mask(image: Path, dirs: list[Path]) -> Path:
    """The mask file of ``image``: ``DIR/STEM.EXT`` for the first DIR and image extension found.

    Raises:
        DatasetError: no such file in any of ``dirs``, naming the image and the paths looked at.
    """
    exts = [e for ext in IMAGE_EXTENSIONS for e in (ext, ext.upper())]
    for folder in dirs:
        for ext in exts:
            candidate = folder / f"{image.stem}{ext}"
            if candidate.is_file():
                return candidate
    looked = " or ".join(
        f"{d / image.stem}.{{{','.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)}}}" for d in dirs
    )
    raise DatasetError(f"{image}: no loss mask found (looked for {looked}); add a mask named like the image "
                       f"({image.stem}.png) to conditioning_data_dir, or remove the image")  # fmt: skip


def check_no_extra_masks(folders: set[Path], stems: set[str]) -> None:
    """Refuse mask files (directly in ``folders``) named like no image of the dataset: a misnamed mask would
    otherwise leave its image unmasked or fail elsewhere (sd-scripts' ``extra_imgs`` check)."""
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    extra = sorted(p for d in folders for p in d.iterdir()
                   if p.is_file() and p.suffix.lower() in exts and p.stem not in stems)  # fmt: skip
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise DatasetError(f"{extra[0]}: loss mask named like no training image{more}; rename it to its "
                           "image's name or remove it from conditioning_data_dir")  # fmt: skip


def check_mask_size(mask: Path, image: Path, size: tuple[int, int]) -> None:
    """Refuse a mask whose (h, w) differs from its image's ``size`` (sd-scripts' conditioning-image check)."""
    from PIL import Image

    try:
        with Image.open(mask) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{mask}: cannot decode the loss mask ({str(e).splitlines()[0][:120]}); "
                           "fix or replace it") from None  # fmt: skip
    if (h, w) != size:
        raise DatasetError(f"{mask}: loss mask is {w}x{h} px but its image {image} is {size[1]}x{size[0]} px "
                           "(width x height); save the mask at its image's size")  # fmt: skip


def check_some_mask(settings: MaskSettings, n_masked: int) -> None:
    """Refuse ``masked_loss`` when no image has a mask source (it would change nothing)."""
    if settings.masked_loss and not n_masked:
        raise ConfigError("[dataset] masked_loss = true but no image has a mask: set conditioning_data_dir (a "
                          "folder of masks named like the images) or alpha_mask = true (their alpha)")  # fmt: skip
