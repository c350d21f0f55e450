"""``sdxl-probe train --from-kohya``: every key of an sd-scripts config is mapped, matched or named.

Oracle: the list of sd-scripts keys below, written out once from /work/shared/reference/sd-scripts-compat.md
(sections 1-6) and docs/sd-scripts-compat.md (which has no tables to parse), each given a
non-default value; a mapped value must then be found in the resulting TrainConfig.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.errors import ConfigError
from sdxl_probe.train.lora.config import load_train_config
from sdxl_probe.train.lora.kohya_import import import_kohya, kohya_train_config

# sd-scripts argparse names from the reference, grouped by its sections; value = a non-default setting.
REFERENCE_KEYS = {
    # 1. text encoding
    "max_token_length": 225, "weighted_captions": True, "clip_skip": 2,
    # 2. caption pipeline (command-line level; the dataset TOML may override per subset)
    "caption_prefix": "pre", "caption_suffix": "suf", "caption_dropout_rate": 0.1,
    "caption_dropout_every_n_epochs": 3, "enable_wildcard": True, "keep_tokens": 2, "keep_tokens_separator": "|||",
    "secondary_separator": ";;;", "caption_separator": ";", "shuffle_caption": True, "caption_tag_dropout_rate": 0.2,
    "token_warmup_min": 2, "token_warmup_step": 10.0, "cache_text_encoder_outputs": True,
    # 3. dataset conventions
    "train_data_dir": "imgs", "reg_data_dir": "reg", "caption_extension": ".txt", "prior_loss_weight": 0.5,
    "resolution": "768,768", "enable_bucket": True, "min_bucket_reso": 320, "max_bucket_reso": 1536,
    "bucket_reso_steps": 32, "bucket_no_upscale": True, "train_batch_size": 2, "validation_split": 0.25,
    "validation_seed": 7, "color_aug": True, "flip_aug": True, "face_crop_aug_range": "2.0,4.0", "random_crop": True,
    "alpha_mask": True, "masked_loss": True,
    # 4. LoRA
    "network_module": "networks.lora", "network_dim": 16, "network_alpha": 8.0, "network_dropout": 0.1,
    "network_args": ["conv_dim=8", "conv_alpha=4", "rank_dropout=0.1", "module_dropout=0.1", "loraplus_lr_ratio=4"],
    "network_train_unet_only": True, "network_weights": "start.safetensors",
    # 5. loss / training
    "noise_offset": 0.05, "adaptive_noise_scale": 0.01, "multires_noise_iterations": 6,
    "multires_noise_discount": 0.3, "ip_noise_gamma": 0.1, "min_timestep": 100, "max_timestep": 900,
    "min_snr_gamma": 5.0, "debiased_estimation_loss": True, "loss_type": "huber", "huber_c": 0.1,
    "huber_schedule": "snr", "v_parameterization": True, "learning_rate": 1e-4, "unet_lr": 2e-4,
    "text_encoder_lr": [3e-5, 4e-5], "optimizer_type": "Prodigy", "optimizer_args": ["decouple=True", "betas=0.9,0.99"],
    "lr_scheduler": "cosine", "lr_warmup_steps": 0.1, "max_train_steps": 500, "max_grad_norm": 0.5,
    "cache_latents": True, "cache_latents_to_disk": True, "validate_every_n_steps": 50,
    "validate_every_n_epochs": 1, "max_validation_steps": 4, "mixed_precision": "bf16", "seed": 42,
    "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "max_train_epochs": 10,
    # 6. sample prompts
    "sample_prompts": "prompts.txt", "sample_every_n_steps": 100, "sample_every_n_epochs": 1, "sample_at_first": True,
    "sample_sampler": "euler_a",
    # run basics every sd-scripts config carries
    "pretrained_model_name_or_path": "sdxl.safetensors", "output_dir": "out", "output_name": "mylora",
    "save_every_n_steps": 100, "save_model_as": "safetensors", "save_precision": "bf16", "xformers": True,
    "sdpa": False, "log_with": "tensorboard", "logging_dir": "logs",
}  # fmt: skip


def toml_text(values: dict) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n"


def write_args(tmp_path: Path, values: dict, *, sectioned: bool = True) -> Path:
    """An sd-scripts --config_file; sectioned like its docs ([model_arguments] ...) or flat."""
    path = tmp_path / "args.toml"
    if sectioned:
        keys = list(values)
        half = len(keys) // 2
        text = ("[model_arguments]\n" + toml_text({k: values[k] for k in keys[:half]}) +
                "[training_arguments]\n" + toml_text({k: values[k] for k in keys[half:]}))  # fmt: skip
    else:
        text = toml_text(values)
    path.write_text(text, encoding="utf-8")
    return path


def value_at(cfg, target: str):
    section, key = target.split(".")
    value = getattr(getattr(cfg, section), key)
    return list(value) if isinstance(value, tuple) else value


def test_every_reference_key_is_mapped_matched_or_named(tmp_path):
    """Oracle: REFERENCE_KEYS (from the reference doc); mapped values are read back from the TrainConfig."""
    imported = import_kohya(write_args(tmp_path, REFERENCE_KEYS))
    mapped = {k for k, _, _ in imported.mapped}
    matched, unsupported = {k for k, _ in imported.matched}, {k for k, _ in imported.unsupported}
    for key in REFERENCE_KEYS:
        assert (key in mapped) + (key in matched) + (key in unsupported) == 1, key
    cfg = kohya_train_config(imported, tmp_path / "args.toml")
    for kohya_key, target, value in imported.mapped:
        assert value_at(cfg, target) == value, (kohya_key, target)
    # the translations that are not a plain copy, by sd-scripts' rules
    assert (cfg.optimizer.unet_lr, cfg.optimizer.text_encoder_1_lr, cfg.optimizer.text_encoder_2_lr) == (2e-4, 3e-5, 4e-5)
    assert cfg.optimizer.lr_warmup_steps == 50  # a float below 1 is a share of max_train_steps (0.1 * 500)
    assert cfg.optimizer.type == "Prodigy" and cfg.optimizer.optimizer_args == {"decouple": True, "betas": [0.9, 0.99]}
    assert cfg.dataset.resolution == 768 and cfg.dataset.cache_latents == "disk" and cfg.dataset.max_token_length == 225
    assert cfg.network.target == "full" and cfg.network.conv_dim == 8  # conv_dim in network_args adds the 3x3 convs
    assert (cfg.network.rank_dropout, cfg.network.module_dropout) == (0.1, 0.1)  # network_args, sd-scripts names
    assert "network_args.rank_dropout" not in dict(imported.unsupported)
    assert not cfg.network.train_text_encoder_1 and not cfg.network.train_text_encoder_2
    assert cfg.logging.backends == ("tensorboard",)
    assert cfg.dataset.masked_loss and cfg.dataset.alpha_mask  # sd-scripts' --masked_loss / --alpha_mask
    reasons = dict(imported.unsupported)
    assert "learning_rate" in reasons  # unet_lr and text_encoder_lr both set: sd-scripts ignores it too
    assert "euler_a" in reasons["sample_sampler"] and "bf16" in reasons["save_precision"]
    assert "network_args.loraplus_lr_ratio" in reasons


def test_flat_and_sectioned_files_translate_alike(tmp_path):
    """Oracle: sd-scripts' read_config_from_file flattens one level of tables."""
    a = import_kohya(write_args(tmp_path, REFERENCE_KEYS, sectioned=True))
    b = import_kohya(write_args(tmp_path, REFERENCE_KEYS, sectioned=False))
    assert a.data == b.data and a.mapped == b.mapped and sorted(a.unsupported) == sorted(b.unsupported)


