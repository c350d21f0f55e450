"""Data parallelism over ``accelerate launch`` processes: who draws which batch, the gradient mean, main-only work.

``accelerate launch --multi_gpu --num_processes N -m sdxl_probe train CONFIG`` starts N copies of the
trainer (NCCL on GPUs; gloo when ``[training] device = "cpu"``). Every process holds the same LoRA
weights (the same seed builds them) and draws its own micro-batches:

* **Data split**: process ``r`` of ``N`` at micro-step ``m`` draws with key ``m * N + r``
  (:func:`draw_key`), so the processes cover disjoint batches of the one deterministic order
  (``BatchOrder.at``), together the keys a single process draws in N times as many micro-steps, and a
  resume on the same N is bit-exact. One process: key ``m``, exactly as before.
* **Gradients**: after the last micro-step of an optimizer step the LoRA gradients are averaged over
  the processes with one all-reduce (:func:`average_gradients`): DDP's arithmetic with ``no_sync``
  on the other micro-steps. The models are not wrapped in ``DistributedDataParallel``: the text
  encoders are called through the conditioning route, which reads ``encoder.text_model`` and
  ``encoder.device`` that a DDP wrapper hides, LoRA module dropout leaves parameters unused on some
  processes (DDP's ``find_unused_parameters`` pass), and the weight penalty adds gradient outside the
  forward. A LoRA's gradients are small (tens of MB on SDXL), so overlapping their reduction with the
  backward would save little.
* **Effective batch** = batch_size x gradient_accumulation_steps x N; ``[optimizer] scale_lr``
  multiplies the learning rates by it (diffusers' ``--scale_lr``).

DeepSpeed and FSDP are refused (:func:`check_launch`): both shard what is replicated here, and the
trainer reads the whole LoRA on the main process for validation, samples and kohya export; for a LoRA the
frozen base is the memory, and ZeRO/FSDP over a few MB of trainable weights saves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sdxl_probe.errors import ConfigError

# accelerate launch flags -> the environment variable it sets for them
UNSUPPORTED_LAUNCH = {"--use_deepspeed": "ACCELERATE_USE_DEEPSPEED", "--use_fsdp": "ACCELERATE_USE_FSDP",
                      "--use_megatron_lm": "ACCELERATE_USE_MEGATRON_LM"}  # fmt: skip


def check_launch() -> None:
    """Refuse ``accelerate launch --use_deepspeed / --use_fsdp / --use_megatron_lm`` (see the module docstring)."""
    for flag, var in UNSUPPORTED_LAUNCH.items():
        if os.environ.get(var, "false").lower() == "true":
            raise ConfigError(
                f"accelerate launch {flag} is not supported by the LoRA trainer (it replicates the model and "
                "averages LoRA gradients); launch with --multi_gpu --num_processes N"
            )


def draw_key(micro_step: int, rank: int, world: int) -> int:
    """The (seed, key) generator key of process ``rank``'s draws at its micro-step ``micro_step``."""
    return micro_step * world + rank


def step_epoch(step: int, accumulation: int, world: int, per_epoch: int) -> int:
    """Epoch (from 0) of the last batch any process drew in optimizer step ``step`` (from 0)."""
    return ((step + 1) * accumulation * world - 1) // per_epoch


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Replace every ``p.grad`` by its mean over the ``world`` processes, in one all-reduce.

    A gradient missing on some processes (LoRA module dropout) counts as zero there, as in DDP; one
    missing on all of them stays None (the optimizer skips it, as in a single process).
    """
    if world == 1:
        return
    grads = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
             for p in params]  # fmt: skip
    present = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    flat = torch.cat([*grads, present])  # (sum numel + n_params,)
    torch.distributed.all_reduce(flat)
    counts = flat[-len(params) :]
    offset = 0
    for p, n in zip(params, counts.tolist(), strict=True):
        mean = (flat[offset : offset + p.numel()] / world).view_as(p).to(p.dtype)
        offset += p.numel()
        if n > 0:
            p.grad = mean if p.grad is None else p.grad.copy_(mean)


def mean_over_processes(value: float, world: int, device: torch.device) -> float:
    """The mean of ``value`` over the processes (the step's loss on the effective batch)."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t[0]) / world


def any_process(flag: bool, world: int, device: torch.device) -> bool:
    """Whether ``flag`` is set on any process: a stop request (Ctrl-C reaches each process at another
    moment), shared so that every process stops after the same step."""
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t)
    return bool(t[0] > 0)


@contextmanager
def main_first(accelerator, on: bool) -> Iterator[None]:
    """The main process runs the block first, then the others (a disk cache: only main encodes and writes)."""
    if not on or accelerator.num_processes == 1:
        yield
        return
    with accelerator.main_process_first():
        yield


def lr_factor(scale_lr: bool, batch_size: int, accumulation: int, world: int) -> int:
    """diffusers' ``--scale_lr``: lr x batch x accumulation x processes (the effective batch); 1 when off."""
    return batch_size * accumulation * world if scale_lr else 1


def batch_line(world: int, batch_size: int, accumulation: int, lrs: dict[str, float], factor: int) -> str:
    """The start-up line: processes, per-process batch, accumulation, effective batch, learning rates."""
    rates = ", ".join(f"{k} {v * factor:.3g}" + (f" (= {v:.3g} x {factor})" if factor != 1 else "")
                      for k, v in lrs.items())  # fmt: skip
    scaled = "scaled by [optimizer] scale_lr" if factor != 1 else "not scaled ([optimizer] scale_lr = false)"
    return (f"data parallel: {world} process(es) x batch {batch_size} x accumulation {accumulation} = effective "
            f"batch {world * batch_size * accumulation}; learning rates {rates}, {scaled}")  # fmt: skip
