"""Caption pairs for the embedding probe: from the command line, two lists, a CSV, or a dataset folder.

A pair is the same content captioned twice: once as tags, once as a sentence.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from sdxl_probe.data.records import read_caption_text
from sdxl_probe.errors import DatasetError, ProbeError

PAIR_SEPARATOR = "|||"


@dataclass(frozen=True)
class CaptionPair:
    """One content in two caption styles; ``source`` says where it came from (file or row)."""

    tags: str
    sentence: str
    source: str = ""


def parse_pair(text: str, separator: str = PAIR_SEPARATOR) -> CaptionPair:
    """Parse ``"tags|||sentence"`` from the command line."""
    parts = text.split(separator)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ProbeError(
            f"--pair {text!r}: expected two non-empty captions separated by '{separator}', "
            f'e.g. --pair "red circle, white background{separator}a red circle on a white background"'
        )
    return CaptionPair(parts[0].strip(), parts[1].strip(), source="--pair")


def read_lists(tags_file: Path, sentences_file: Path) -> list[CaptionPair]:
    """Pairs from two text files with one caption per line, paired by line number."""
    tags = _read_lines(tags_file)
    sentences = _read_lines(sentences_file)
    if len(tags) != len(sentences):
        raise DatasetError(
            f"{tags_file} has {len(tags)} captions but {sentences_file} has {len(sentences)}; "
            "the two lists must have one caption per line, in the same order"
        )
    return [
        CaptionPair(t, s, source=f"line {i + 1}")
        for i, (t, s) in enumerate(zip(tags, sentences, strict=True))
    ]


def read_csv(path: Path, tags_column: str = "tags", sentence_column: str = "sentence") -> list[CaptionPair]:
    """Pairs from a CSV file with a header naming a tags column and a sentence column."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found; check the path")
    reader = csv.DictReader(io.StringIO(read_caption_text(path, "CSV file"), newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in (tags_column, sentence_column) if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; found columns {header}. "
                f"Add a header row with '{tags_column}' and '{sentence_column}'"
            )
        pairs = []
        for row_number, row in enumerate(reader, start=2):
            tags, sentence = (row[tags_column] or "").strip(), (row[sentence_column] or "").strip()
            if not tags or not sentence:
                raise DatasetError(
                    f"{path}: row {row_number} has an empty caption; fill it in or delete the row"
                )
            pairs.append(CaptionPair(tags, sentence, source=f"{path.name}:{row_number}"))
    except csv.Error as e:
        raise DatasetError(f"{path}: line {reader.line_num}: not valid CSV ({e}); fix or delete that row") from None
    return _non_empty(pairs, path)


def read_folder(folder: Path, ext_a: str, ext_b: str) -> tuple[list[CaptionPair], list[Path]]:
    """Pairs from a dataset folder where each image has two caption files.

    ``img.tags.txt`` (``ext_a``) is paired with ``img.txt`` (``ext_b``). Subfolders are
    searched (sd-scripts ``N_name`` folders). Only the first line of each file is used,
    as sd-scripts does without wildcards.

    Returns:
        The pairs, and the ``ext_a`` files that have no ``ext_b`` partner.
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found; check the path")
    if ext_a == ext_b:
        raise DatasetError(f"--ext-a and --ext-b are both {ext_a!r}; give two different caption extensions")
    pairs, unpaired = [], []
    for file_a in sorted(folder.rglob(f"*{ext_a}")):
        partner = file_a.with_name(file_a.name[: -len(ext_a)] + ext_b)
        if not partner.is_file() or partner == file_a:
            unpaired.append(file_a)
            continue
        tags, sentence = _first_line(file_a), _first_line(partner)
        if tags and sentence:
            pairs.append(CaptionPair(tags, sentence, source=str(file_a.relative_to(folder))))
    if not pairs:
        raise DatasetError(
            f"{folder}: no image has both a '{ext_a}' and a '{ext_b}' caption file "
            f"({len(unpaired)} '{ext_a}' files without a partner); check --ext-a and --ext-b"
        )
    return pairs, unpaired


def toy_pairs(n: int, seed: int = 0) -> list[CaptionPair]:
    """``n`` seeded toy-world scenes, each captioned as tags and as a sentence.

    Every other scene also names sizes and positions (``details``), so word overlap and
    caption length vary across pairs as they do in real datasets.
    """
    import random

    from sdxl_probe.toy.captions import caption_scene
    from sdxl_probe.toy.world import sample_scene

    if n < 1:
        raise ProbeError(f"--toy-pairs {n}: give a positive number of pairs, e.g. --toy-pairs 200")
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        scene = sample_scene(rng)
        details = i % 2 == 1
        tags = caption_scene(scene, "tags", rng, details=details)
        sentence = caption_scene(scene, "sentence", rng, details=details)
        pairs.append(CaptionPair(tags, sentence, source=f"toy scene {i}"))
    return pairs


def _first_line(path: Path) -> str:
    text = read_caption_text(path).strip()
    return text.splitlines()[0].strip() if text else ""


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: caption list not found; check the path")
    return [line.strip() for line in read_caption_text(path, "caption list").splitlines() if line.strip()]


def _non_empty(pairs: list[CaptionPair], path: Path) -> list[CaptionPair]:
    if not pairs:
        raise DatasetError(f"{path}: no caption pairs found; add rows under the header")
    return pairs
