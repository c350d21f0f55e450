"""``sdxl-probe train --from-kohya ARGS.toml``: an sd-scripts ``--config_file`` as our trainer TOML.

sd-scripts' ``train_util.read_config_from_file`` flattens one level of tables, so a key may sit at
the top or inside any ``[section]``; keys are argparse names (``network_dim``, ``learning_rate``).
Every key ends in exactly one of three lists, none is dropped:

- **mapped**: the value lands in our config (``kohya key -> section.key = value``);
- **matched**: sdxl-probe always behaves as the value asks (``save_model_as = "safetensors"``);
- **unsupported**: named with the reason (a feature we lack, or a value we cannot honour).

A key with the same name as one of our fields is mapped there (checked against the field's type
and range first), so fields added to the trainer are picked up. The ``dataset_config`` TOML is read
with the data room's parser (:class:`sdxl_probe.data.kohya_toml.KohyaDatasetToml`); its keys the
trainer does not use are listed too.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_probe.config import from_dict, read_toml
from sdxl_probe.errors import ConfigError

# Renamed keys: sd-scripts name -> our section.key.
RENAMED = {
    "pretrained_model_name_or_path": "model.source",
    "network_dim": "network.dim",
    "network_alpha": "network.alpha",
    "network_dropout": "network.dropout",
    "train_batch_size": "dataset.batch_size",
    "reg_data_dir": "dataset.reg_path",
    "optimizer_type": "optimizer.type",
    "sample_prompts": "sampling.prompts",
    "sample_every_n_steps": "sampling.every_n_steps",
    "sample_sampler": "sampling.sampler",
    "log_tracker_name": "logging.wandb_project",
}
# Keys whose value sdxl-probe always honours: key -> (values that match, why).
MATCHED = {
    "save_model_as": (("safetensors",), "sdxl-probe writes .safetensors"),
    "save_precision": ((None, "float", "fp32"), "sdxl-probe saves fp32 weights"),
    "save_state": ((True, False), "sdxl-probe always writes a resumable state"),
    "clip_skip": (None, "sd-scripts ignores clip_skip for SDXL, as sdxl-probe does"),
    "sdpa": ((True, False), "diffusers' default attention is SDPA"),
    "no_half_vae": ((True, False), "the VAE runs in fp32 here"),
    "network_module": (("networks.lora",), "sdxl-probe's LoRA is sd-scripts' networks.lora"),
}
# network_args keys (sd-scripts --network_args "k=v"): name -> our network.key.
NETWORK_ARGS = {"conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "factor": "factor",
                "decompose_both": "decompose_both", "dora_wd": "use_dora", "rs_lora": "use_rslora",
                "rank_dropout": "rank_dropout", "module_dropout": "module_dropout"}  # fmt: skip
NETWORK_LISTS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                 "mid_lr_weight", "up_lr_weight")  # fmt: skip
# Dataset-TOML keys the data room parses but the trainer does not use (alpha_mask and conditioning_data_dir
# are used: the trainer reads them per subset for masked loss, as masked_loss and alpha_mask map by name).
UNUSED_DATASET_KEYS = ("color_aug", "face_crop_aug_range", "random_crop", "network_multiplier", "debug_dataset",
                       "cache_info", "custom_attributes", "resize_interpolation")  # fmt: skip
SD_SCRIPTS_MAX_TRAIN_STEPS = 1600  # its default, for a fractional lr_warmup_steps
# Why a common unsupported key is unsupported (others: "not supported by sdxl-probe").
REASONS = {
    "xformers": "attention runs through diffusers' SDPA",
    "mem_eff_attn": "attention runs through diffusers' SDPA",
    "logging_dir": "TensorBoard writes RUN_DIR/tensorboard",
    "max_train_epochs": "the trainer counts optimizer steps: set max_train_steps",
    "save_every_n_epochs": "the trainer counts optimizer steps: set save_every_n_steps",
    "sample_every_n_epochs": "the trainer counts optimizer steps: set sample_every_n_steps",
    "validate_every_n_epochs": "the trainer counts optimizer steps: set validate_every_n_steps",
    "resume": "continue a run with sdxl-probe train --resume RUN_DIR",
    "wandb_api_key": "wandb runs offline here; never put keys in a config",
}


@dataclass
class Imported:
    """An sd-scripts config translated: our TOML data and where every key went."""

    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    mapped: list[tuple[str, str, Any]] = field(default_factory=list)  # (kohya key, section.key, value)
    matched: list[tuple[str, str]] = field(default_factory=list)  # (kohya key, why)
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (kohya key, reason)
    dataset_toml: dict[str, Any] = field(default_factory=dict)  # dataset-level values the dataset TOML sets

    def keys(self) -> list[str]:
        """Every kohya key accounted for (a key may map to several of ours)."""
        return list(dict.fromkeys([k for k, _, _ in self.mapped] + [k for k, _ in self.matched + self.unsupported]))

    def set(self, kohya_key: str, target: str, value: Any) -> None:
        """Map ``kohya_key`` to ``target`` after checking ``value`` against our field; else list it unsupported."""
        problem = field_problem(target, value)
        if problem:
            self.unsupported.append((kohya_key, f"{value!r} cannot be {target}: {problem}"))
            return
        section, key = target.split(".")
        self.data.setdefault(section, {})[key] = value
        self.mapped.append((kohya_key, target, value))


def read_kohya_args(path: str | Path) -> dict[str, Any]:
    """The flat key -> value dict sd-scripts' ``read_config_from_file`` builds (tables flattened one level)."""
    flat: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def field_problem(target: str, value: Any) -> str | None:
    """Why ``value`` cannot be our ``section.key`` (unknown field, type, range), or None."""
    from sdxl_probe.train.lora.config import TrainConfig

    section, key = target.split(".")
    if section not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return "sdxl-probe has no such section"
    section_cls = type(getattr(TrainConfig(), section))
    if key not in {f.name for f in dataclasses.fields(section_cls)}:
        return "sdxl-probe has no such key"
    try:
        from_dict(section_cls, {key: value}, where=f"[{section}]")
    except ConfigError as e:
        return str(e)
    return None


