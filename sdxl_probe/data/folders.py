"""The kohya folder walk: ``N_name`` subfolders, images and their caption files.

As sd-scripts' ``DreamBoothDataset``: a subfolder without a number is ignored with a warning;
captions are ``<image stem><caption_extension>``, first line only unless wildcards are enabled;
an image without a caption file is trained on its class tokens; no recursion into subfolders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from sdxl_probe.data.records import (
    CAPTION_EXTENSIONS,
    FOLDER_RE,
    CaptionRecord,
    IssueLog,
    Subset,
    is_image,
    read_caption_file,
)


def folder_records(subset: Subset, issues: IssueLog) -> Iterator[CaptionRecord]:
    """Stream the captions of one image folder (non-recursive, like sd-scripts' ``glob_images``)."""
    image_dir = subset.image_dir
    assert image_dir is not None
    names = _list_dir(image_dir, issues)
    if names is None:
        return
    ext = subset.caption_extension
    images = sorted(n for n in names if is_image(n))
    stems = {os.path.splitext(n)[0] for n in images}
    wildcard = bool(subset.caption_options.get("enable_wildcard", False))
    for name in images:
        yield _folder_record(subset, image_dir / name, names, ext, wildcard, issues)
    for name in sorted(n for n in names if n.endswith(ext) and not _has_image(n[: -len(ext)], stems)):
        issues.add(
            "caption_without_image",
            image_dir / name,
            f"{image_dir / name}: caption file has no image next to it",
        )
    if not images:
        others = sum(1 for n in names if n.endswith(ext))
        issues.add(
            "empty_subset",
            image_dir,
            f"{image_dir}: no images found ({others} '{ext}' files); subset skipped",
        )


def _has_image(caption_stem: str, image_stems: set[str]) -> bool:
    """True for ``x.txt`` next to ``x.png``, and for alternate captions such as ``x.tags.txt``."""
    return caption_stem in image_stems or caption_stem.split(".", 1)[0] in image_stems


def _folder_record(
    subset: Subset, image: Path, names: set[str], ext: str, wildcard: bool, issues: IssueLog
) -> CaptionRecord:
    cap_name = os.path.splitext(image.name)[0] + ext
    if cap_name in names:
        path = image.parent / cap_name
        caption, bad = read_caption_file(path, wildcard=wildcard, issues=issues)
        if caption is not None:
            return CaptionRecord(caption, subset, str(image), str(path), "file", caption, bad)
        return CaptionRecord("", subset, str(image), str(path), "unreadable", "")
    issues.add("image_without_caption", image, f"{image}: no '{ext}' caption file; trained on class tokens")
    tokens = subset.class_tokens or ""
    return CaptionRecord(tokens, subset, str(image), None, "class_tokens" if tokens else "none", tokens)


def _list_dir(path: Path, issues: IssueLog) -> set[str] | None:
    if not path.is_dir():
        issues.add(
            "missing_image_dir", path, f"{path}: image directory not found; check image_dir / the path"
        )
        return None
    try:
        with os.scandir(path) as it:
            return {e.name for e in it if not e.is_dir() or e.name.endswith(CAPTION_EXTENSIONS)}
    except OSError as e:
        issues.add("unreadable", path, f"{path}: cannot list directory ({e.strerror or e})")
        return None


def guess_caption_extension(image_dir: Path) -> str:
    """``.caption`` if such files exist in ``image_dir`` (sd-scripts' default), else ``.txt``."""
    try:
        with os.scandir(image_dir) as it:
            found = {os.path.splitext(e.name)[1] for e in it}
    except OSError:
        return CAPTION_EXTENSIONS[0]
    return next((ext for ext in CAPTION_EXTENSIONS if ext in found), CAPTION_EXTENSIONS[0])


def kohya_folder_subsets(root: Path, caption_extension: str | None, issues: IssueLog) -> list[Subset]:
    """Subsets of a kohya ``train_data_dir``: one per ``N_name`` subfolder, sorted by name."""
    subsets = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        match = FOLDER_RE.match(child.name)
        if match is None:
            issues.add(
                "ignored_folder",
                child,
                f"{child}: folder name is not 'N_name' (e.g. '10_{child.name}'); ignored, as sd-scripts does",
            )
            continue
        ext = caption_extension or guess_caption_extension(child)
        subsets.append(Subset(child.name, child, "folder", ext, int(match.group(1)), match.group(2)))
    return subsets
