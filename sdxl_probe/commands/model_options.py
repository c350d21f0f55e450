"""``--device`` and ``--dtype``, the same options on every command that loads a model (no torch here).

The policy behind ``auto`` lives in :mod:`sdxl_probe.pipeline.device`.
"""

from __future__ import annotations

import typer

DEVICE_HELP = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps; checked before the model loads."
DTYPE_HELP = (
    "auto, fp32, bf16 or fp16. auto: fp16 on CUDA/MPS (VAE in fp32 when its config asks), "
    "bf16 on CPUs with native bf16, else fp32."
)


def device_option() -> str:
    return typer.Option("auto", "--device", help=DEVICE_HELP)


def dtype_option() -> str:
    return typer.Option("auto", "--dtype", help=DTYPE_HELP)
