"""Full-size SDXL LoRA training on CUDA within kohya's advertised 12 GB (issue #13 item 6).

Five real optimizer steps of the trainer (:func:`sdxl_probe.train.lora.loop.setup`, then
:func:`~sdxl_probe.train.lora.loop.optimizer_step`) at 1024 px, batch 1, bf16, gradient checkpointing,
in-memory latent and text-encoder output caches, LoRA rank 4 on the "transformer" targets, on the
random-weight full-size SDXL file of ``benchmarks/bench_load.py`` (written when missing, 6.9 GB: ``slow``).
The config is the benchmark's own (``benchmarks/bench_train.py --full-size``, variant ``ckpt+bf16+caches``).

Oracle: kohya's advertised figure for SDXL LoRA, 12 GB of VRAM. It is a whole-process figure, so the
peak is ``torch.cuda.max_memory_allocated`` counted from before the model loads (reset there; what
the process held before, e.g. an earlier test's tensors, is subtracted), not from after setup.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LIMIT_BYTES = 12 * 2**30  # kohya's 12 GB, read as GiB
STEPS, SIDE = 5, 1024


@pytest.fixture(scope="module")
def fullsize_file():
    sys.path.insert(0, str(BENCHMARKS))
    from bench_load import DEFAULT_CACHE, write_full_size_file

    path = DEFAULT_CACHE / "sdxl_base_random_fp16.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_full_size_file(path)
    return path


def test_lora_training_at_1024_px_peaks_under_12_gib(fullsize_file, tmp_path):
    import torch

    sys.path.insert(0, str(BENCHMARKS))
    from bench_train import BASELINE, full_size_config

    from sdxl_probe.train.lora import loop

    cfg = full_size_config(fullsize_file, tmp_path, side=SIDE, device="cuda", variant=BASELINE)
    t, d = cfg.training, cfg.dataset
    assert (t.gradient_checkpointing, t.mixed_precision, d.batch_size, d.resolution) == (
        True,
        "bf16",
        1,
        SIDE,
    )
    assert d.cache_latents == "memory" and d.cache_text_encoder_outputs
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run = loop.setup(cfg, tmp_path / "run", resume=False, log=lambda s: None)
    assert run.latents is not None and run.text is not None and run.components.unet.device.type == "cuda"
    setup_peak = torch.cuda.max_memory_allocated() - before
    losses = [loop.optimizer_step(run, step, 0)[0] for step in range(STEPS)]
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    reserved = torch.cuda.max_memory_reserved()
    print(f"train {SIDE} px, batch 1, bf16, checkpointing, caches: peak allocated {peak / 2**30:.2f} GiB "
          f"(setup {setup_peak / 2**30:.2f} GiB), reserved {reserved / 2**30:.2f} GiB")  # fmt: skip
    assert all(math.isfinite(loss) for loss in losses)
    assert peak <= LIMIT_BYTES, f"peak {peak / 2**30:.2f} GiB over kohya's 12 GB"
