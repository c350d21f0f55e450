"""Experiment trackers users already run: TensorBoard, MLflow and wandb, behind one small interface.

``[logging] backends = ["tensorboard", "mlflow", "wandb"]`` (``tensorboard = true`` is an alias of
the first). Each backend receives the resolved config as parameters, every metrics record the
run writes to ``metrics.jsonl`` (same step, same values), the sample images, and the final LoRA
files. ``metrics.jsonl`` stays the record the report reads; trackers are copies for the tools
users already watch.

- MLflow (``mlflow-skinny``): a local folder store in ``RUN_DIR/mlruns`` by default (MLflow 3
  keeps that store behind ``MLFLOW_ALLOW_FILE_STORE=true``, which is set for it), or
  ``[logging] mlflow_tracking_uri`` (a server, ``http://host:5000``). Read it back with
  ``MlflowClient(tracking_uri=...)`` or ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui
  --backend-store-uri RUN_DIR/mlruns``.
- wandb: offline mode in ``RUN_DIR/wandb`` (``wandb sync`` uploads it later).

A resumed run continues the same MLflow run and wandb run (their ids are kept in
``RUN_DIR/trackers.json``). A missing package is a one-line error before any weight loads.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ConfigError, ProbeError
from sdxl_probe.io import write_json

IDS_FILE = "trackers.json"
# backend -> (module to import, the fix when it is missing)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install 'sdxl-probe[mlflow]' (mlflow-skinny)"),
    "wandb": ("wandb", "pip install 'sdxl-probe[wandb]'"),
}
MLFLOW_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit on params


def backends_of(backends: tuple[str, ...], tensorboard: bool) -> list[str]:
    """The backends in order, ``tensorboard = true`` adding "tensorboard" (once)."""
    out = list(dict.fromkeys(backends))
    if tensorboard and "tensorboard" not in out:
        out.insert(0, "tensorboard")
    return out


def check_backends(backends: list[str]) -> None:
    """Raise a one-line ConfigError for the first backend whose package is not installed."""
    for name in backends:
        module, fix = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f'[logging] backends includes "{name}" but the {module} package is not installed; '
                              f'{fix}, or remove "{name}" from [logging] backends')  # fmt: skip


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """``{"optimizer.unet_lr": "0.0001", ...}`` from the resolved config (sections of keys)."""
    out = {}
    for section, values in config.items():
        for key, value in (values.items() if isinstance(values, dict) else [("", values)]):
            out[f"{section}.{key}".rstrip(".")] = json.dumps(value) if not isinstance(value, str) else value
    return out


def numeric(record: dict) -> dict[str, float]:
    """The metrics of a record: every number but the step (None, e.g. no validation yet, is left out)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip


class TensorBoardTracker:
    """Event files in ``RUN_DIR/tensorboard`` (``train/<metric>`` scalars, sample images)."""

    def __init__(self, run_dir: Path) -> None:
        from sdxl_probe.train.lora.checkpoints import tensorboard_writer

        self.writer = tensorboard_writer(True, run_dir)

    def log_metrics(self, record: dict) -> None:
        from sdxl_probe.train.lora.checkpoints import log_tensorboard

        log_tensorboard(self.writer, record)

    def log_images(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for i, path in enumerate(paths):
            self.writer.add_image(f"samples/{i:03d}", np.asarray(Image.open(path).convert("RGB")), step,
                                  dataformats="HWC")  # fmt: skip
        self.writer.flush()

    def log_files(self, paths: list[Path]) -> None:
        """TensorBoard has no file store: the LoRA files stay in RUN_DIR."""

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """One MLflow run: params, metrics by step, samples under ``samples/step-N``, LoRA files under ``lora``."""

    def __init__(self, run_dir: Path, *, tracking_uri: str | None, experiment: str, run_name: str,
                 run_id: str | None, params: dict[str, str]) -> None:  # fmt: skip
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if tracking_uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the folder store is opt-in
            tracking_uri = (run_dir / "mlruns").resolve().as_uri()
        self.tracking_uri = tracking_uri
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            if run_id is None:
                run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
                items = [Param(k, v[:6000]) for k, v in params.items()]
                for i in range(0, len(items), MLFLOW_PARAMS_PER_BATCH):
                    self.client.log_batch(run_id, params=items[i : i + MLFLOW_PARAMS_PER_BATCH])
            else:
                self.client.update_run(run_id, status="RUNNING")
        except Exception as e:  # mlflow raises its own and requests' errors
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ProbeError(f"[logging] MLflow store {tracking_uri}: {msg}; check mlflow_tracking_uri") from None
        self.run_id = run_id

    def log_metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record["step"]) for k, v in numeric(record).items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"samples/step-{step:08d}")

    def log_files(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="lora")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """One offline wandb run in ``RUN_DIR/wandb`` (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads it)."""

    def __init__(self, run_dir: Path, *, project: str, run_name: str, run_id: str | None, params: dict) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), mode="offline", config=params,
                              id=run_id, resume="allow" if run_id else None)  # fmt: skip
        self.run_id = self.run.id

    def log_metrics(self, record: dict) -> None:
        self.run.log(numeric(record), step=record["step"])

    def log_images(self, paths: list[Path], step: int) -> None:
        self.run.log({"samples": [self.wandb.Image(str(p)) for p in paths]}, step=step)

    def log_files(self, paths: list[Path]) -> None:
        artifact = self.wandb.Artifact(f"{self.run.name or 'lora'}-lora".replace("/", "-"), type="model")
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


