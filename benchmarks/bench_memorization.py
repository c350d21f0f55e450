"""Time ``sdxl-probe memorization`` per checkpoint on the toy model, and the share spent generating vs scoring.

Trains a small toy LoRA (8 toy images, 4 held out, a checkpoint every ``--every`` steps) into a temp folder
unless ``--run RUN_DIR`` is given, then measures it twice with a fresh generation cache: the first pass
generates everything, the second reads every image from the cache (the re-run cost). Prints, per state
(base model and each checkpoint), the seconds in generation and in scoring, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def train_toy_run(folder: Path, steps: int, every: int) -> Path:
    from sdxl_probe.config import from_dict
    from sdxl_probe.toy.dataset import write_dataset
    from sdxl_probe.train.lora.config import TrainConfig
    from sdxl_probe.train.lora.loop import train

    write_dataset(folder / "data", n=8, seed=3, style="sentence", details=True)
    cfg = from_dict(TrainConfig, {
        "dataset": {"path": str(folder / "data"), "caption_extension": ".txt", "resolution": 64, "batch_size": 4,
                    "cache_latents": "memory", "cache_text_encoder_outputs": True, "validation_split": 0.5},
        "network": {"dim": 8, "alpha": 8.0},
        "optimizer": {"unet_lr": 3e-3, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 10},
        "training": {"max_train_steps": steps, "seed": 0, "threads": torch.get_num_threads()},
        "saving": {"output_dir": str(folder / "run"), "output_name": "bench", "save_every_n_steps": every,
                   "save_last_k": max(1, steps // every)},
        "logging": {"progress_bar": False},
    })  # fmt: skip
    train(cfg, folder / "run", log=lambda s: None)
    return folder / "run"


def report(label: str, result, wall: float) -> None:
    gen = sum(c["seconds"]["generation"] for c in result.checkpoints)
    score = sum(c["seconds"]["scoring"] for c in result.checkpoints)
    n = len(result.checkpoints)
    print(f"{label}: {wall:.1f} s for {n} checkpoints + base ({wall / n:.1f} s per checkpoint); "
          f"checkpoints: generation {gen:.1f} s ({gen / max(gen + score, 1e-9):.0%}), scoring {score:.1f} s "
          f"({score / max(gen + score, 1e-9):.0%})")  # fmt: skip
    for c in result.checkpoints:
        print(f"  step {c['step']}: {c['generated']} generated, generation {c['seconds']['generation']:.1f} s, "
              f"scoring {c['seconds']['scoring']:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, help="An existing run folder (default: train a toy one).")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sdxl_probe.probes.memorization.core import measure

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        run = args.run or train_toy_run(tmp, args.steps, args.every)
        print(f"run: {run} ({time.perf_counter() - t0:.1f} s to train)" if not args.run else f"run: {run}")
        for label, out in (("first pass (generates)", "m1"), ("re-run (cached)", "m2")):
            t = time.perf_counter()
            result = measure(run, tmp / out, seeds=args.seeds, steps=20, cache_dir=tmp / "cache", log=lambda s: None)
            report(label, result, time.perf_counter() - t)


if __name__ == "__main__":
    main()
