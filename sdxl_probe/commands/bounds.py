"""The declared type and range of every command's options (checked by :func:`sdxl_probe.options.gate`).

One dataclass per command; its field names are the option names (``n_prompts`` is ``--n-prompts``)
and its defaults are the command's defaults. A command calls ``gate(Options, ...)`` first, before
it reads a file or loads a model. No torch here: ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from sdxl_probe.options import Choice, Length, Range, SafeName

Seed = Annotated[int, Range(0, 2**32 - 1)]  # numpy and torch generators both accept 32-bit seeds
OptSeed = Annotated[int | None, Range(0, 2**32 - 1)]
Steps = Annotated[int, Range(1, 1000)]  # at most one sampler step per DDPM training timestep
Guidance = Annotated[float, Range(0.0, 100.0)]  # 1 = no guidance; SDXL is used at 5-9
Pixels = Annotated[int | None, Range(8, 8192)]  # None: the model's native size
TokenLength = Annotated[int | None, Choice(75, 150, 225)]  # sd-scripts' --max_token_length values
Timesteps = Annotated[tuple[int, ...], Range(0, 999)]  # DDPM timesteps of SDXL's 1000-step schedule
Heads = Annotated[tuple[int, ...] | None, Range(0, 1023)]
Factors = Annotated[tuple[int, ...] | None, Range(1, 64)]
Separator = Annotated[str | None, Length(1, 16)]
Extension = Annotated[str, Length(1, 32)]
LoraWeights = Annotated[tuple[float, ...], Range(-10.0, 10.0)]  # each :weight of --lora FILE[:weight]; 1 = as trained
MAX_DATASET_BYTES = 16 * 2**30  # toy dataset pixels (images + masks, uncompressed)


@dataclass
class TokensOptions:
    max_token_length: TokenLength = None
    keep_tokens: Annotated[int, Range(0, 10_000)] = 0
    seed: Seed = 0
    caption_separator: Separator = ","
    caption_tag_dropout_rate: Annotated[float, Range(0.0, 1.0)] = 0.0


@dataclass
class AuditOptions:
    name: Annotated[str | None, SafeName()] = None
    max_token_length: TokenLength = None
    keep_tokens: Annotated[int | None, Range(0, 10_000)] = None
    caption_separator: Separator = None
    seed: Seed = 0
    samples: Annotated[int, Range(1, 100_000)] = 64
    caption_extension: Annotated[str | None, Length(1, 32)] = None


@dataclass
class EmbedOptions:
    seed: OptSeed = None
    shuffles: Annotated[int | None, Range(1, 1000)] = None
    toy_pairs: Annotated[int, Range(0, 100_000)] = 0
    ext_a: Extension = ".tags.txt"
    ext_b: Extension = ".txt"


@dataclass
class SamplerOptions:
    """The sampler's options, shared by ``generate`` and ``attention``."""

    seed: Seed = 0
    steps: Steps = 25
    guidance: Guidance = 5.0
    width: Pixels = None
    height: Pixels = None
    max_token_length: TokenLength = None
    lora_weights: LoraWeights = ()


@dataclass
class GenerateOptions(SamplerOptions):
    sampler: Annotated[str, Choice("euler", "ddim")] = "euler"
    n: Annotated[int, Range(1, 1000)] = 1  # images per prompt, one sampler batch


@dataclass
class AttentionOptions(SamplerOptions):
    """``attention generate`` and ``attention inspect`` (inspect leaves the sampler fields at their defaults)."""

    timesteps: Timesteps = (300, 500)
    heads: Heads = None
    resolutions: Factors = None
    caption_ext: Extension = ".txt"


@dataclass
class ToyDatasetOptions:
    n: Annotated[int, Range(1, 1_000_000)] = 100
    seed: Seed = 0
    repeats: Annotated[int, Range(1, 10_000)] = 1
    size: Annotated[int, Range(16, 2048)] = 64  # the toy world's shapes need 16 px to stay recognisable

    def checks(self) -> list[tuple[str, str, str]]:
        """Refuse a dataset whose pixels alone would not fit in memory or on a usual disk."""
        need = self.n * self.size * self.size * 4  # RGB image + label mask, uncompressed bytes
        if need <= MAX_DATASET_BYTES:
            return []
        return [("size", f"{self.n} images of {self.size}x{self.size} px need about {need / 2**30:.0f} GiB "
                         f"(the limit is {MAX_DATASET_BYTES / 2**30:.0f} GiB)",
                 "lower --n or --size (the toy model trains at --size 64)")]  # fmt: skip


@dataclass
class ToyEvaluateOptions:
    n_prompts: Annotated[int, Range(1, 100_000)] = 212
    seed: Seed = 0
    steps: Steps = 20
    guidance: Guidance = 5.0
    n_attention: Annotated[int, Range(0, 100_000)] = 64


@dataclass
class ToyPretrainOptions:
    seed: Seed = 0
