"""Dataset records: subsets with their kohya settings, caption records, the issue log, caption files.

Conventions follow kohya-ss/sd-scripts (``BaseDataset``, ``DreamBoothDataset`` and
``FineTuningDataset`` in library/train_util.py). Reading never stops at one bad file: problems are
collected in an :class:`IssueLog` (counts plus the first few examples per kind) and the stream goes on.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Any

from sdxl_probe.errors import DatasetError, ProbeError
from sdxl_probe.io import read_bounded

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif", ".jxl")
CAPTION_EXTENSIONS = (".caption", ".txt")  # tried in this order when none is given
CAPTION_COLUMNS = ("caption", "text", "prompt", "tags")
IMAGE_COLUMNS = ("file_name", "image", "image_path", "path", "file", "filename")
FOLDER_RE = re.compile(r"^(\d+)_(.*)$")
MAX_EXAMPLES = 20
RECORD_ERRORS = ("bad_file", "bad_row", "non_utf8", "unreadable")  # skipped records; fatal under audit --strict
MAX_CAPTION_BYTES = 4 * 2**20  # one caption file; sd-scripts captions are a few hundred bytes
MAX_LIST_BYTES = 2 * 2**30  # a caption table or list (metadata.jsonl, CSV): millions of rows


@dataclasses.dataclass(frozen=True)
class Subset:
    """One source of captions with its resolved kohya settings.

    Attributes:
        name: the ``ss_tag_frequency`` key (basename of the image dir or metadata file).
        image_dir: folder of images (None for a caption list without images).
        kind: ``"folder"``, ``"metadata_json"``, ``"jsonl"`` or ``"csv"``.
        caption_extension: caption file extension for folders (e.g. ``".txt"``).
        num_repeats: kohya repeats (reported, never multiplied into counts).
        class_tokens: caption used for an image without a caption file.
        metadata_file: the caption list file for non-folder kinds.
        caption_options: kohya caption settings set for this subset (kohya names).
        alpha_mask: kohya ``alpha_mask`` as the dataset TOML resolves it (None: not set there).
        conditioning_data_dir: kohya ``conditioning_data_dir``: the subset's folder of loss masks.
    """

    name: str
    image_dir: Path | None
    kind: str = "folder"
    caption_extension: str = ".caption"
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    metadata_file: Path | None = None
    caption_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    alpha_mask: bool | None = None
    conditioning_data_dir: Path | None = None


@dataclasses.dataclass(frozen=True)
class CaptionRecord:
    """One trained caption as read from disk.

    Attributes:
        caption: the caption text (first line, stripped; replacement chars if not UTF-8).
        subset: the :class:`Subset` it came from.
        image: image path, or None when the source lists no image.
        caption_file: the file the caption was read from, or None (class tokens, list row).
        source: ``"file"``, ``"class_tokens"``, ``"row"`` or ``"none"`` (no caption at all).
        tag_text: the text ``ss_tag_frequency`` counts for this record.
        non_utf8: the caption file was not valid UTF-8 and was decoded with replacement.
    """

    caption: str
    subset: Subset
    image: str | None
    caption_file: str | None
    source: str
    tag_text: str
    non_utf8: bool = False


@dataclasses.dataclass
class IssueLog:
    """Problems found while reading: counts per kind and the first examples (path, message)."""

    counts: Counter = dataclasses.field(default_factory=Counter)
    examples: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, path: str | Path, message: str) -> None:
        self.counts[kind] += 1
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < MAX_EXAMPLES:
            bucket.append((str(path), message))

    def to_dict(self) -> dict[str, Any]:
        return {
            kind: {
                "count": n,
                "examples": [{"path": p, "message": m} for p, m in self.examples.get(kind, [])],
            }
            for kind, n in sorted(self.counts.items())
        }


def read_caption_text(path: Path, what: str = "caption file") -> str:
    """A regular text file of at most :data:`MAX_LIST_BYTES`, as UTF-8 (bad bytes become U+FFFD).

    Raises:
        DatasetError: missing, unreadable, not a regular file, or too large.
    """
    try:
        data = read_bounded(path, MAX_LIST_BYTES, what=what)
    except ProbeError as e:
        raise DatasetError(str(e)) from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the {what} ({e.strerror or e}); check the path") from None
    return data.decode("utf-8", errors="replace").removeprefix("\ufeff")


def read_caption_file(path: Path, *, wildcard: bool, issues: IssueLog) -> tuple[str | None, bool]:
    """Read a caption file as sd-scripts does: first non-stripped line, or all lines with wildcards.

    Returns:
        ``(caption, non_utf8)``; caption is None when the file cannot be read (a device or FIFO,
        larger than :data:`MAX_CAPTION_BYTES`, or unreadable): it is counted under ``unreadable``.
    """
    try:
        data = read_bounded(path, MAX_CAPTION_BYTES, what="caption file")
    except (OSError, ProbeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        issues.add("unreadable", path, f"{path}: cannot read caption file ({why}); caption skipped")
        return None, False
    try:
        text, bad = data.decode("utf-8"), False
    except UnicodeDecodeError as e:
        text, bad = data.decode("utf-8", errors="replace"), True
        issues.add(
            "non_utf8",
            path,
            f"{path}: not valid UTF-8 (byte {e.start}); decoded with U+FFFD replacement, re-save it as UTF-8",
        )
    text = text.removeprefix("\ufeff")
    lines = text.splitlines()
    if wildcard:
        return "\n".join(s.strip() for s in lines if s.strip()), bad
    return (lines[0].strip() if lines else ""), bad


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)

