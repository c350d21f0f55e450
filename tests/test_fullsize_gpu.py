"""Full-size random SDXL on CUDA with ``--dtype auto``: no NaN in the decoded image, peak VRAM printed.

Needs CUDA (``gpu``) and writes the 6.9 GB random-weight file of ``benchmarks/bench_load.py
--full-size`` when it is missing (``slow``). With fp16 on CUDA the VAE must run upcast to fp32
(its config's ``force_upcast``), else SDXL's VAE overflows to NaN.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def fullsize_file():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_load import DEFAULT_CACHE, write_full_size_file

    path = DEFAULT_CACHE / "sdxl_base_random_fp16.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_full_size_file(path)
    return path


@pytest.fixture(scope="module")
def components(fullsize_file):
    from sdxl_probe.pipeline.device import load_model, open_model

    _, precision = open_model(str(fullsize_file), "cuda", "auto")
    assert (precision.dtype, precision.vae_dtype) == ("fp16", "fp32")  # SDXL's VAE sets force_upcast
    return load_model(str(fullsize_file), precision)


def test_generate_decodes_without_nan(components):
    import torch

    from sdxl_probe.pipeline.sampling import initial_noise, sample_latents

    torch.cuda.reset_peak_memory_stats()
    noise = initial_noise(1, (4, 128, 128), seed=0)  # (1, C, 1024/8, 1024/8)
    with torch.no_grad():
        latents = sample_latents(components, ["a red cube on a table"], noise, steps=2, cfg=5.0, height=1024,
                                 width=1024, negative="", sampler="euler", max_token_length=None, weighted=False,
                                 zero_negative=True)  # fmt: skip
        vae = components.vae
        pixels = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample  # (1, 3, 1024, 1024)
    print(f"generate 1024 px: peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    assert vae.dtype == torch.float32 and components.unet.dtype == torch.float16
    assert torch.isfinite(latents).all() and torch.isfinite(pixels).all()


def test_attention_generate_without_nan(components):
    import numpy as np
    import torch

    from sdxl_probe.probes.attention import core as attention

    torch.cuda.reset_peak_memory_stats()
    result = attention.generate(components, ["a red cube on a table"], height=1024, width=1024, steps=2, seed=0)
    print(f"attention generate 1024 px: peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    assert torch.isfinite(result.token_maps).all()
    assert np.asarray(result.images).std() > 0  # a NaN decode would come out as one flat colour
