"""``[logging] backends``: toy runs logged to a local MLflow store and an offline wandb run read back as
metrics.jsonl says.

Oracles: ``metrics.jsonl`` (the run's own record) against MLflow's own client
(``MlflowClient.get_metric_history``, ``get_run``, ``list_artifacts``) and against the records of the
offline ``run-*.wandb`` file, read with an independent reader of its framing (wandb's
``sdk/internal/datastore.py`` before 0.19: LevelDB log records in 32 KiB blocks after a 7-byte
``:W&B`` header) and wandb's own protobuf ``Record``; the one-line message of a missing tracker package.
"""

from __future__ import annotations

import copy
import json
import re
import struct
from pathlib import Path

import pytest

from sdxl_probe.config import from_dict
from sdxl_probe.errors import ConfigError
from sdxl_probe.toy.dataset import write_dataset
from sdxl_probe.train.lora import trackers
from sdxl_probe.train.lora.config import TrainConfig
from sdxl_probe.train.lora.loop import train


def config(tmp_path: Path, **logging) -> TrainConfig:
    ds = tmp_path / "ds"
    if not ds.exists():
        write_dataset(ds, n=4, seed=2, size=32, trigger="zkw")
    (tmp_path / "prompts.txt").write_text("zkw red circle --d 11 --s 2 --l 1 --w 32 --h 32\n", encoding="utf-8")
    return from_dict(TrainConfig, {
        "dataset": {"path": str(ds), "caption_extension": ".txt", "resolution": 32, "batch_size": 2,
                    "cache_latents": "memory", "validation_split": 0.25},
        "training": {"max_train_steps": 3, "seed": 1},
        "sampling": {"prompts": str(tmp_path / "prompts.txt"), "every_n_steps": 3},
        "saving": {"output_dir": str(tmp_path / "run"), "output_name": "r", "save_every_n_steps": 2},
        "logging": {"progress_bar": False, **logging},
    })  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tiny_components, tmp_path_factory) -> Path:
    """One 3-step toy run logged to MLflow (default store RUN_DIR/mlruns) and offline wandb at once."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tmp_path = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        mp.delenv("WANDB_MODE", raising=False)
        mp.setenv("WANDB_SILENT", "true")
        cfg = config(tmp_path, backends=["mlflow", "wandb"], mlflow_experiment="toy", wandb_project="toy")
        train(cfg, tmp_path / "run", components=copy.deepcopy(tiny_components), log=lambda s: None)
    return tmp_path


@pytest.mark.slow
def test_mlflow_store_holds_the_runs_metrics_params_samples_and_lora(tracked):
    """Oracle: metrics.jsonl, read back through MlflowClient from the default store RUN_DIR/mlruns."""
    from mlflow.tracking import MlflowClient

    tmp_path = tracked
    records = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    for key in ("loss", "lr", "grad_norm", "val_loss"):
        expected = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert got == expected and expected, key
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["optimizer.type"] == "AdamW" and run.data.params["training.max_train_steps"] == "3"
    assert [a.path for a in client.list_artifacts(run_id, "lora")] == ["lora/r.safetensors"]
    assert [a.path for a in client.list_artifacts(run_id, "samples/step-00000003")] == ["samples/step-00000003/000.png"]


def wandb_records(path: Path) -> list:
    """Every protobuf ``Record`` of an offline wandb run file (see the module docstring for the framing)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero padding
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
    return out


@pytest.mark.slow
def test_offline_wandb_run_holds_the_runs_metrics_samples_and_lora(tracked):
    """Oracle: metrics.jsonl against the history records of RUN_DIR/wandb/offline-run-*/run-*.wandb."""
    tmp_path = tracked
    records = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    run_id = json.loads((tmp_path / "run" / "trackers.json").read_text())["wandb"]
    (path,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    got = wandb_records(path)
    (run,) = [r.run for r in got if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.display_name, run.project) == (run_id, "r", "toy")
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in got if r.WhichOneof("record_type") == "history"]  # fmt: skip
    for key in ("loss", "lr", "grad_norm", "val_loss"):
        expected = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        assert [(h["_step"], h[key]) for h in history if key in h] == expected and expected, key
    assert [(h["_step"], h["samples/count"]) for h in history if "samples/count" in h] == [(3, 1)]
    assert list(path.parent.glob("files/media/images/samples_3_*.png"))
    (artifact,) = [r.artifact for r in got if r.WhichOneof("record_type") == "artifact"]
    assert [m.path for m in artifact.manifest.contents] == ["r.safetensors"]
    assert [r.exit.exit_code for r in got if r.WhichOneof("record_type") == "exit"] == [0]


@pytest.mark.parametrize("backend,extra", [("wandb", "sdxl-probe[wandb]"), ("mlflow", "sdxl-probe[mlflow]")])
def test_a_missing_tracker_package_is_one_line_before_any_weight_loads(backend, extra, tmp_path, monkeypatch):
    """Oracle: the message names the extra; the model source does not exist, so a later check would name it."""
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda n: None if n == backend else real(n))
    cfg = config(tmp_path, backends=[backend])
    cfg.model.source = str(tmp_path / "none.safetensors")
    with pytest.raises(ConfigError, match=re.escape(f"the {backend} package is not installed; pip install '{extra}'")) as e:
        train(cfg, tmp_path / "run", log=lambda s: None)
    assert "\n" not in str(e.value)


def test_tensorboard_true_is_an_alias_of_the_backend():
    """Oracle: the old key and the new list name the same backend, once."""
    assert trackers.backends_of((), True) == ["tensorboard"]
    assert trackers.backends_of(("mlflow", "tensorboard"), True) == ["mlflow", "tensorboard"]
    assert trackers.backends_of(("mlflow",), False) == ["mlflow"]
    with pytest.raises(ConfigError, match="not a valid choice"):
        from_dict(TrainConfig, {"logging": {"backends": ["mlfow"]}})
