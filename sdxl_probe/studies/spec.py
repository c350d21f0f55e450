"""The study spec: a typed TOML naming a question, the training runs that answer it, and their metrics.

A study trains one LoRA per (variant, seed) under matched conditions. Every variant is the same
trainer config (``[study] base_config``, then ``[train]``) with its own overrides, written in the
trainer's own sections (``[variants.NAME.dataset] caption_extension = ".sentence.txt"``), so a
variant can change anything the trainer can: the caption file, truncation (``max_token_length``),
shuffle and ``keep_tokens``, dropout rates, a trigger prefix (``caption_prefix``), weighted
captions, network and optimizer settings. ``[variants.NAME.captions]`` derives new caption files
where the trainer has no knob (several captions per image, Somepalli et al. 2023's random-token
addition). An unknown key anywhere names the nearest valid one (:func:`sdxl_probe.config.from_dict`).

Layout::

    [study]        question, base_config, output_dir, control, seeds, metrics, alpha
    [toy_dataset]  the toy-world dataset the runner writes (n = 0: [train] dataset.path is used)
    [train]        trainer overrides for every variant, by section ([train.training] max_train_steps)
    [metrics]      how the metrics are taken (prompts, samples, sampler steps, ...)
    [smoke]        the CI smoke mode (--smoke): a few steps on a tiny dataset
    [variants.NAME] one table per variant, trainer sections plus an optional [captions]
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from sdxl_probe.config import from_dict, read_toml, unknown_key_message
from sdxl_probe.errors import ConfigError
from sdxl_probe.options import Choice, Length, Range, SafeName

METRICS = ("val_loss", "caption_adherence", "diversity", "trigger_attention", "memorization", "clip_score")
# +1: a higher value is better; -1: lower is better (the verdict's wording).
DIRECTION = {"val_loss": -1, "caption_adherence": 1, "diversity": 1, "trigger_attention": 1, "memorization": -1,
             "clip_score": 1}  # fmt: skip
TOY_ONLY = ("caption_adherence", "trigger_attention")  # need the toy world's judge or masks
RUN_NAME = "lora"  # every run's output_name: RUN_DIR/lora.safetensors marks a finished run


@dataclass
class StudySection:
    """What the study asks and which runs answer it."""

    question: Annotated[str, Length(1, 500)] = "?"
    base_config: str = ""  # trainer TOML, relative to the spec file; "" = the trainer's defaults
    output_dir: str = ""  # "" = runs/studies/<spec file stem>
    control: str = ""  # the variant the others are compared with; "" = the first
    seeds: Annotated[list[int], Range(0, 2**31 - 1)] = field(default_factory=lambda: [0, 1, 2])
    metrics: Annotated[list[str], Choice(*METRICS)] = field(default_factory=lambda: ["val_loss"])
    alpha: Annotated[float, Range(0.0, 0.5, lo_open=True)] = 0.05  # family-wise error rate, Holm-corrected


@dataclass
class ToyDatasetSection:
    """A toy-world dataset written by the runner into OUTPUT_DIR/data (``sdxl-probe toy dataset``)."""

    n: Annotated[int, Range(0, 100_000)] = 0  # 0: no toy dataset; [train.dataset] path names the data
    seed: int = 0
    style: Annotated[str, Choice("tags", "sentence", "mixed", "long")] = "tags"  # the .txt captions
    concept: str | None = None  # a new shape or colour every image shows (sdxl_probe.toy.dataset.CONCEPTS)
    trigger: str | None = None  # the word naming it (or prefixed to every caption without a concept)
    details: bool = False  # captions also give sizes and positions


@dataclass
class MetricsSection:
    """How each run is measured after training (the same prompts and seeds for every run)."""

    prompts: Annotated[int, Range(1, 10_000)] = 8  # toy-world prompts generated per run
    samples: Annotated[int, Range(1, 1000)] = 4  # seeds per prompt (diversity needs 2 or more)
    steps: Annotated[int, Range(1, 1000)] = 20  # sampler steps
    guidance: Annotated[float, Range(1.0, 30.0)] = 5.0
    prompt_style: Annotated[str, Choice("tags", "sentence")] = "tags"
    prompt_seed: int = 1234  # scenes of the prompts (not a training seed)
    attention_images: Annotated[int, Range(1, 1000)] = 8  # training images inspected for the trigger's map
    attention_timestep: Annotated[int, Range(0, 999)] = 400
    memorization_seeds: Annotated[int, Range(1, 1000)] = 4
    memorization_steps: Annotated[int, Range(1, 1000)] = 20
    clip_weights: str | None = None  # open_clip checkpoint for clip_score on real SDXL
    clip_arch: str = "ViT-B-32"


@dataclass
class SmokeSection:
    """``--smoke``: the same study in a few seconds per run, for CI (figures mean nothing)."""

    steps: Annotated[int, Range(1, 1000)] = 2  # training steps per run
    seeds: Annotated[int, Range(1, 100)] = 1  # the first N seeds
    images: Annotated[int, Range(2, 1000)] = 4  # toy images
    prompts: Annotated[int, Range(1, 100)] = 2
    samples: Annotated[int, Range(1, 100)] = 2
    sampler_steps: Annotated[int, Range(1, 100)] = 1
    attention_images: Annotated[int, Range(1, 100)] = 2


@dataclass
class CaptionSource:
    """Caption files a variant trains on that the runner derives from the dataset (toy datasets only).

    ``varied``: each image's file holds its tags, sentence and long captions, one per line, and
    the trainer draws one line per step (sd-scripts' wildcard lines, ``enable_wildcard``).
    ``random_tokens``: ``lines`` copies of the caption, each with ``random_tokens`` random
    vocabulary words added (Somepalli et al. 2023, "random token addition"), drawn per step likewise.
    ``padded``: the tags after neutral filler tags, ``min_tokens`` CLIP tokens in all, so what the
    image shows lies past the first 75-token chunk (the case ``max_token_length`` exists for).
    """

    make: Annotated[str, Choice("none", "varied", "random_tokens", "padded")] = "none"
    random_tokens: Annotated[int, Range(1, 75)] = 2
    lines: Annotated[int, Range(1, 1000)] = 8
    min_tokens: Annotated[int, Range(1, 1000)] = 140
    seed: int = 0


@dataclass
class StudySpec:
    """A parsed, checked study (see the module docstring)."""

    path: Path
    study: StudySection
    toy_dataset: ToyDatasetSection
    metrics: MetricsSection
    smoke: SmokeSection
    train: dict[str, Any]
    variants: dict[str, dict[str, Any]]  # name -> trainer sections (captions removed)
    captions: dict[str, CaptionSource]  # name -> derived caption source

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def control(self) -> str:
        return self.study.control or next(iter(self.variants))

    def output_dir(self, smoke: bool = False) -> Path:
        out = Path(self.study.output_dir or f"runs/studies/{self.name}")
        return out.with_name(out.name + "-smoke") if smoke else out

    def seeds(self, smoke: bool = False) -> list[int]:
        return self.study.seeds[: self.smoke.seeds] if smoke else list(self.study.seeds)

    def measure_settings(self, smoke: bool = False) -> MetricsSection:
        if not smoke:
            return self.metrics
        s = self.smoke
        return dataclasses.replace(self.metrics, prompts=s.prompts, samples=s.samples, steps=s.sampler_steps,
                                   attention_images=min(self.metrics.attention_images, s.attention_images),
                                   memorization_seeds=s.samples, memorization_steps=s.sampler_steps)  # fmt: skip


SECTIONS = {"study": StudySection, "toy_dataset": ToyDatasetSection, "metrics": MetricsSection,
            "smoke": SmokeSection, "train": dict, "variants": dict}  # fmt: skip


def load_spec(path: str | Path, output_dir: str | Path | None = None) -> StudySpec:
    """Read and check a study TOML; every variant's trainer config is built once here, so errors come first.

    Args:
        output_dir: replaces ``[study] output_dir`` (``study run --out``).
    """
    path = Path(path)
    data = read_toml(path)
    if output_dir is not None:
        data.setdefault("study", {})["output_dir"] = str(output_dir)
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(unknown_key_message(key, SECTIONS, str(path)))
    parts = {k: from_dict(cls, data.get(k, {}), where=f"{path} [{k}]") for k, cls in SECTIONS.items()
             if cls is not dict}  # fmt: skip
    variants, captions = _variants(path, data.get("variants", {}))
    spec = StudySpec(path, parts["study"], parts["toy_dataset"], parts["metrics"], parts["smoke"],
                     _table(data.get("train", {}), f"{path} [train]"), variants, captions)  # fmt: skip
    _check(spec)
    data = Path("DATA") if spec.toy_dataset.n > 0 else None
    for name in spec.variants:
        for smoke in (False, True):
            train_config(spec, name, spec.study.seeds[0], Path("RUN_DIR"), smoke=smoke, dataset=data)
    return spec


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of trainer sections, e.g. [train.training]")
    return value


def _variants(path: Path, table: Any) -> tuple[dict[str, dict[str, Any]], dict[str, CaptionSource]]:
    table = _table(table, f"{path} [variants]")
    if len(table) < 2:
        raise ConfigError(f"{path}: a study needs at least two [variants.NAME] tables (a control and one change)")
    variants, captions = {}, {}
    for name, body in table.items():
        where = f"{path} [variants.{name}]"
        if (problem := SafeName(60).problem(name)) is not None:
            raise ConfigError(f"{where}: variant name {problem}; use a plain name such as 'tags'")
        body = dict(_table(body, where))
        captions[name] = from_dict(CaptionSource, body.pop("captions", {}), where=f"{where}.captions")
        variants[name] = body
    return variants, captions


def _check(spec: StudySpec) -> None:
    """Cross-section checks, each naming the key and the fix."""
    where = f"{spec.path} [study]"
    if spec.study.control and spec.study.control not in spec.variants:
        raise ConfigError(unknown_key_message(spec.study.control, spec.variants, f"{where} control:"))
    if len(set(spec.study.seeds)) != len(spec.study.seeds) or not spec.study.seeds:
        raise ConfigError(f"{where} seeds = {spec.study.seeds}: give distinct seeds, e.g. seeds = [0, 1, 2]")
    if len(set(spec.study.metrics)) != len(spec.study.metrics) or not spec.study.metrics:
        raise ConfigError(f"{where} metrics = {spec.study.metrics}: give each metric once, e.g. ['val_loss']")
    toy = spec.toy_dataset.n > 0
    for metric in TOY_ONLY:
        if metric in spec.study.metrics and not toy:
            raise ConfigError(f"{where} metrics: '{metric}' is scored by the toy world; set [toy_dataset] n, "
                              "or use clip_score on real SDXL")  # fmt: skip
    if "diversity" in spec.study.metrics and min(spec.metrics.samples, spec.smoke.samples) < 2:
        raise ConfigError(f"{spec.path} [metrics] samples / [smoke] samples: 'diversity' compares the seeds of a "
                          "prompt; set both to 2 or more")  # fmt: skip
    if "trigger_attention" in spec.study.metrics and not spec.toy_dataset.trigger:
        raise ConfigError(f"{where} metrics: 'trigger_attention' needs a trigger word; set [toy_dataset] trigger")
    if "clip_score" in spec.study.metrics and not spec.metrics.clip_weights:
        raise ConfigError(f"{where} metrics: 'clip_score' needs an open_clip weights file; "
                          "set [metrics] clip_weights = \"path/to/open_clip_model.safetensors\"")  # fmt: skip
    for name, source in spec.captions.items():
        if source.make != "none" and not toy:
            raise ConfigError(f"{spec.path} [variants.{name}.captions] make = '{source.make}': derived captions "
                              "are written for toy datasets only; set [toy_dataset] n")  # fmt: skip
    if toy and spec.toy_dataset.concept is not None:
        from sdxl_probe.toy.dataset import CONCEPTS

        if spec.toy_dataset.concept not in CONCEPTS:
            raise ConfigError(f"{spec.path} [toy_dataset] concept = {spec.toy_dataset.concept!r}: not a toy concept; "
                              f"use one of {', '.join(CONCEPTS)}")  # fmt: skip


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on top, table by table (a copy; neither input changes)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def base_config_data(spec: StudySpec) -> dict[str, Any]:
    """The base trainer TOML as a dict (its dataset path made relative to the working directory)."""
    if not spec.study.base_config:
        return {}
    base_path = spec.path.parent / spec.study.base_config
    data = read_toml(base_path)
    path = data.get("dataset", {}).get("path")
    if path and not Path(path).is_absolute() and (base_path.parent / path).exists():
        data["dataset"]["path"] = str(base_path.parent / path)
    return data


def caption_extension(spec: StudySpec, variant: str) -> str | None:
    """The caption extension the variant trains on (a derived source writes its own)."""
    if spec.captions[variant].make != "none":
        return f".{variant}.txt"
    return merge(spec.train, spec.variants[variant]).get("dataset", {}).get("caption_extension")


def train_config(spec: StudySpec, variant: str, seed: int, run_dir: Path, *, smoke: bool, dataset: Path | None):
    """The trainer config of one run: base, then [train], then the variant, then the run's own keys.

    Args:
        dataset: the toy dataset folder the runner wrote (None: the config's own ``[dataset] path``).
    """
    from sdxl_probe.train.lora.config import TrainConfig

    data = merge(merge(base_config_data(spec), spec.train), spec.variants[variant])
    own: dict[str, dict[str, Any]] = {
        "training": {"seed": seed},
        "saving": {"output_dir": str(run_dir), "output_name": RUN_NAME},
        "logging": {"progress_bar": False},
    }
    if dataset is not None:
        own["dataset"] = {"path": str(dataset)}
    if spec.captions[variant].make != "none":
        own["dataset"] = {**own.get("dataset", {}), "caption_extension": caption_extension(spec, variant),
                          "enable_wildcard": True}  # fmt: skip
    if smoke:
        own["training"]["max_train_steps"] = spec.smoke.steps
        own["saving"]["save_every_n_steps"] = 1
    cfg = from_dict(TrainConfig, merge(data, own), where=f"{spec.path} [variants.{variant}] (with [train])")
    if not cfg.dataset.path:
        raise ConfigError(f"{spec.path}: no dataset; set [toy_dataset] n, or [train.dataset] path")
    if "val_loss" in spec.study.metrics and cfg.dataset.validation_split <= 0:
        raise ConfigError(f"{spec.path}: metric 'val_loss' needs held-out images; "
                          "set [train.dataset] validation_split = 0.25")  # fmt: skip
    return cfg
