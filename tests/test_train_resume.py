"""Resume is bit-identical to an uninterrupted run on the CPU (after SIGTERM and after ``kill -9``);
a NaN loss stops with a diagnostic and leaves the last good checkpoint intact.

Oracle: the uninterrupted run itself, compared tensor for tensor with ``torch.equal`` (no tolerance).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdxl_probe.config import from_dict
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora import checkpoints
from sdxl_probe.train.lora import loop as loop_module
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import TrainingDiverged, train
from sdxl_probe.train.state import TrainingStopped

QUIET = {"progress_bar": False, "log_every_n_steps": 1000}


def tiny_config(ds: Path, out: Path, steps: int = 6, **sections) -> TrainConfig:
    """Every source of randomness on: caption shuffle and tag dropout, flips, LoRA dropout, noise offset."""
    data = {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "flip_aug": True, "shuffle_caption": True, "caption_tag_dropout_rate": 0.2,
                    "cache_latents": "memory"},
        "network": {"dim": 4, "alpha": 2.0, "dropout": 0.1, "train_text_encoder_1": True},
        "optimizer": {"unet_lr": 1e-3, "text_encoder_1_lr": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 2},
        "training": {"max_train_steps": steps, "seed": 3, "gradient_accumulation_steps": 2, "min_snr_gamma": 5.0,
                     "noise_offset": 0.05},
        "saving": {"output_dir": str(out), "output_name": "r", "save_every_n_steps": 2, "save_last_k": 2},
        "logging": QUIET,
    }  # fmt: skip
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return from_dict(TrainConfig, data)


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "ds"
    write_dataset(root, n=5, seed=2, size=32, trigger="zkw")
    return root


def assert_same_files(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def losses(run_dir: Path) -> list[float]:
    return [json.loads(s)["loss"] for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigterm_is_bit_identical(tiny_components, tiny_ds, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    full = train(tiny_config(tiny_ds, tmp_path / "a"), tmp_path / "a", components=copy.deepcopy(tiny_components),
                 log=lambda s: None)  # fmt: skip
    real_append = checkpoints.append_metrics

    def stop_after_3(run_dir, record):  # SIGTERM arrives during step 3: the loop saves and stops
        real_append(run_dir, record)
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoints, "append_metrics", stop_after_3)
    cfg = tiny_config(tiny_ds, tmp_path / "b")
    with pytest.raises(TrainingStopped, match="stopped at step 3"):
        train(cfg, tmp_path / "b", components=copy.deepcopy(tiny_components), log=lambda s: None)
    monkeypatch.setattr(checkpoints, "append_metrics", real_append)
    assert [p.name for p in checkpoints.state_files(tmp_path / "b")] == ["step-00000002.safetensors",
                                                                          "step-00000003.safetensors"]
    resumed = train(cfg, tmp_path / "b", resume=True, components=copy.deepcopy(tiny_components), log=lambda s: None)
    assert_same_files(full, resumed)
    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 6
    start = load_file(str(tmp_path / "a" / "r-step00000004.safetensors"))  # last K = 2 kept
    assert any(not torch.equal(v, load_file(str(full))[k]) for k, v in start.items())  # training moved the LoRA


def test_a_fresh_run_refuses_a_used_folder(tiny_components, tiny_ds, tmp_path):
    from sdxl_probe.errors import ProbeError

    cfg = tiny_config(tiny_ds, tmp_path / "a", steps=2)
    train(cfg, tmp_path / "a", components=copy.deepcopy(tiny_components), log=lambda s: None)
    with pytest.raises(ProbeError, match="--resume"):
        train(cfg, tmp_path / "a", components=copy.deepcopy(tiny_components), log=lambda s: None)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_components, tiny_ds, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = loop_module.predict_noise

    def nan_from_step_4(*args, **kwargs):  # one call per micro-step; 2 micro-steps per step
        calls["n"] += 1
        out = real(*args, **kwargs)
        return out * float("nan") if calls["n"] > 6 else out

    monkeypatch.setattr(loop_module, "predict_noise", nan_from_step_4)
    cfg = tiny_config(tiny_ds, tmp_path / "n", steps=6)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, tmp_path / "n", components=copy.deepcopy(tiny_components), log=lambda s: None)
    message = str(e.value)
    assert "loss is nan at step 4" in message and "last good checkpoint (step 2)" in message and "\n" not in message
    assert [p.name for p in checkpoints.state_files(tmp_path / "n")] == ["step-00000002.safetensors"]
    good = load_file(str(tmp_path / "n" / "r-step00000002.safetensors"))
    assert all(torch.isfinite(v).all() for v in good.values())
    assert not (tmp_path / "n" / "r.safetensors").exists()


TOY_TOML = """
[model]
source = "toy"
[dataset]
path = "{ds}"
caption_extension = ".txt"
resolution = 64
batch_size = 2
flip_aug = true
shuffle_caption = true
[network]
dim = 4
alpha = 2.0
[optimizer]
unet_lr = 1e-3
lr_scheduler = "linear"
[training]
max_train_steps = 10
seed = 5
threads = 1
[saving]
output_dir = "{out}"
output_name = "k"
save_every_n_steps = 2
[logging]
progress_bar = false
"""


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "sdxl_probe.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_resume_after_kill_9_is_bit_identical(tmp_path):
    ds = tmp_path / "ds"
    write_dataset(ds, n=4, seed=0, concept="heart", trigger="zkw")
    for name in ("ref", "killed"):
        (tmp_path / f"{name}.toml").write_text(TOY_TOML.format(ds=ds, out=tmp_path / name), encoding="utf-8")
    ref = cli(str(tmp_path / "ref.toml"))
    killed = cli(str(tmp_path / "killed.toml"))
    state = tmp_path / "killed" / "state" / "step-00000004.safetensors"
    deadline = time.time() + 300
    while not state.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, killed.communicate()[0][-2000:]
    killed.send_signal(signal.SIGKILL)  # between saves: no handler runs
    killed.wait()
    assert ref.wait(timeout=600) == 0, ref.communicate()[0][-2000:]
    done = checkpoints.state_files(tmp_path / "killed")
    assert done and done[-1].name < "step-00000010.safetensors"
    resumed = cli("--resume", str(tmp_path / "killed"))
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-2000:]
    assert "resumed" in output
    assert_same_files(tmp_path / "ref" / "k.safetensors", tmp_path / "killed" / "k.safetensors")
    assert losses(tmp_path / "ref") == losses(tmp_path / "killed")
