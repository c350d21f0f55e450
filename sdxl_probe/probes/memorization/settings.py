"""The memorization probe's options, each with its declared bounds (checked before any model loads)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any

from sdxl_probe.errors import ConfigError
from sdxl_probe.options import Choice, Range, gate

SEED0 = 1000  # seed of the first generation of every caption; seed k is SEED0 + k for every model


@dataclass(frozen=True)
class MemorizationSettings:
    """How the probe samples and scores.

    Attributes:
        seeds: N generations per caption (Carlini uses 500 per prompt; 8 resolves a LoRA's copies).
        steps: sampler steps.
        checkpoints: "all" checkpoints of the run, or the "last".
        cfg: guidance scale (the trainer's sample default; Wen's norm needs cfg != 1).
        sampler: "euler" (SDXL's default) or "ddim".
        first_steps: steps over which Wen's norm and Ren's attention are averaged (the reference: 0..9).
        batch_size: images per sampler batch.
        sensitivity_seeds: seeds per caption of the caption-sensitivity probes (last checkpoint only).
        significance_captions: training captions whose token significance is computed (last checkpoint).
        class_caption: the class-only caption of the sensitivity probe (Somepalli's "An image of {class}").
        features_model: open_clip architecture of the copy cosine's image encoder ("" = VAE latents).
        features_weights: its state dict, a .safetensors file ("" = VAE latents); pickles are refused.
    """

    seeds: Annotated[int, Range(2, 512)] = 8
    steps: Annotated[int, Range(1, 1000)] = 20
    checkpoints: Annotated[str, Choice("all", "last")] = "all"
    cfg: Annotated[float, Range(1.0, 30.0)] = 5.0
    sampler: Annotated[str, Choice("euler", "ddim")] = "euler"
    first_steps: Annotated[int, Range(1, 1000)] = 10
    batch_size: Annotated[int, Range(1, 1024)] = 16
    sensitivity_seeds: Annotated[int, Range(0, 512)] = 4
    significance_captions: Annotated[int, Range(0, 10_000)] = 8
    class_caption: str = "an image"
    features_model: str = ""
    features_weights: str = ""

    def checks(self) -> list[tuple[str, str, str]]:
        """The feature-encoder pair: both or neither, a .safetensors file that exists, a known architecture."""
        if not self.features_model and not self.features_weights:
            return []  # VAE latents; nothing to import
        from sdxl_probe.probes.memorization.features import weights_problem

        found = weights_problem(self.features_model, self.features_weights)
        return [found] if found else []

    @classmethod
    def checked(cls, **values: Any) -> MemorizationSettings:
        """Build from keyword values; an unknown name or a value out of bounds is one ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown memorization option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return gate(cls, **values)

    def seed_list(self, n: int | None = None) -> list[int]:
        """The first ``n`` (default all) generation seeds."""
        return [SEED0 + k for k in range(self.seeds if n is None else min(n, self.seeds))]
