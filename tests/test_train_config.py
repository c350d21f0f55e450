"""The trainer's config: every shipped config parses, bad keys and values are one-line errors naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_probe.errors import ConfigError, ProbeError
from sdxl_probe.train.lora.config import TrainConfig, apply_overrides, load_train_config, to_toml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("train_*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "run.toml"
    path.write_text('[dataset]\npath = "data"\n' + text, encoding="utf-8")
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainConfig)
    assert cfg.dataset.path


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"train_toy.toml", "train_sdxl_1024.toml"}


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'unet_lrr'; did you mean 'unet_lr'"):
        load_train_config(write(tmp_path, "[optimizer]\nunet_lrr = 1e-4\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'netwrk'; did you mean 'network'"):
        load_train_config(write(tmp_path, "[netwrk]\ndim = 4\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"network.dim: expected int"):
        load_train_config(write(tmp_path, '[network]\ndim = "four"\n'))


@pytest.mark.parametrize("text, key", [
    ("[optimizer]\nunet_lr = 5.0\n", "unet_lr"),
    ("[optimizer]\nunet_lr = 0.0\n", "unet_lr"),
    ("[network]\ndim = 0\n", "dim"),
    ("[network]\nalpha = -1.0\n", "alpha"),
    ("[dataset]\nmax_token_length = 100\n", "max_token_length"),
])  # fmt: skip
def test_out_of_range_values_name_the_range(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("[dataset]\n", '[dataset]\npath = "x"\n') if "[dataset]" in text
                    else '[dataset]\npath = "x"\n' + text, encoding="utf-8")  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_train_config(path)
    message = str(e.value)
    assert key in message and "allowed" in message and "\n" not in message


def test_overrides_pass_the_same_gate(tmp_path):
    path = write(tmp_path, "")
    cfg = load_train_config(path, ["training.max_train_steps=7", "saving.output_name=abc", "network.alpha=2"])
    assert (cfg.training.max_train_steps, cfg.saving.output_name, cfg.network.alpha) == (7, "abc", 2.0)
    with pytest.raises(ConfigError, match="did you mean 'training'"):
        apply_overrides({}, ["trainin.max_train_steps=3"])
    with pytest.raises(ConfigError, match="max_train_steps"):
        load_train_config(path, ["training.max_train_steps=0"])


def test_kohya_dataset_toml_fills_dataset_keys(tmp_path):
    (tmp_path / "img").mkdir()
    kohya = tmp_path / "ds.toml"
    kohya.write_text('[general]\nflip_aug = true\n[[datasets]]\nresolution = 512\nbatch_size = 3\nenable_bucket = true\n'
                     '[[datasets.subsets]]\nimage_dir = "img"\n', encoding="utf-8")  # fmt: skip
    path = tmp_path / "run.toml"
    path.write_text(f'[dataset]\npath = "{kohya}"\nbatch_size = 2\n', encoding="utf-8")
    cfg = load_train_config(path)
    assert (cfg.dataset.resolution, cfg.dataset.enable_bucket, cfg.dataset.flip_aug) == (512, True, True)
    assert cfg.dataset.batch_size == 2  # set in our TOML: ours wins


def test_print_config_round_trips(tmp_path):
    import tomllib

    cfg = load_train_config(write(tmp_path, "[network]\ndim = 16\n"))
    text = to_toml(cfg)
    again = tomllib.loads(text)
    assert again["network"]["dim"] == 16 and again["dataset"]["path"] == cfg.dataset.path


def test_cli_print_config_and_clean_errors(tmp_path):
    from typer.testing import CliRunner

    from sdxl_probe.cli import app

    path = write(tmp_path, "")
    result = CliRunner().invoke(app, ["train", str(path), "--print-config", "--set", "network.dim=12"])
    assert result.exit_code == 0, result.output
    assert "dim = 12" in result.output
    bad = write(tmp_path, "[optimizer]\nunet_lrr = 1e-4\n")
    result = CliRunner().invoke(app, ["train", str(bad)])
    assert isinstance(result.exception, ProbeError)  # ProbeApp prints it as one line and exits 2
    assert "did you mean 'unet_lr'" in str(result.exception) and "\n" not in str(result.exception)


def test_a_requested_logger_that_is_missing_fails_loudly(tmp_path):
    import importlib.util

    from sdxl_probe.train.lora.checkpoints import log_tensorboard, tensorboard_writer

    assert tensorboard_writer(False, tmp_path) is None
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ProbeError, match="tensorboard package is not installed"):
            tensorboard_writer(True, tmp_path)
    else:
        writer = tensorboard_writer(True, tmp_path)
        log_tensorboard(writer, {"step": 1, "loss": 0.5, "lr": 1e-4})
        writer.close()
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_missing_dataset_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the second config keeps the default, relative output_dir
    from typer.testing import CliRunner

    from sdxl_probe.cli import app

    path = tmp_path / "run.toml"
    path.write_text(f'[dataset]\npath = "{tmp_path / "nowhere"}"\nresolution = 64\n[saving]\noutput_dir = "{tmp_path / "r"}"\n',
                    encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(path)])
    assert isinstance(result.exception, ProbeError), result.output
    assert "dataset not found" in str(result.exception) and "\n" not in str(result.exception)
    bad_size = tmp_path / "size.toml"
    bad_size.write_text(f'[dataset]\npath = "{tmp_path}"\nresolution = 72\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(bad_size)])
    assert isinstance(result.exception, ProbeError) and "not a multiple of 16" in str(result.exception)


def test_cli_device_without_cuda_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    """Oracle: the devices torch reports here; an unavailable device is refused by the shared policy."""
    import torch
    from typer.testing import CliRunner

    from sdxl_probe.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    path = tmp_path / "run.toml"
    path.write_text(f'[dataset]\npath = "{tmp_path}"\nresolution = 64\n[training]\ndevice = "cuda"\n'
                    f'[saving]\noutput_dir = "{tmp_path / "r"}"\n', encoding="utf-8")  # fmt: skip
    result = CliRunner().invoke(app, ["train", str(path)])
    assert isinstance(result.exception, ProbeError), result.output
    message = str(result.exception)
    assert "[training] device" in message and "CUDA is not available" in message and "cpu" in message
    assert "\n" not in message
