"""Test driver for tests/test_train_ddp.py: the real ``setup`` + ``optimizer_step`` for a few steps.

Run under ``accelerate launch`` (one copy per process) or imported by the test (one process, the
oracle). Per process it writes ``weights-rank{r}-step{s}.safetensors`` (every LoRA parameter after
optimizer step s) and ``draws-rank{r}.json`` (the (key, image indices) of every micro-batch it drew,
recorded by a proxy around the run's ``BatchOrder``), so the test can compare the processes.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/ddp_driver.py CONFIG.json OUT STEPS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


class RecordingOrder:
    """A ``BatchOrder`` that records every ``at(key)`` the trainer asks for."""

    def __init__(self, order) -> None:
        self.order, self.draws = order, []

    def at(self, key: int):
        epoch, idx = self.order.at(key)
        self.draws.append([key, list(idx)])
        return epoch, idx

    def __getattr__(self, name):
        return getattr(self.order, name)


def run_steps(config: dict, out: Path, steps: int) -> list[dict[str, torch.Tensor]]:
    """Train ``steps`` optimizer steps on the tiny components; write this process's weights and draws."""
    from sdxl_probe.config import from_dict
    from sdxl_probe.models.tiny import build_tiny_components
    from sdxl_probe.train.lora import loop
    from sdxl_probe.train.lora.config import TrainConfig

    torch.set_num_threads(1)
    cfg = from_dict(TrainConfig, config)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    run = loop.setup(cfg, out / "run", resume=False, log=lines.append, components=build_tiny_components(0))
    run.order = RecordingOrder(run.order)
    rank = run.accelerator.process_index
    weights, lrs = [], []
    for step in range(steps):
        loop.optimizer_step(run, step, 0)
        params = run.network.all_params()
        weights.append({f"p{i:03d}": p.detach().clone().contiguous() for i, p in enumerate(params)})
        save_file(weights[-1], str(out / f"weights-rank{rank}-step{step}.safetensors"))
        lrs.append(run.lr_scheduler.get_last_lr()[0])
    info = {"draws": run.order.draws, "log": lines, "lrs": lrs}
    (out / f"draws-rank{rank}.json").write_text(json.dumps(info), encoding="utf-8")
    return weights


if __name__ == "__main__":
    run_steps(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")), Path(sys.argv[2]), int(sys.argv[3]))


def average_worker(rank: int, init_file: str, out: str) -> None:
    """Process ``rank`` of 2 (gloo): hand-built gradients, some missing, through ``average_gradients``.

    Rank 0 has a gradient for parameter 0 only; rank 1 for parameters 0 and 1; nobody for parameter 2.
    """
    from sdxl_probe.train.lora.parallel import average_gradients

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    params = [
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(2, 2)),
        torch.nn.Parameter(torch.zeros(1)),
    ]
    params[0].grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
    if rank == 1:
        params[1].grad = torch.tensor([[4.0, 8.0], [-2.0, 6.0]])
    average_gradients(params, 2)
    grads = {f"g{i}": p.grad for i, p in enumerate(params) if p.grad is not None}
    save_file(grads, f"{out}/grads-rank{rank}.safetensors")
    torch.distributed.destroy_process_group()
