"""Caption tables: metadata.jsonl, CSV and sd-scripts' fine-tuning metadata ``.json``, row by row."""

from __future__ import annotations

import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sdxl_probe.data.records import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    IMAGE_EXTENSIONS,
    MAX_LIST_BYTES,
    CaptionRecord,
    IssueLog,
    Subset,
    is_image,
)
from sdxl_probe.errors import DatasetError, ProbeError


def list_records(subset: Subset, issues: IssueLog) -> Iterator[CaptionRecord]:
    """Stream the records of a caption list file (metadata.jsonl, CSV, or sd-scripts metadata .json)."""
    path = subset.metadata_file
    assert path is not None
    base = subset.image_dir or path.parent
    seen: set[str] = set()
    try:
        check_table_file(path)
        for row_no, (caption, tags, image) in _rows(path, subset.kind, issues):
            image_path = None
            if image is not None:
                image_path = base / image
                seen.add(str(image_path))
                if not image_path.exists() and not _has_image_with_stem(image_path):
                    issues.add(
                        "caption_without_image", image_path, f"{path}:{row_no}: image '{image}' not found"
                    )
            text = caption or ""
            yield CaptionRecord(
                text, subset, str(image_path) if image_path else None, None, "row", tags or text
            )
    except OSError as e:
        issues.add("unreadable", path, f"{path}: cannot read ({e.strerror or e}); subset skipped")
        return
    except (DatasetError, ProbeError) as e:
        issues.add("bad_file", path, f"{e}; subset skipped")
        return
    _images_not_listed(base, seen, subset, issues)


def check_table_file(path: Path) -> None:
    """Refuse (as a ProbeError) a caption table that is not a regular file or is over :data:`MAX_LIST_BYTES`."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ProbeError(f"{path}: not a regular file (a folder, device or FIFO); give a caption table file")
    if st.st_size > MAX_LIST_BYTES:
        raise ProbeError(f"{path}: {st.st_size / 2**30:.1f} GiB is over the {MAX_LIST_BYTES / 2**30:.0f} GiB "
                         "allowed for a caption table; split it into several files")  # fmt: skip


def _rows(
    path: Path, kind: str, issues: IssueLog
) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    """``(row number, (caption, tags, image))`` for every row of a caption list."""
    if kind == "csv":
        yield from _csv_rows(path, issues)
    elif kind == "jsonl":
        yield from _jsonl_rows(path, issues)
    else:
        yield from _metadata_json_rows(path, issues)


def _decoded_lines(path: Path, issues: IssueLog) -> Iterator[str]:
    """Lines of ``path`` (ends kept), decoded as UTF-8; bad lines use U+FFFD and are flagged."""
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                issues.add(
                    "non_utf8",
                    f"{path}:{i}",
                    f"{path}:{i}: not valid UTF-8 (byte {e.start}); decoded with U+FFFD replacement, re-save it as UTF-8",
                )
                yield raw.decode("utf-8", errors="replace")


def _csv_rows(
    path: Path, issues: IssueLog
) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    reader = csv.DictReader(_decoded_lines(path, issues))
    header = reader.fieldnames or []
    cap_col = next((c for c in CAPTION_COLUMNS if c in header), None)
    if cap_col is None:
        raise DatasetError(
            f"{path}: no caption column; expected one of {', '.join(CAPTION_COLUMNS)}, found {', '.join(header)}"
        )
    img_col = next((c for c in IMAGE_COLUMNS if c in header), None)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a field over csv.field_size_limit(): skip that row, keep the rest
            where = f"{path}:{reader.line_num}"
            issues.add("bad_row", where, f"{where}: not valid CSV ({e}); row skipped")
            continue
        image = row.get(img_col) if img_col else None
        yield reader.line_num, ((row.get(cap_col) or "").strip(), None, image if isinstance(image, str) else None)


def _jsonl_rows(
    path: Path, issues: IssueLog
) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    for i, line in enumerate(_decoded_lines(path, issues), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            issues.add("bad_row", f"{path}:{i}", f"{path}:{i}: invalid JSON ({e.msg}); line skipped")
            continue
        except RecursionError:
            issues.add("bad_row", f"{path}:{i}", f"{path}:{i}: JSON nested too deeply to read; line skipped")
            continue
        if not isinstance(row, dict):
            message = f"{path}:{i}: expected a JSON object, got {type(row).__name__}; line skipped"
            issues.add("bad_row", f"{path}:{i}", message)
            continue
        caption = next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), "")
        image = next((row[c] for c in IMAGE_COLUMNS if isinstance(row.get(c), str)), None)
        yield i, (caption.strip(), None, image)


def _metadata_json_rows(
    path: Path, issues: IssueLog
) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    """sd-scripts fine-tuning metadata: ``{image_key: {"caption": ..., "tags": ...}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping image keys to {{caption, tags}}")
    for i, (key, md) in enumerate(data.items(), start=1):
        md = md if md is not None else {}
        bad = [k for k in ("caption", "tags") if isinstance(md, dict) and md.get(k) is not None
               and not isinstance(md[k], str)]  # fmt: skip
        if not isinstance(md, dict) or bad:
            what = f"{type(md).__name__}" if not isinstance(md, dict) else f"non-text {', '.join(bad)}"
            issues.add("bad_row", f"{path}:{key}", f"{path}: entry {key!r}: expected {{caption, tags}} text, "
                                                  f"got {what}; entry skipped")  # fmt: skip
            continue
        caption, tags = md.get("caption"), md.get("tags")
        # sd-scripts FineTuningDataset: caption = caption + ", " + tags when both are present.
        if caption is None:
            caption = tags
        elif tags:
            caption = f"{caption}, {tags}"
        yield i, ((caption or "").strip(), tags or "", key)


def _has_image_with_stem(path: Path) -> bool:
    # sd-scripts metadata keys may omit the extension.
    return any(path.with_name(path.name + ext).exists() for ext in IMAGE_EXTENSIONS)


def _images_not_listed(base: Path, seen: set[str], subset: Subset, issues: IssueLog) -> None:
    if subset.kind == "metadata_json" or not base.is_dir():
        return
    with os.scandir(base) as it:
        for entry in it:
            full = str(base / entry.name)
            if is_image(entry.name) and full not in seen and os.path.splitext(full)[0] not in seen:
                issues.add(
                    "image_without_caption", full, f"{full}: image not listed in {subset.metadata_file}"
                )
