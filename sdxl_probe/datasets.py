"""Read caption datasets as a stream of records: kohya folders, kohya TOML, metadata.jsonl, CSV.

Conventions follow kohya-ss/sd-scripts (see ``/work/shared/reference/sd-scripts-compat.md`` §3):

* A kohya folder holds ``N_name`` subfolders (N repeats, ``name`` = class tokens). A subfolder
  without a number is ignored with a warning. Captions are ``<image stem><caption_extension>``;
  only the first line is used unless wildcards are enabled. An image without a caption file is
  trained on its class tokens.
* ``ss_tag_frequency`` counts the caption as read (for a metadata ``.json`` subset: its ``tags``)
  under the key ``basename(image_dir)`` (or ``basename(metadata_file)``).

Reading never stops at one bad file: problems are collected in an :class:`IssueLog` (counts plus
the first few examples per kind) and the stream goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdxl_probe.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif", ".jxl")
CAPTION_EXTENSIONS = (".caption", ".txt")  # tried in this order when none is given
CAPTION_COLUMNS = ("caption", "text", "prompt", "tags")
IMAGE_COLUMNS = ("file_name", "image", "image_path", "path", "file", "filename")
FOLDER_RE = re.compile(r"^(\d+)_(.*)$")
MAX_EXAMPLES = 20


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


def read_caption_file(path: Path, *, wildcard: bool, issues: IssueLog) -> tuple[str | None, bool]:
    """Read a caption file as sd-scripts does: first non-stripped line, or all lines with wildcards.

    Returns:
        ``(caption, non_utf8)``; caption is None when the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        issues.add(
            "unreadable", path, f"{path}: cannot read caption file ({e.strerror or e}); caption skipped"
        )
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


def list_records(subset: Subset, issues: IssueLog) -> Iterator[CaptionRecord]:
    """Stream the records of a caption list file (metadata.jsonl, CSV, or sd-scripts metadata .json)."""
    path = subset.metadata_file
    assert path is not None
    base = subset.image_dir or path.parent
    seen: set[str] = set()
    try:
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
    except DatasetError as e:
        issues.add("bad_file", path, f"{e}; subset skipped")
        return
    _images_not_listed(base, seen, subset, issues)


def _rows(
    path: Path, kind: str, issues: IssueLog
) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    """``(row number, (caption, tags, image))`` for every row of a caption list."""
    if kind == "csv":
        yield from _csv_rows(path, issues)
    elif kind == "jsonl":
        yield from _jsonl_rows(path, issues)
    else:
        yield from _metadata_json_rows(path)


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
    for i, row in enumerate(reader, start=2):
        yield i, ((row.get(cap_col) or "").strip(), None, row.get(img_col) if img_col else None)


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
        if not isinstance(row, dict):
            message = f"{path}:{i}: expected a JSON object, got {type(row).__name__}; line skipped"
            issues.add("bad_row", f"{path}:{i}", message)
            continue
        caption = next((row[c] for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), "")
        image = next((row[c] for c in IMAGE_COLUMNS if isinstance(row.get(c), str)), None)
        yield i, (caption.strip(), None, image)