def our_field(name: str) -> str | None:
    """``section.name`` when exactly one of our sections has a field ``name``."""
    from sdxl_probe.train.lora.config import TrainConfig

    cfg = TrainConfig()
    hits = [f"{s.name}.{name}" for s in dataclasses.fields(cfg)
            if name in {f.name for f in dataclasses.fields(getattr(cfg, s.name))}]  # fmt: skip
    return hits[0] if len(hits) == 1 else None


def parse_kv(items: Any) -> dict[str, Any]:
    """sd-scripts' ``--optimizer_args``/``--network_args``: ``["k=v", ...]``, values through ``ast.literal_eval``."""
    if isinstance(items, str):
        items = items.split()
    out = {}
    for item in items or []:
        if "=" not in str(item):
            raise ConfigError(f"argument {item!r} is not key=value; write it as \"key=value\"")
        key, raw = (s.strip() for s in str(item).split("=", 1))
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # sd-scripts keeps it a string too
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def import_kohya(path: str | Path) -> Imported:
    """Translate the sd-scripts config at ``path`` (and its ``dataset_config``) key by key."""
    args = read_kohya_args(path)
    out = Imported()
    _learning_rates(args, out)
    _network(args, out)
    _dataset(args, out, Path(path))
    _special(args, out)
    done = set(out.keys())
    for key, value in args.items():
        if key in done:
            continue
        if key in MATCHED:
            values, why = MATCHED[key]
            if values is None or value in values:
                out.matched.append((key, why))
            else:
                out.unsupported.append((key, f"{value!r} is not supported ({why})"))
        elif (target := RENAMED.get(key) or our_field(key)) is not None:
            out.set(key, target, value)
        else:
            off = value in (False, None, 0, "", [])
            reason = REASONS.get(key, "not supported by sdxl-probe") + (" (set off here: no effect)" if off else "")
            out.unsupported.append((key, reason))
    _dataset_toml_wins(out)
    return out


def _dataset_toml_wins(out: Imported) -> None:
    """sd-scripts resolves subset -> dataset -> general -> command line: a dataset-TOML value beats the args one."""
    for kohya_key, target, value in list(out.mapped):
        section, key = target.split(".")
        if section == "dataset" and key in out.dataset_toml and key != "path":
            out.mapped.remove((kohya_key, target, value))
            out.data["dataset"].pop(key, None)
            out.unsupported.append((kohya_key, f"{value!r} is overridden by dataset_config's {key} = "
                                               f"{out.dataset_toml[key]!r} (sd-scripts: the dataset TOML wins)"))  # fmt: skip