def test_the_dataset_toml_is_read_and_wins_over_the_args(tmp_path):
    """Oracle: sd-scripts' lookup order subset -> dataset -> general -> command line; unused subset keys named."""
    (tmp_path / "ds" / "5_zkw").mkdir(parents=True)
    (tmp_path / "ds.toml").write_text('[general]\nbatch_size = 3\n[[datasets]]\nresolution = 512\n'
                                      '[[datasets.subsets]]\nimage_dir = "ds/5_zkw"\ncolor_aug = true\n'
                                      'alpha_mask = true\nconditioning_data_dir = "masks"\n')  # fmt: skip
    path = write_args(tmp_path, {"dataset_config": "ds.toml", "train_batch_size": 2, "resolution": 1024,
                                 "network_train_unet_only": False})  # fmt: skip
    imported = import_kohya(path)
    cfg = kohya_train_config(imported, path)
    assert cfg.dataset.path == str(tmp_path / "ds.toml")
    assert (cfg.dataset.batch_size, cfg.dataset.resolution) == (3, 512)
    reasons = dict(imported.unsupported)
    assert "dataset TOML wins" in reasons["train_batch_size"] and "dataset TOML wins" in reasons["resolution"]
    assert "dataset_config datasets[0].subsets[0].color_aug" in reasons
    assert not any(k.endswith(("alpha_mask", "conditioning_data_dir")) for k in reasons)  # read per subset: masks
    assert cfg.network.train_text_encoder_1 and cfg.network.train_text_encoder_2  # sd-scripts trains both TEs


def test_cli_prints_the_mapping_and_writes_a_config_that_loads(tmp_path, monkeypatch):
    """Oracle: the written TOML loads back through load_train_config to the same config."""
    monkeypatch.chdir(tmp_path)
    path = write_args(tmp_path, REFERENCE_KEYS)
    out = tmp_path / "ours.toml"
    res = CliRunner().invoke(app, ["train", "--from-kohya", str(path), "--write-config", str(out), "--print-config"])
    assert res.exit_code == 0, res.output
    assert "# network_dim -> network.dim = 16" in res.output
    assert "# xformers: UNSUPPORTED" in res.output
    cfg = kohya_train_config(import_kohya(path), path)
    again = load_train_config(out)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


@pytest.mark.parametrize("args,match", [
    ({"optimizer_args": ["decouple"]}, "not key=value"),
    ({"network_dim": 8}, "neither dataset_config nor train_data_dir"),
])  # fmt: skip
def test_bad_kohya_input_is_one_line(args, match, tmp_path):
    """Oracle: the message (the CLI prints a ConfigError as one line and exits 2)."""
    res = CliRunner().invoke(app, ["train", "--from-kohya", str(write_args(tmp_path, args, sectioned=False))])
    assert isinstance(res.exception, ConfigError) and match in str(res.exception) and "\n" not in str(res.exception)
