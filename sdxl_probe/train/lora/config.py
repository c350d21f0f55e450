"""The trainer's typed TOML config: one dataclass per section, bounds declared on every field.

Sections mirror sd-scripts' option groups (docs/sd-scripts-compat.md): ``[model] [dataset]
[network] [optimizer] [training] [sampling] [saving] [logging]``. Names follow sd-scripts where it
has one (``network_dim`` is ``[network] dim``). An unknown key names the nearest valid one
(:func:`sdxl_probe.config.from_dict`); a value out of its declared range names the range
(:mod:`sdxl_probe.options`). ``--set section.key=value`` overrides are applied to the parsed TOML
before it is checked, so they pass the same gate.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from sdxl_probe.config import from_dict, read_toml, unknown_key_message
from sdxl_probe.errors import ConfigError
from sdxl_probe.options import Choice, Range

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Steps = Annotated[int, Range(1, 10**8)]
EveryN = Annotated[int, Range(0, 10**8)]  # 0 = never
Rate = Annotated[float, Range(0.0, 1.0, hi_open=True)]
LearningRate = Annotated[float, Range(0.0, 1.0, lo_open=True)]  # above 1 no LoRA survives AdamW
Reso = Annotated[int, Range(8, 16384)]


@dataclass
class ModelSection:
    """The base model."""

    source: str = "toy"  # a preset ("toy"), an SDXL .safetensors file or a diffusers folder
    allow_pickle: bool = False  # accept .ckpt/.pt (read with weights_only=True)


@dataclass
class DatasetSection:
    """Images, captions and their kohya settings; ``path`` may be a kohya dataset TOML."""

    path: str = ""  # kohya folder (N_name subfolders), dataset .toml, metadata.jsonl or .csv
    caption_extension: str | None = None  # None: .caption if present, else .txt (sd-scripts)
    resolution: Annotated[int, Range(8, 16384)] = 1024  # bucket area is resolution**2; 64 for the toy model
    enable_bucket: bool = False  # sd-scripts' default: every image is resized and cropped to resolution
    min_bucket_reso: Reso = 256
    max_bucket_reso: Reso = 1024
    bucket_reso_steps: Annotated[int, Range(8, 1024)] = 64  # multiple of the model's size factor (32 on SDXL)
    bucket_no_upscale: bool = False
    flip_aug: bool = False
    batch_size: Annotated[int, Range(1, 4096)] = 1
    on_bad_image: Annotated[str, Choice("error", "skip")] = "error"  # an undecodable image stops the run or is named and skipped
    validation_split: Rate = 0.0  # share of images held out for validation loss (sd-scripts PR #1899)
    validation_seed: int = 0
    reg_path: str | None = None  # kohya folder of regularization images (sd-scripts --reg_data_dir); or is_reg subsets
    prior_loss_weight: Annotated[float, Range(0.0, 1000.0)] = 1.0  # loss weight of reg images (sd-scripts' default 1)
    masked_loss: bool = False  # sd-scripts --masked_loss: weight the loss by each image's mask (masks.py)
    alpha_mask: bool = False  # sd-scripts --alpha_mask: the image's alpha / 255 is its mask (also without masked_loss)
    conditioning_data_dir: str | None = None  # masks named like the images (R / 255); needs masked_loss
    cache_latents: Annotated[str, Choice("none", "memory", "disk")] = "none"
    cache_dir: str | None = None  # disk latent cache; default RUN_DIR/latent_cache
    cache_text_encoder_outputs: bool = False  # needs the text encoders frozen
    cache_text_encoder_outputs_to_disk: bool = False  # sd-scripts' name; implies the cache; safetensors files
    text_encoder_cache_dir: str | None = None  # disk text-encoder cache; default RUN_DIR/text_cache
    cache_text_variants: Annotated[int, Range(0, 1000)] = 0  # processed captions pre-encoded per image when captions are random
    max_token_length: Annotated[int, Choice(75, 150, 225)] = 75  # sd-scripts --max_token_length (75 = unset)
    weighted_captions: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: Rate = 0.0
    caption_dropout_every_n_epochs: Annotated[int, Range(0, 10**6)] = 0
    enable_wildcard: bool = False
    keep_tokens: Annotated[int, Range(0, 1000)] = 0
    keep_tokens_separator: str | None = None
    secondary_separator: str | None = None
    caption_separator: str = ","
    shuffle_caption: bool = False
    caption_tag_dropout_rate: Rate = 0.0
    token_warmup_min: Annotated[int, Range(0, 1000)] = 1
    token_warmup_step: Annotated[float, Range(0, 10**8)] = 0


@dataclass
class NetworkSection:
    """The network (sd-scripts networks.lora defaults: dim 4, alpha 1; LoHa/LoKr as LyCORIS names them)."""

    dim: Annotated[int, Range(1, 1024)] = 4
    alpha: Annotated[float, Range(0.0, 1024.0, lo_open=True)] = 1.0  # scale = alpha / dim
    dropout: Rate = 0.0  # sd-scripts network_dropout: on the rank-r hidden down(x), in training only
    rank_dropout: Rate = 0.0  # sd-scripts network_args: per-sample mask on the rank-r hidden, x 1/(1-p); LoRA only
    module_dropout: Rate = 0.0  # sd-scripts network_args: a layer's adapter branch skipped with probability p
    target: Annotated[str, Choice("attn", "transformer", "full")] = "transformer"  # sd-scripts' default targets
    conv_dim: Annotated[int, Range(1, 1024)] = 4  # 3x3 convs, target = "full" only
    conv_alpha: Annotated[float, Range(0.0, 1024.0, lo_open=True)] = 1.0
    train_unet: bool = True
    train_text_encoder_1: bool = False
    train_text_encoder_2: bool = False
    type: str = "lora"  # lora (peft LoRA) | loha | lokr (peft's LyCORIS ports); the file is kohya/LyCORIS format
    use_rslora: bool = False  # LoRA: scale alpha/sqrt(r) (Kalajdzievski 2023); exported with alpha*sqrt(r)
    use_dora: bool = False  # LoRA: weight-decomposed (Liu et al. 2024), exported as dora_scale
    factor: Annotated[int, Range(-1, 1024)] = -1  # LoKr: LyCORIS --network_args factor (peft decompose_factor); -1 balanced
    decompose_both: bool = False  # LoKr: low-rank the left Kronecker factor too (LyCORIS/peft decompose_both)
    block_dims: tuple[int, ...] | None = None  # 23 SDXL blocks (sd-scripts); 0 = no module in that block
    block_alphas: tuple[float, ...] | None = None  # 23 values; default alpha everywhere
    conv_block_dims: tuple[int, ...] | None = None  # 3x3 convs per block, target = "full" only
    conv_block_alphas: tuple[float, ...] | None = None
    down_lr_weight: tuple[float, ...] | None = None  # 9 multipliers of unet_lr (input_blocks 0-8); 0 = no module
    mid_lr_weight: tuple[float, ...] | None = None  # 3 (middle_block 0-2)
    up_lr_weight: tuple[float, ...] | None = None  # 9 (output_blocks 0-8)
    network_weights: str | None = None  # start from this kohya file (sd-scripts --network_weights); keys must match

    def __post_init__(self) -> None:
        from sdxl_probe.train.lora.blocks import check_network_lists

        check_network_lists(self)


@dataclass
class OptimizerSection:
    """The optimizer (sd-scripts ``--optimizer_type`` names, :mod:`~sdxl_probe.train.lora.optimizers`) and diffusers' ``get_scheduler``."""

    type: str = "AdamW"  # AdamW AdamW8bit Lion Prodigy DAdaptAdam SGD SGDNesterov AdamWScheduleFree (any case)
    optimizer_args: dict[str, Any] = field(default_factory=dict)  # passed to the constructor, checked against it
    unet_lr: LearningRate = 1e-4
    text_encoder_1_lr: LearningRate = 1e-5
    text_encoder_2_lr: LearningRate = 1e-5
    weight_decay: Annotated[float | None, Range(0.0, 1.0)] = None  # None: the optimizer's default (AdamW 0.01)
    betas: tuple[float, float] | None = None  # None: the optimizer's default (AdamW (0.9, 0.999), Lion (0.9, 0.99))
    eps: Annotated[float | None, Range(0.0, 1.0, lo_open=True)] = None  # None: the optimizer's default (AdamW 1e-8)
    lr_scheduler: Annotated[
        str, Choice("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
    ] = "constant"  # sd-scripts' default
    lr_warmup_steps: Annotated[int, Range(0, 10**8)] = 0
    max_grad_norm: Annotated[float, Range(0.0, 1e6)] = 1.0  # 0 disables clipping
    scale_lr: bool = False  # diffusers' --scale_lr: every lr x batch_size x accumulation x processes

    def __post_init__(self) -> None:
        from sdxl_probe.train.lora.optimizers import canonical_name

        self.type = canonical_name(self.type)  # sd-scripts spellings are case-insensitive


@dataclass
class TrainingSection:
    """Objective and loop length."""

    max_train_steps: Steps = 1600  # optimizer steps (sd-scripts' default)
    gradient_accumulation_steps: Annotated[int, Range(1, 4096)] = 1
    seed: int = 0
    min_snr_gamma: Annotated[float, Range(0.0, 1000.0)] = 0.0  # 0 = off; 5 is the paper's value
    v_parameterization: bool = False  # predict v (v-prediction base models), else the noise
    scale_v_pred_loss_like_noise_pred: bool = False  # weight SNR / (SNR + 1)
    debiased_estimation_loss: bool = False  # weight 1 / sqrt(SNR) (Yu et al. 2024)
    loss_type: Annotated[str, Choice("l2", "l1", "huber", "smooth_l1")] = "l2"
    huber_schedule: Annotated[str, Choice("snr", "exponential", "constant")] = "snr"  # sd-scripts' default
    huber_c: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.1
    huber_scale: Annotated[float, Range(0.0, 100.0, lo_open=True)] = 1.0
    noise_offset: Annotated[float, Range(0.0, 1.0)] = 0.0
    noise_offset_random_strength: bool = False  # offset x U[0, 1) per micro-step
    adaptive_noise_scale: Annotated[float, Range(-1.0, 1.0)] = 0.0  # offset + scale x |channel mean latent|
    multires_noise_iterations: Annotated[int, Range(0, 64)] = 0  # pyramid noise levels (sd-scripts: 6-10)
    multires_noise_discount: Annotated[float, Range(0.0, 1.0)] = 0.3
    ip_noise_gamma: Annotated[float, Range(0.0, 1.0)] = 0.0  # input perturbation (Ning et al. 2023); 0.1 typical
    ip_noise_gamma_random_strength: bool = False
    lora_weight_l1: Annotated[float, Range(0.0, 1.0)] = 0.0  # penalty l1 x sum|w| on the LoRA weights
    lora_weight_l2: Annotated[float, Range(0.0, 1.0)] = 0.0  # penalty l2 x sum w^2 on the LoRA weights
    min_timestep: Annotated[int, Range(0, 1000)] = 0
    max_timestep: Annotated[int, Range(1, 1000)] = 1000
    mixed_precision: Annotated[str, Choice("no", "fp16", "bf16")] = "no"  # autocast, and the frozen weights' dtype
    gradient_checkpointing: bool = False  # recompute activations in backward: UNet and trained text encoders
    threads: Annotated[int, Range(0, 1024)] = 0  # torch intra-op threads (0: torch's default)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps, checked against torch before the model loads
    ema_decay: Annotated[float, Range(0.0, 1.0, hi_open=True)] = 0.0  # EMA of the LoRA weights (0 = off), diffusers EMAModel

    def checks(self) -> list[tuple[str, str, str]]:
        if self.min_timestep >= self.max_timestep:
            return [("min_timestep", f"not below max_timestep={self.max_timestep}", "lower min_timestep")]
        if self.adaptive_noise_scale and not self.noise_offset:
            return [("adaptive_noise_scale", "needs noise_offset > 0 (sd-scripts)", "set noise_offset, e.g. 0.05")]
        return []


@dataclass
class SamplingSection:
    """Sample images during training from an sd-scripts prompt file."""

    prompts: str | None = None  # sd-scripts prompt file (.txt: --n --w --h --d --s --l)
    every_n_steps: EveryN = 0
    sampler: Annotated[str, Choice("euler", "ddim")] = "euler"


@dataclass
class SavingSection:
    """Where and how often the run writes checkpoints."""

    output_dir: str = "runs/lora"
    output_name: str = "lora"
    save_every_n_steps: EveryN = 0  # 0 = only at the end
    save_last_k: Annotated[int, Range(1, 10**6)] = 3  # resumable states and LoRA files kept


@dataclass
class LoggingSection:
    """Metrics and validation."""

    log_every_n_steps: Annotated[int, Range(1, 10**6)] = 10
    validate_every_n_steps: EveryN = 0  # 0: at every save (when a validation split is set)
    validation_timesteps: tuple[int, ...] = (200, 400, 600, 800)  # sd-scripts: linspace(min, max, 6)[1:-1]
    progress_bar: bool = True
    tensorboard: bool = False  # alias of "tensorboard" in backends (event files in RUN_DIR/tensorboard)
    backends: Annotated[tuple[str, ...], Choice("tensorboard", "mlflow", "wandb")] = ()  # experiment trackers
    mlflow_tracking_uri: str | None = None  # None: a local store in RUN_DIR/mlruns; or a server, http://host:5000
    mlflow_experiment: str = "sdxl-probe"
    wandb_project: str = "sdxl-probe"  # wandb runs offline in RUN_DIR/wandb; `wandb sync` uploads it


@dataclass
class TrainConfig:
    """A whole run."""

    model: ModelSection = field(default_factory=ModelSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    saving: SavingSection = field(default_factory=SavingSection)
    logging: LoggingSection = field(default_factory=LoggingSection)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value); the value is TOML, else a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set training.max_train_steps=100")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``section.key=value`` in the parsed TOML ``data`` (unknown sections name the nearest)."""
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(f"--set {text!r}: the key must be section.key, e.g. optimizer.unet_lr")
        if path[0] not in sections:
            raise ConfigError(unknown_key_message(path[0], sections, "--set"))
        data.setdefault(path[0], {})[path[1]] = value
    return data


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read, override and check a trainer TOML; a kohya dataset TOML in ``[dataset] path`` fills the dataset keys."""
    data = apply_overrides(read_toml(path), list(overrides))
    cfg = from_dict(TrainConfig, data, where=str(path))
    if not cfg.dataset.path:
        raise ConfigError(f'{path}: [dataset] path is not set; set path = "folder/of/N_name/subfolders"')
    ds_path = Path(cfg.dataset.path)
    if not ds_path.is_absolute() and not ds_path.exists() and (Path(path).parent / ds_path).exists():
        cfg.dataset.path = str(Path(path).parent / ds_path)
    masks = Path(cfg.dataset.conditioning_data_dir or "")
    if masks.parts and not masks.is_absolute() and not masks.exists() and (Path(path).parent / masks).is_dir():
        cfg.dataset.conditioning_data_dir = str(Path(path).parent / masks)
    if cfg.dataset.path.endswith(".toml"):
        cfg.dataset = merge_kohya_dataset(cfg.dataset, Path(cfg.dataset.path), set_here=data.get("dataset", {}))
    return cfg


KOHYA_DATASET_KEYS = ("resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                      "bucket_no_upscale", "batch_size", "validation_split", "validation_seed", "flip_aug")


def merge_kohya_dataset(section: DatasetSection, toml_path: Path, set_here: dict[str, Any]) -> DatasetSection:
    """Take the first ``[[datasets]]`` settings (then ``[general]``) of a kohya TOML, unless set in our TOML.

    The caption settings stay per subset (the data room resolves them); one parser reads the file
    (:class:`sdxl_probe.data.kohya_toml.KohyaDatasetToml`).
    """
    from sdxl_probe.config import load_config
    from sdxl_probe.data.kohya_toml import KohyaDatasetToml

    if not toml_path.is_file():
        return section  # the data room names the missing file
    spec = load_config(KohyaDatasetToml, toml_path)
    first = spec.datasets[0] if spec.datasets else None
    values = {}
    for key in KOHYA_DATASET_KEYS:
        if key in set_here:
            continue
        for layer in (first, spec.general):
            value = getattr(layer, key, None) if layer is not None else None
            if value is not None:
                values[key] = value[0] if key == "resolution" and isinstance(value, list) else value
                break
    merged = from_dict(DatasetSection, {**dataclasses.asdict(section), **values}, where=f"{toml_path} [[datasets]]")
    return merged


def load_run_config(run_dir: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """The resolved config a run saved (``RUN_DIR/config.json``), for ``--resume`` without a TOML."""
    import json

    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e}); pass the run's TOML as CONFIG") from None
    return from_dict(TrainConfig, apply_overrides(data, list(overrides)), where=str(path))


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML text (unset values as comments), for ``--print-config``."""
    lines = []
    for section in dataclasses.fields(cfg):
        lines.append(f"[{section.name}]")
        for key, value in dataclasses.asdict(getattr(cfg, section.name)).items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            else:
                lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """One TOML value: tables (``optimizer_args``) inline, tuples as arrays, inf/nan as TOML spells them."""
    import json
    import math

    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)