def _learning_rates(args: dict, out: Imported) -> None:
    """``learning_rate`` fills every group sd-scripts leaves unset; ``text_encoder_lr`` may be one value or two."""
    te = args.get("text_encoder_lr")
    if "learning_rate" in args:
        lr = args["learning_rate"]
        if "unet_lr" not in args:
            out.set("learning_rate", "optimizer.unet_lr", lr)
        if te is None:
            out.set("learning_rate", "optimizer.text_encoder_1_lr", lr)
            out.set("learning_rate", "optimizer.text_encoder_2_lr", lr)
        if "unet_lr" in args and te is not None:
            out.unsupported.append(("learning_rate", "unused: unet_lr and text_encoder_lr are both set (as sd-scripts)"))
    if "unet_lr" in args:
        out.set("unet_lr", "optimizer.unet_lr", args["unet_lr"])
    if te is not None:
        pair = list(te) if isinstance(te, (list, tuple)) else [te]
        out.set("text_encoder_lr", "optimizer.text_encoder_1_lr", pair[0])
        out.set("text_encoder_lr", "optimizer.text_encoder_2_lr", pair[-1])
    if "lr_warmup_steps" in args:  # sd-scripts: a float below 1 is a share of the steps
        w = args["lr_warmup_steps"]
        steps = args.get("max_train_steps", SD_SCRIPTS_MAX_TRAIN_STEPS)
        out.set("lr_warmup_steps", "optimizer.lr_warmup_steps", int(w * steps) if isinstance(w, float) and w < 1 else int(w))
    if "optimizer_args" in args:
        out.set("optimizer_args", "optimizer.optimizer_args", parse_kv(args["optimizer_args"]))


def _network(args: dict, out: Imported) -> None:
    """The module, its ``network_args`` and which models train (sd-scripts trains both TEs unless unet-only)."""
    nargs = parse_kv(args.get("network_args"))
    module = args.get("network_module")
    if module == "lycoris.kohya":  # LyCORIS picks the network by network_args algo (default lora)
        algo = str(nargs.get("algo", "lora")).lower()
        network_type = {"locon": "lora"}.get(algo, algo)
        out.set("network_module", "network.type", network_type)
        if "algo" in nargs:
            out.set("network_args.algo", "network.type", network_type)
            del nargs["algo"]
    for key, value in nargs.items():
        name = f"network_args.{key}"
        if key in NETWORK_ARGS:
            out.set(name, f"network.{NETWORK_ARGS[key]}", value)
            if key == "conv_dim":
                out.set(name, "network.target", "full")  # sd-scripts adds the 3x3 convs when conv_dim is given
        elif key in NETWORK_LISTS:
            items = [float(v) if "." in str(v) else int(v) for v in str(value).split(",")] if isinstance(value, str) else value
            out.set(name, f"network.{key}", items)
        elif (target := our_field(key)) is not None and target.startswith("network."):
            out.set(name, target, value)
        else:
            out.unsupported.append((name, "network argument not supported by sdxl-probe"))
    if "network_args" in args:
        out.matched.append(("network_args", "each key=value is listed as network_args.KEY"))
    unet_only = bool(args.get("network_train_unet_only", False))
    te_only = bool(args.get("network_train_text_encoder_only", False))
    source = "network_train_unet_only" if "network_train_unet_only" in args else "(absent) network_train_unet_only"
    out.set(source, "network.train_text_encoder_1", not unet_only)
    out.set(source, "network.train_text_encoder_2", not unet_only)
    if "network_train_text_encoder_only" in args:
        out.set("network_train_text_encoder_only", "network.train_unet", not te_only)


def _dataset(args: dict, out: Imported, args_path: Path) -> None:
    """``dataset_config`` (or ``train_data_dir``), resolution, latent caching, token length."""
    if "dataset_config" in args:
        ds = Path(args["dataset_config"])
        if not ds.is_absolute() and not ds.exists() and (args_path.parent / ds).exists():
            ds = args_path.parent / ds
        out.set("dataset_config", "dataset.path", str(ds))
        _audit_dataset_toml(ds, out)
        if "train_data_dir" in args:
            out.unsupported.append(("train_data_dir", "ignored: dataset_config is given (as sd-scripts)"))
    elif "train_data_dir" in args:
        out.set("train_data_dir", "dataset.path", args["train_data_dir"])
    if "resolution" in args:
        sides = [int(s) for s in str(args["resolution"]).strip("[]() ").split(",")]
        if len(set(sides)) == 1:
            out.set("resolution", "dataset.resolution", sides[0])
        else:
            out.unsupported.append(("resolution", f"{args['resolution']!r}: only square areas (one side) are supported"))
    if "cache_latents" in args or "cache_latents_to_disk" in args:
        mode = "disk" if args.get("cache_latents_to_disk") else "memory" if args.get("cache_latents") else "none"
        for key in ("cache_latents", "cache_latents_to_disk"):
            if key in args:
                out.set(key, "dataset.cache_latents", mode)
    if "max_token_length" in args:
        out.set("max_token_length", "dataset.max_token_length", args["max_token_length"] or 75)


