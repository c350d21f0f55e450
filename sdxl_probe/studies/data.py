"""The study's dataset: the toy-world folder the runner writes once, and derived caption files per variant.

Written before any run starts, by the process that plans the study, so parallel runs only read it.
A second ``study run`` finds the folder made with the same settings and reuses it; a folder made
with other settings is an error, never silently reused.
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from sdxl_probe.errors import ConfigError
from sdxl_probe.io import write_text
from sdxl_probe.studies.spec import CaptionSource, StudySpec, caption_extension

DATA_DIR = "data"


def dataset_settings(spec: StudySpec, smoke: bool) -> dict:
    """The ``toy dataset`` settings of this study (smoke mode: fewer images)."""
    t = spec.toy_dataset
    n = min(t.n, spec.smoke.images) if smoke else t.n
    return {"n": n, "seed": t.seed, "style": t.style, "concept": t.concept, "trigger": t.trigger, "details": t.details}


def prepare_dataset(spec: StudySpec, out: Path, *, smoke: bool, log=print) -> Path | None:
    """Write (or find) OUT/data and every variant's derived captions; None when the config names the data."""
    if spec.toy_dataset.n == 0:
        return None
    from sdxl_probe.toy.dataset import ToyDataset, write_dataset

    root = out / DATA_DIR
    want = dataset_settings(spec, smoke)
    if (root / "toy_dataset.json").is_file():
        have = ToyDataset.load(root)
        if {k: getattr(have, k) for k in want} != want:
            raise ConfigError(f"{root}: written with other [toy_dataset] settings than {spec.path} now has; "
                              "remove the study's output folder or set [study] output_dir to a new one")  # fmt: skip
    else:
        write_dataset(root, **want)
        log(f"wrote the toy dataset {root} ({want['n']} images)")
    for variant, source in spec.captions.items():
        if source.make != "none":
            write_derived_captions(root, caption_extension(spec, variant), source)
    return root


def write_derived_captions(root: Path, extension: str, source: CaptionSource) -> int:
    """One ``STEM{extension}`` file per image, lines drawn per step by the trainer's wildcard lines.

    Returns:
        The number of files written.
    """
    from sdxl_probe.toy.dataset import read_metadata

    records = read_metadata(root)
    for i, record in enumerate(records):
        rng = random.Random(f"{source.seed}:{i}:{source.make}")
        lines = caption_lines(record, source, rng)
        write_text(root / (record["file"].rsplit(".", 1)[0] + extension), "\n".join(lines) + "\n")
    return len(records)


def caption_lines(record: dict, source: CaptionSource, rng: random.Random) -> list[str]:
    """The lines of one derived caption file (see :class:`~sdxl_probe.studies.spec.CaptionSource`)."""
    if source.make == "varied":
        return [record["tags"], record["sentence"], record["long"]]
    if source.make == "padded":
        return [padded(record["tags"], source.min_tokens, rng)]
    words = vocabulary_words()
    out = []
    for _ in range(source.lines):
        tags = record["caption"].split(", ")
        for _ in range(source.random_tokens):  # Somepalli et al. 2023: random words at random places
            tags.insert(rng.randrange(len(tags) + 1), rng.choice(words))
        out.append(", ".join(tags))
    return out


def padded(tags: str, min_tokens: int, rng: random.Random) -> str:
    """Neutral filler tags, then ``tags``, at least ``min_tokens`` CLIP tokens in all (the toy world's filler)."""
    from sdxl_probe.toy.captions import NEUTRAL_TAGS, clip_piece_count

    filler: list[str] = []
    pool: list[str] = []
    while clip_piece_count(", ".join([*filler, tags])) < min_tokens:
        if not pool:
            pool = list(NEUTRAL_TAGS)
            rng.shuffle(pool)
        filler.append(pool.pop())
    return ", ".join([*filler, tags])


@lru_cache(maxsize=1)
def vocabulary_words() -> tuple[str, ...]:
    """Whole lowercase words of the CLIP vocabulary (3 to 10 letters), the pool of random tokens."""
    from sdxl_probe.text.vocab import load_vocab

    end = "</w>"
    return tuple(sorted(t[: -len(end)] for t in load_vocab() if t.endswith(end) and t[: -len(end)].isalpha()
                        and t[: -len(end)].islower() and 3 <= len(t) - len(end) <= 10))  # fmt: skip


def dataset_trigger(root: Path | None) -> tuple[str | None, str | None]:
    """(trigger, concept) of a toy dataset folder, (None, None) without one."""
    if root is None:
        return None, None
    settings = json.loads((root / "toy_dataset.json").read_text(encoding="utf-8"))
    return settings.get("trigger"), settings.get("concept")
