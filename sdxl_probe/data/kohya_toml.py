"""The kohya dataset TOML (``--dataset_config``): ``[general]``, ``[[datasets]]``, ``[[datasets.subsets]]``.

Every key sd-scripts accepts is declared here (an unknown key is a ConfigError naming the nearest
valid one); settings resolve subset -> dataset -> general -> command line -> default, as sd-scripts'
``ConfigSanitizer`` and ``generate_dataset_group_by_blueprint`` do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sdxl_probe.data.folders import guess_caption_extension
from sdxl_probe.data.records import IssueLog, Subset
from sdxl_probe.errors import DatasetError

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
    cond = _resolve(path, sub.conditioning_data_dir) if sub.conditioning_data_dir else None
    masks = {"alpha_mask": value("alpha_mask"), "conditioning_data_dir": cond}  # masked loss
    if sub.metadata_file:
        meta = _resolve(path, sub.metadata_file)
        image_dir = _resolve(path, sub.image_dir) if sub.image_dir else meta.parent
        kind = "jsonl" if meta.suffix == ".jsonl" else "csv" if meta.suffix == ".csv" else "metadata_json"
        return Subset(
            meta.name, image_dir, kind, "", repeats, sub.class_tokens, bool(sub.is_reg), meta, options,
            **masks,
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
        image_dir.name, image_dir, "folder", ext, repeats, sub.class_tokens, bool(sub.is_reg), None, options,
        **masks,
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