def _audit_dataset_toml(path: Path, out: Imported) -> None:
    """List the dataset-TOML keys the trainer does not use, and dataset-level keys of a second [[datasets]]."""
    from sdxl_probe.config import load_config
    from sdxl_probe.data.kohya_toml import KohyaDatasetToml
    from sdxl_probe.train.lora.config import KOHYA_DATASET_KEYS

    if not path.is_file():
        return  # the trainer names the missing file
    spec = load_config(KohyaDatasetToml, path)
    for layer in (spec.general, *spec.datasets[:1]):
        out.dataset_toml |= {k: v for k in KOHYA_DATASET_KEYS if (v := getattr(layer, k, None)) is not None}
    layers = [("general", spec.general)] + [(f"datasets[{i}]", d) for i, d in enumerate(spec.datasets)]
    layers += [(f"datasets[{i}].subsets[{j}]", s) for i, d in enumerate(spec.datasets) for j, s in enumerate(d.subsets)]
    for where, layer in layers:
        for key in UNUSED_DATASET_KEYS:
            if getattr(layer, key, None) not in (None, False):
                out.unsupported.append((f"dataset_config {where}.{key}", "not used by the sdxl-probe trainer"))
    for i, d in enumerate(spec.datasets[1:], start=1):
        for key in KOHYA_DATASET_KEYS:
            if getattr(d, key, None) is not None and getattr(d, key) != getattr(spec.datasets[0], key, None):
                out.unsupported.append((f"dataset_config datasets[{i}].{key}",
                                        "only the first [[datasets]] sets resolution, buckets and batch size"))  # fmt: skip


def _special(args: dict, out: Imported) -> None:
    """``log_with`` -> backends; a non-LoRA ``network_module`` without LyCORIS."""
    if "log_with" in args:
        value = args["log_with"]
        backends = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"]}.get(value)
        if backends is None:
            out.unsupported.append(("log_with", f"{value!r}: use tensorboard, wandb or all"))
        else:
            out.set("log_with", "logging.backends", backends)
    module = args.get("network_module")
    if module is not None and module not in ("networks.lora", "lycoris.kohya"):
        out.unsupported.append(("network_module", f"{module!r}: sdxl-probe trains networks.lora and lycoris.kohya"))
    elif module == "networks.lora" and field_problem("network.type", "lora") is None:
        out.set("network_module", "network.type", "lora")


def mapping_lines(imported: Imported) -> list[str]:
    """The report ``--from-kohya`` prints: every key, where it went."""
    lines = [f"{k} -> {target} = {value!r}" for k, target, value in imported.mapped]
    lines += [f"{k}: matched ({why})" for k, why in imported.matched]
    lines += [f"{k}: UNSUPPORTED ({why})" for k, why in imported.unsupported]
    return lines


def kohya_train_config(imported: Imported, args_path: str | Path, overrides: list[str] = ()):
    """Our checked :class:`TrainConfig` from the translation (``--set`` overrides after it)."""
    from sdxl_probe.train.lora.config import TrainConfig, apply_overrides, merge_kohya_dataset

    data = apply_overrides({k: dict(v) for k, v in imported.data.items()}, list(overrides))
    cfg = from_dict(TrainConfig, data, where=f"{args_path} (translated)")
    if not cfg.dataset.path:
        raise ConfigError(f"{args_path}: neither dataset_config nor train_data_dir is set; add dataset_config = \"...\"")
    if cfg.dataset.path.endswith(".toml"):
        cfg.dataset = merge_kohya_dataset(cfg.dataset, Path(cfg.dataset.path), set_here=data.get("dataset", {}))
    return cfg