def _metadata_json_rows(path: Path) -> Iterator[tuple[int, tuple[str | None, str | None, str | None]]]:
    """sd-scripts fine-tuning metadata: ``{image_key: {"caption": ..., "tags": ...}}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object mapping image keys to {{caption, tags}}")
    for i, (key, md) in enumerate(data.items(), start=1):
        caption, tags = (md or {}).get("caption"), (md or {}).get("tags")
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


# ---- kohya dataset TOML ([general], [[datasets]], [[datasets.subsets]]) ----

CAPTION_OPTION_KEYS = (
    "caption_prefix",
    "caption_suffix",
    "caption_dropout_rate",
    "caption_dropout_every_n_epochs",
    "enable_wildcard",
    "keep_tokens",
    "keep_tokens_separator",
    "secondary_separator",
    "caption_separator",
    "shuffle_caption",
    "caption_tag_dropout_rate",
    "token_warmup_min",
    "token_warmup_step",
)


@dataclasses.dataclass
class TomlSubsetKeys:
    """Keys sd-scripts accepts per subset (and, inherited, in [[datasets]] and [general])."""

    num_repeats: int | None = None
    shuffle_caption: bool | None = None
    keep_tokens: int | None = None
    keep_tokens_separator: str | None = None
    secondary_separator: str | None = None
    caption_separator: str | None = None
    enable_wildcard: bool | None = None
    color_aug: bool | None = None
    flip_aug: bool | None = None
    face_crop_aug_range: list[float] | None = None
    random_crop: bool | None = None
    token_warmup_min: int | None = None
    token_warmup_step: float | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float | None = None
    caption_dropout_every_n_epochs: int | None = None
    caption_tag_dropout_rate: float | None = None
    alpha_mask: bool | None = None
    caption_extension: str | None = None
    cache_info: bool | None = None
    custom_attributes: dict | None = None
    resize_interpolation: str | None = None


@dataclasses.dataclass
class TomlSubset(TomlSubsetKeys):
    image_dir: str | None = None
    is_reg: bool | None = None
    class_tokens: str | None = None
    metadata_file: str | None = None
    conditioning_data_dir: str | None = None


@dataclasses.dataclass
class TomlDatasetKeys(TomlSubsetKeys):
    batch_size: int | None = None
    resolution: int | list[int] | None = None
    enable_bucket: bool | None = None
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    bucket_reso_steps: int | None = None
    bucket_no_upscale: bool | None = None
    network_multiplier: float | None = None
    validation_split: float | None = None
    validation_seed: int | None = None
    debug_dataset: bool | None = None


@dataclasses.dataclass
class TomlDataset(TomlDatasetKeys):
    subsets: list[TomlSubset] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class KohyaDatasetToml:
    """A kohya ``--dataset_config`` file, validated key by key (unknown key -> ConfigError)."""

    general: TomlDatasetKeys = dataclasses.field(default_factory=TomlDatasetKeys)
    datasets: list[TomlDataset] = dataclasses.field(default_factory=list)


def toml_subsets(path: Path, cli_defaults: dict[str, Any], issues: IssueLog) -> list[Subset]:
    """Resolve every subset of a kohya TOML: subset -> dataset -> general -> CLI -> default.

    Args:
        path: the TOML file.
        cli_defaults: settings from the command line (the argparse level), kohya names.
        issues: collects missing image directories.
    """
    from sdxl_probe.config import load_config

    spec = load_config(KohyaDatasetToml, path)
    if not spec.datasets:
        raise DatasetError(
            f"{path}: no [[datasets]] table; add [[datasets]] with [[datasets.subsets]] image_dir = ..."
        )
    subsets = []
    for d_i, ds in enumerate(spec.datasets):
        for s_i, sub in enumerate(ds.subsets):
            layers = [_set_keys(sub), _set_keys(ds), _set_keys(spec.general), cli_defaults]
            value = _lookup(layers)
            subsets.append(_toml_subset(path, f"datasets[{d_i}].subsets[{s_i}]", sub, value, issues))
    return subsets


def _toml_subset(path: Path, where: str, sub: TomlSubset, value: Any, issues: IssueLog) -> Subset:
    options = {k: v for k in CAPTION_OPTION_KEYS if (v := value(k)) is not None}
    repeats = value("num_repeats") or 1
    if sub.metadata_file:
        meta = _resolve(path, sub.metadata_file)
        image_dir = _resolve(path, sub.image_dir) if sub.image_dir else meta.parent
        kind = "jsonl" if meta.suffix == ".jsonl" else "csv" if meta.suffix == ".csv" else "metadata_json"
        return Subset(
            meta.name, image_dir, kind, "", repeats, sub.class_tokens, bool(sub.is_reg), meta, options
        )
    if not sub.image_dir:
        raise DatasetError(
            f'{path}: {where} has neither image_dir nor metadata_file; set image_dir = "path/to/images"'
        )
    image_dir = _resolve(path, sub.image_dir)
    ext = value("caption_extension") or (
        guess_caption_extension(image_dir) if image_dir.is_dir() else ".caption"
    )
    return Subset(
        image_dir.name, image_dir, "folder", ext, repeats, sub.class_tokens, bool(sub.is_reg), None, options
    )


def _set_keys(obj: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(obj).items() if v is not None and k != "subsets"}


def _lookup(layers: list[dict[str, Any]]) -> Any:
    def value(key: str) -> Any:
        return next((layer[key] for layer in layers if layer.get(key) is not None), None)

    return value


def _resolve(toml_path: Path, value: str) -> Path:
    """sd-scripts resolves paths from the working directory; fall back to the TOML's folder."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    beside = toml_path.parent / p
    return beside if beside.exists() else p


# ---- entry point ----


@dataclasses.dataclass
class Dataset:
    """A dataset opened for streaming: its subsets, format and the issues found so far."""

    path: Path
    format: str
    subsets: list[Subset]
    issues: IssueLog

    def records(self) -> Iterator[CaptionRecord]:
        """Every trained caption, subset by subset; problems go to :attr:`issues`."""
        for subset in self.subsets:
            reader = folder_records if subset.kind == "folder" else list_records
            yield from reader(subset, self.issues)


def open_dataset(
    path: str | Path, *, caption_extension: str | None = None, cli_defaults: dict | None = None
) -> Dataset:
    """Open a kohya folder, kohya dataset TOML, metadata.jsonl / .json or CSV of captions.

    Args:
        path: the dataset.
        caption_extension: caption extension for folders; None = ``.caption`` if present, else ``.txt``.
        cli_defaults: kohya caption settings from the command line (e.g. ``keep_tokens``).

    Raises:
        DatasetError: the path does not exist or is not a recognised dataset.
        ConfigError: the TOML has an unknown key (naming the nearest valid one).
    """
    p, issues, cli = Path(path), IssueLog(), dict(cli_defaults or {})
    if caption_extension:
        cli.setdefault("caption_extension", caption_extension)
    if not p.exists():
        raise DatasetError(
            f"{p}: dataset not found; give a kohya folder, a dataset .toml, metadata.jsonl or a .csv"
        )
    if p.is_dir():
        subsets = kohya_folder_subsets(p, caption_extension, issues)
        subsets = [dataclasses.replace(s, caption_options=_options(cli)) for s in subsets]
        return Dataset(p, "kohya folder", subsets, issues)
    kinds = {".toml": "kohya toml", ".jsonl": "jsonl", ".csv": "csv", ".json": "metadata_json"}
    kind = kinds.get(p.suffix.lower())
    if kind is None:
        raise DatasetError(
            f"{p}: unknown dataset type '{p.suffix}'; expected a folder, .toml, .jsonl, .json or .csv"
        )
    if kind == "kohya toml":
        return Dataset(p, kind, toml_subsets(p, cli, issues), issues)
    return Dataset(p, kind, [Subset(p.name, p.parent, kind, "", 1, None, False, p, _options(cli))], issues)


def _options(cli: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cli.items() if k in CAPTION_OPTION_KEYS and v is not None}
