"""Parse the attention command's options and read its input images and captions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdxl_probe.errors import DatasetError, ProbeError
from sdxl_probe.probes.attention.runs import CaptureOptions

WINDOW_NAMES = ("early", "middle", "late")


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """ "1,2,3" -> (1, 2, 3); None or "" -> None. ProbeError naming ``option`` otherwise."""
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ProbeError(f"{option} {text!r}: expected comma-separated integers, e.g. 300,500") from None


def parse_window(text: str | None, n_steps: int) -> tuple[int, int] | None:
    """A step window: "early"/"middle"/"late" (thirds of ``n_steps``) or "START:STOP".

    Returns:
        A half-open (start, stop) range of step indices, or None for all steps.
    """
    if not text:
        return None
    if text in WINDOW_NAMES:
        i = WINDOW_NAMES.index(text)
        return (i * n_steps // 3, (i + 1) * n_steps // 3 if i < 2 else n_steps)
    parts = text.split(":")
    try:
        start, stop = (int(p) if p else d for p, d in zip(parts, (0, n_steps), strict=True))
    except ValueError:
        raise ProbeError(
            f"--window {text!r}: expected early, middle, late or START:STOP (e.g. 0:10)"
        ) from None
    if not 0 <= start < stop <= n_steps:
        raise ProbeError(f"--window {text!r}: needs 0 <= START < STOP <= {n_steps} (the number of steps)")
    return (start, stop)


def capture_options(
    *, window: str | None, n_steps: int, layers: str | None, heads: str | None, resolutions: str | None,
    include_mid: bool,
) -> CaptureOptions:  # fmt: skip
    """CaptureOptions from the command-line strings."""
    return CaptureOptions(
        layers=tuple(p.strip() for p in layers.split(",") if p.strip()) if layers else None,
        heads=parse_ints(heads, "--heads"),
        steps=parse_window(window, n_steps),
        factors=parse_ints(resolutions, "--resolutions"),
        include_mid=include_mid,
    )


def load_images_and_captions(
    paths: Sequence[Path], caption: str | None, caption_ext: str
) -> tuple[np.ndarray, list[str]]:
    """Read same-size RGB images and their captions (``--caption`` or ``<stem><caption_ext>``).

    Returns:
        (B, H, W, 3) uint8 images and B captions.
    """
    from PIL import Image

    images, captions = [], []
    for path in paths:
        try:
            images.append(np.asarray(Image.open(path).convert("RGB")))
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read the image ({e}); pass PNG/JPEG/WebP files") from None
        captions.append(caption if caption is not None else _read_caption(path, caption_ext))
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
        raise DatasetError(f"images have different sizes {sizes}; inspect images of one size per run")
    return np.stack(images), captions


def _read_caption(image: Path, ext: str) -> str:
    try:
        path = image.with_suffix(ext)
    except ValueError:
        raise ProbeError(f"--caption-ext {ext!r}: not a file extension; use one such as .txt or .caption") from None
    if not path.is_file():
        raise DatasetError(f"{path}: caption file not found for {image.name}; add it or pass --caption TEXT")
    from sdxl_probe.data.records import read_caption_text

    lines = read_caption_text(path).splitlines()  # bad UTF-8 bytes become U+FFFD, as the audit reads them
    return lines[0].strip() if lines else ""
