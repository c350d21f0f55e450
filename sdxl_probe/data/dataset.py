"""Open a caption dataset as a stream of records: kohya folders, kohya TOML, metadata.jsonl, CSV.

``ss_tag_frequency`` counts the caption as read (for a metadata ``.json`` subset: its ``tags``)
under the key ``basename(image_dir)`` (or ``basename(metadata_file)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdxl_probe.data.folders import folder_records, kohya_folder_subsets
from sdxl_probe.data.kohya_toml import CAPTION_OPTION_KEYS, toml_subsets
from sdxl_probe.data.records import FOLDER_RE, CaptionRecord, IssueLog, Subset
from sdxl_probe.data.tables import list_records
from sdxl_probe.errors import DatasetError

__all__ = ["FOLDER_RE", "CaptionRecord", "Dataset", "IssueLog", "Subset", "open_dataset"]

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
