"""Data-parallel training under ``accelerate launch`` (2 CPU processes, gloo): equal weights, split data,
averaged gradients, one set of outputs.

Oracles:

* **Gradient mean**: one process with ``gradient_accumulation_steps = 2`` draws keys (0, 1), (2, 3), ...
  (the keys the two processes draw at steps 0, 1, ...) and steps on ``(g_a + g_b) / 2`` by construction
  (``backward(loss / 2)`` twice). Data parallelism must give the same weights after every step (1e-6),
  and must differ from one process that trained on process 0's batches alone (negative control).
* **Data split**: ``parallel.draw_key`` written out: process r at step s draws key ``2 s + r``.
* **Outputs**: counted on disk; the learning rate of a linear schedule at step 1 of 2 is written out
  (lr x (1 - 1/2), x the effective batch with ``scale_lr``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdxl_probe.errors import ConfigError
from sdxl_probe.toy.dataset import write_dataset

TESTS = Path(__file__).parent
STEPS = 3
# --multi_gpu with [training] device = "cpu": 2 processes on gloo (accelerate's --cpu starts one without MPI)
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", "0"]  # fmt: skip


def driver_config(ds: Path, out: Path, accumulation: int) -> dict:
    """SGD (the update is lr x the gradient), a linear schedule (a per-process double step would show),
    clipping, LoRA dropout and a trained text encoder (its gradients are averaged too)."""
    return {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "shuffle_caption": True, "flip_aug": True, "cache_latents": "memory"},
        "network": {"dim": 4, "alpha": 2.0, "dropout": 0.1, "train_text_encoder_1": True},
        "optimizer": {"type": "SGD", "unet_lr": 0.5, "text_encoder_1_lr": 0.5, "lr_scheduler": "linear",
                      "max_grad_norm": 1.0},
        "training": {"max_train_steps": STEPS, "seed": 3, "device": "cpu", "gradient_accumulation_steps": accumulation},
        "saving": {"output_dir": str(out), "output_name": "d"},
        "logging": {"progress_bar": False},
    }  # fmt: skip


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    done = subprocess.run([*LAUNCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "ds"
    write_dataset(root, n=4, seed=2, size=32, trigger="zkw")  # batch 2: each step's two batches are disjoint
    return root


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_hold_equal_weights_on_split_data_with_averaged_gradients(ds, tmp_path):
    from ddp_driver import run_steps

    (tmp_path / "cfg.json").write_text(json.dumps(driver_config(ds, tmp_path / "ddp", accumulation=1)))
    driver = [str(TESTS / "ddp_driver.py"), str(tmp_path / "cfg.json"), str(tmp_path / "ddp"), str(STEPS)]
    launch(driver, tmp_path)
    ranks = [[load_file(str(tmp_path / "ddp" / f"weights-rank{r}-step{s}.safetensors")) for s in range(STEPS)]
             for r in (0, 1)]  # fmt: skip
    infos = [json.loads((tmp_path / "ddp" / f"draws-rank{r}.json").read_text()) for r in (0, 1)]

    oracle = run_steps(driver_config(ds, tmp_path / "oracle", accumulation=2), tmp_path / "oracle", STEPS)
    alone = run_steps(driver_config(ds, tmp_path / "alone", accumulation=1), tmp_path / "alone", 1)
    oracle_draws = json.loads((tmp_path / "oracle" / "draws-rank0.json").read_text())["draws"]

    for s in range(STEPS):
        for k in ranks[0][s]:
            assert torch.equal(ranks[0][s][k], ranks[1][s][k]), (s, k)  # identical weights after each step
        assert max_diff(ranks[0][s], oracle[s]) < 1e-6, s  # the mean of the two processes' gradients
    assert max_diff(ranks[0][0], alone[0]) > 1e-4  # not process 0's gradient alone
    assert max_diff(ranks[0][0], {k: load_file(str(tmp_path / "oracle" / "weights-rank0-step0.safetensors"))[k]
                                  for k in ranks[0][0]}) < 1e-6  # fmt: skip
    assert [d[0] for d in infos[0]["draws"]] == [2 * s for s in range(STEPS)]  # key = micro-step x 2 + rank
    assert [d[0] for d in infos[1]["draws"]] == [2 * s + 1 for s in range(STEPS)]
    for s in range(STEPS):
        a, b = infos[0]["draws"][s][1], infos[1]["draws"][s][1]
        assert not set(a) & set(b)  # each step: disjoint images
        assert oracle_draws[2 * s : 2 * s + 2] == [infos[0]["draws"][s], infos[1]["draws"][s]]
    linear = [0.5 * (STEPS - s - 1) / STEPS for s in range(STEPS)]  # after each step; stepped once per step
    assert infos[0]["lrs"] == infos[1]["lrs"] == pytest.approx(linear)
    line = "2 process(es) x batch 2 x accumulation 1 = effective batch 4"
    assert any(line in s for s in infos[0]["log"])


TOML = """
[model]
source = "toy"
[dataset]
path = "{ds}"
caption_extension = ".txt"
resolution = 32
batch_size = 2
cache_latents = "disk"
[network]
dim = 4
alpha = 2.0
[optimizer]
unet_lr = 1e-3
lr_scheduler = "linear"
scale_lr = true
[training]
max_train_steps = 2
seed = 1
device = "cpu"
threads = 1
[saving]
output_dir = "{out}"
output_name = "k"
save_every_n_steps = 1
[logging]
progress_bar = false
log_every_n_steps = 1
"""


@pytest.mark.slow
def test_accelerate_launch_cli_writes_one_set_of_outputs(ds, tmp_path):
    (tmp_path / "t.toml").write_text(TOML.format(ds=ds, out=tmp_path / "run"), encoding="utf-8")
    done = launch(["-m", "sdxl_probe", "train", str(tmp_path / "t.toml")], tmp_path)
    out = done.stdout
    line = "data parallel: 2 process(es) x batch 2 x accumulation 1 = effective batch 4; learning rates unet 0.004 " \
           "(= 0.001 x 4), scaled by [optimizer] scale_lr"  # fmt: skip
    assert out.count(line) == 1, out[-3000:]
    assert out.count("wrote ") == 1 and out.count("step 2/2") == 1
    metrics = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # one line per step, not one per process
    assert metrics[0]["lr"] == pytest.approx(1e-3 * 4 / 2)  # scale_lr x 4; linear, 1 of 2 steps
    run = tmp_path / "run"
    loras = ["k-step00000001.safetensors", "k-step00000002.safetensors", "k.safetensors"]
    assert sorted(p.name for p in run.glob("k*.safetensors")) == loras
    states = ["step-00000001.safetensors", "step-00000002.safetensors"]
    assert sorted(p.name for p in (run / "state").glob("*.safetensors")) == states
    assert not list(run.parent.glob(".run.lock"))  # the main process's lock, released
    assert len(list((run / "latent_cache").iterdir())) == 4  # main encoded them; no temp files left


def test_deepspeed_and_fsdp_launches_are_refused(monkeypatch):
    from sdxl_probe.train.lora.precision import make_accelerator

    for var, flag in (("ACCELERATE_USE_DEEPSPEED", "--use_deepspeed"), ("ACCELERATE_USE_FSDP", "--use_fsdp")):
        monkeypatch.setenv(var, "true")
        with pytest.raises(ConfigError, match=flag):
            make_accelerator(torch.device("cpu"), "no")
        monkeypatch.delenv(var)
    make_accelerator(torch.device("cpu"), "no")  # without them: accepted


def test_gradient_mean_counts_a_missing_gradient_as_zero(tmp_path):
    """Oracle: DDP's documented rule written out: the mean over processes, a locally unused parameter's
    gradient counted as zero, and a parameter unused everywhere left without a gradient."""
    import torch.multiprocessing as mp
    from ddp_driver import average_worker

    mp.start_processes(
        average_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork"
    )
    for rank in (0, 1):
        grads = load_file(str(tmp_path / f"grads-rank{rank}.safetensors"))
        assert sorted(grads) == ["g0", "g1"]  # parameter 2: no gradient anywhere, still None
        assert torch.equal(grads["g0"], torch.tensor([1.0, 2.0, 3.0]) * (1 + 2) / 2)
        assert torch.equal(grads["g1"], torch.tensor([[4.0, 8.0], [-2.0, 6.0]]) / 2)


def test_resume_on_another_process_count_warns(tiny_components, ds, tmp_path):
    """Oracle: the ``num_processes`` the trainer saved (1), edited to 2, against this run's 1 process."""
    import copy

    from safetensors import safe_open
    from safetensors.torch import save_file

    from sdxl_probe.config import from_dict
    from sdxl_probe.train.lora import checkpoints
    from sdxl_probe.train.lora.config import TrainConfig
    from sdxl_probe.train.lora.loop import setup

    cfg = from_dict(TrainConfig, driver_config(ds, tmp_path / "run", accumulation=1))
    run = setup(cfg, tmp_path / "run", resume=False, components=copy.deepcopy(tiny_components), log=print)
    checkpoints.save(run, 1, 1)
    state = tmp_path / "run" / "state" / "step-00000001.safetensors"
    with safe_open(str(state), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    assert meta["info"]["num_processes"] == 1
    meta["info"]["num_processes"] = 2
    save_file(load_file(str(state)), str(state), metadata={"state": json.dumps(meta)})
    lines: list[str] = []
    setup(cfg, tmp_path / "run", resume=True, components=copy.deepcopy(tiny_components), log=lines.append)
    assert sum("was trained on 2 process(es), resumed on 1" in s for s in lines) == 1


def test_a_stop_every_process_raises_is_printed_by_rank_0_only(monkeypatch, capsys):
    """Oracle: torchrun's RANK; a stop or divergence (raised by every process) prints once, other errors on each."""
    from sdxl_probe.cli import ProbeApp
    from sdxl_probe.train.state import TrainingStopped

    def app_raising(error: type) -> ProbeApp:
        app = ProbeApp(pretty_exceptions_enable=False)

        @app.command()
        def go() -> None:
            raise error("stopped at step 3")

        return app

    for error, rank, printed in [(TrainingStopped, "0", True), (TrainingStopped, "1", False), (ConfigError, "1", True)]:
        app = app_raising(error)
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as e:
            app(args=[], prog_name="sdxl-probe")
        assert e.value.code == 2
        assert ("error: stopped at step 3" in capsys.readouterr().err) == printed, (error, rank)
