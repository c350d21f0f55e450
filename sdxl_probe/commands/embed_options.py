"""Input gathering and settings resolution for ``sdxl-probe embed`` (no torch)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from sdxl_probe.config import from_dict, read_toml, unknown_key_message
from sdxl_probe.errors import ConfigError, ProbeError
from sdxl_probe.probes.embed.core import EmbedSettings
from sdxl_probe.probes.embed.inputs import (
    CaptionPair,
    parse_pair,
    read_csv,
    read_folder,
    read_lists,
    toy_pairs,
)


def gather_pairs(
    pair: Sequence[str],
    csv: Path | None,
    tags_list: Path | None,
    sentences_list: Path | None,
    dataset: Path | None,
    ext_a: str,
    ext_b: str,
    toy: int = 0,
    *,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[list[CaptionPair], str]:
    """Read the caption pairs from exactly one kind of input; return them and a label for the report."""
    sources = (
        ("--pair", pair),
        ("--csv", csv),
        ("--tags-list", tags_list),
        ("--dataset", dataset),
        ("--toy-pairs", toy),
    )
    given = [name for name, value in sources if value]
    if sentences_list and not tags_list:
        given.append("--sentences-list")
    if len(given) != 1:
        found = ", ".join(given) if given else "none"
        raise ProbeError(
            "give exactly one input: --pair (repeatable), --csv, --tags-list with --sentences-list, --dataset "
            "or --toy-pairs N "
            f"(found: {found})"
        )
    if toy:
        return toy_pairs(toy, seed), f"{toy} toy-world pairs (seed {seed})"
    if pair:
        return [parse_pair(p) for p in pair], f"{len(pair)} pairs from --pair"
    if csv:
        return read_csv(csv), str(csv)
    if tags_list:
        if not sentences_list:
            raise ProbeError(f"--tags-list {tags_list} needs --sentences-list with the matching sentences")
        return read_lists(tags_list, sentences_list), f"{tags_list} + {sentences_list}"
    pairs, unpaired = read_folder(dataset, ext_a, ext_b)
    if unpaired:
        log(
            f"note: {len(unpaired)} '{ext_a}' files have no '{ext_b}' partner and are skipped (first: {unpaired[0]})"
        )
    return pairs, str(dataset)


def resolve_settings(
    config: Path | None, *, seed: int | None = None, shuffles: int | None = None
) -> EmbedSettings:
    """Settings from the ``[embed]`` table of a TOML file (defaults without one), then CLI overrides."""
    settings = EmbedSettings()
    if config is not None:
        data = read_toml(config)
        for key in data:
            if key != "embed":
                raise ConfigError(unknown_key_message(key, ["embed"], str(config)))
        settings = from_dict(EmbedSettings, data.get("embed", {}), where=f"{config} [embed]")
    overrides = {k: v for k, v in (("seed", seed), ("shuffles", shuffles)) if v is not None}
    try:
        return dataclasses.replace(settings, **overrides)
    except ValueError as e:
        raise ConfigError(f"embed settings: {e}") from None