class Trackers:
    """The run's open trackers; each call goes to every one of them."""

    def __init__(self, trackers: dict[str, Any]) -> None:
        self.trackers = trackers

    def log_metrics(self, record: dict) -> None:
        for t in self.trackers.values():
            t.log_metrics(record)

    def log_images(self, paths: list[Path], step: int) -> None:
        for t in self.trackers.values():
            t.log_images(paths, step)

    def log_files(self, paths: list[Path]) -> None:
        for t in self.trackers.values():
            t.log_files([p for p in paths if p.is_file()])

    def close(self, status: str) -> None:
        for t in self.trackers.values():
            t.close(status)


@contextmanager
def open_trackers(logging, run_dir: Path, *, params: dict[str, Any], run_name: str,
                  resume: bool) -> Iterator[Trackers]:  # fmt: skip
    """Open the ``[logging]`` backends for the run; close them FINISHED, KILLED (stopped) or FAILED.

    Args:
        logging: the ``[logging]`` section (``backends``, ``tensorboard``, ``mlflow_*``, ``wandb_project``).
        run_dir: the run folder (local stores live in it).
        params: the resolved config (``section -> key -> value``).
        run_name: the run's name in the tracker (``[saving] output_name``).
        resume: continue the tracker runs whose ids ``RUN_DIR/trackers.json`` holds.
    """
    from sdxl_probe.train.state import TrainingStopped

    names = backends_of(tuple(logging.backends), logging.tensorboard)
    check_backends(names)
    ids = _read_ids(run_dir) if resume else {}
    flat = flat_params(params)
    opened: dict[str, Any] = {}
    if "tensorboard" in names:
        opened["tensorboard"] = TensorBoardTracker(run_dir)
    if "mlflow" in names:
        opened["mlflow"] = MlflowTracker(run_dir, tracking_uri=logging.mlflow_tracking_uri,
                                         experiment=logging.mlflow_experiment, run_name=run_name,
                                         run_id=ids.get("mlflow"), params=flat)  # fmt: skip
    if "wandb" in names:
        opened["wandb"] = WandbTracker(run_dir, project=logging.wandb_project, run_name=run_name,
                                       run_id=ids.get("wandb"), params=params)  # fmt: skip
    run_ids = {k: t.run_id for k, t in opened.items() if hasattr(t, "run_id")}
    if run_ids:
        write_json(run_dir / IDS_FILE, run_ids)
    trackers = Trackers(opened)
    try:
        yield trackers
    except TrainingStopped:
        trackers.close("KILLED")
        raise
    except BaseException:
        trackers.close("FAILED")
        raise
    trackers.close("FINISHED")


def _read_ids(run_dir: Path) -> dict[str, str]:
    try:
        return json.loads((run_dir / IDS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
