"""Resumable training state of the toy recipe: one safetensors file per phase, written atomically.

The tensors (model weights, any optimizer's state tensors, EMA shadow weights) go in the safetensors body;
the JSON-able rest (step, seed, optimizer hyper-parameters, LR-scheduler state) goes in its
metadata, so the state can never be half old and half new. A human-readable copy of that
JSON is written next to it. No pickle anywhere.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import write_json, write_with


@dataclass
class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it after each step, saves and stops."""

    requested: bool = False


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Turn Ctrl-C / ``kill`` into a flag for the duration of a training phase; restore handlers after."""
    flag = StopFlag()

    def _handler(signum: int, frame: Any) -> None:
        flag.requested = True

    old = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class TrainingStopped(ProbeError):
    """Training was interrupted; the state was saved and ``--resume`` continues it."""

    every_process = True  # data parallel: each process raises it at the same step; rank 0 alone prints it


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Any optimizer's ``state_dict``: tensors to the body; scalars (Prodigy's int ``step``) and groups to JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{i}.{k}"] = v.contiguous()
            elif v is None or isinstance(v, (bool, int, float, str)):
                scalars.setdefault(str(i), {})[k] = v
            else:
                raise ProbeError(f"optimizer state {k!r} of type {type(v).__name__} cannot be saved without pickle")
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_state(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: Any | None,
    info: dict[str, Any],
) -> None:
    """Write weights, optimizer, LR scheduler, EMA and ``info`` (step, seed...) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    meta = {"info": info, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict()}
    if ema is not None:
        tensors.update({f"ema.{i}": p.contiguous() for i, p in enumerate(ema.shadow_params)})
        meta["ema"] = {"optimization_step": ema.optimization_step, "decay": ema.decay}
    text = json.dumps(meta, default=float)
    write_with(path, lambda tmp: save_file(tensors, str(tmp), metadata={"state": text}))
    write_json(path.with_suffix(".json"), meta)


def load_state(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: Any | None,
) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote into the given (freshly built) objects; returns ``info``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["optimizer"].get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    lr_scheduler.load_state_dict(meta["lr_scheduler"])
    if ema is not None and "ema" not in meta:
        raise ProbeError(f"{path}: the saved state has no EMA weights; resume with the EMA off (its config.json)")
    if ema is not None:
        ema.shadow_params = [tensors[f"ema.{i}"] for i in range(len(ema.shadow_params))]
        ema.optimization_step = meta["ema"]["optimization_step"]
    return meta["info"]
