"""Time toy generation with and without cross-attention capture, in one run, and print the ratio.

Goal (issue #6): capture costs at most 1.2x the plain sampler. Runs alternate (plain,
captured, plain, ...) so both see the same machine load; the median of each is compared,
in wall-clock time and in process CPU time (steadier on a shared, loaded machine).
Times ``sdxl_probe.pipeline.sampling.generate_images`` (the project sampler, CFG in one doubled
batch). Uses the trained toy model when its weights exist, else the tiny random model
(same code path, smaller UNet) and says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def load(source: str) -> tuple[object, str]:
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.models.load import load_components

    try:
        return load_components(source, dtype=torch.float32), f"{source} (toy model)"
    except ProbeError as e:
        from sdxl_probe.models.tiny import build_tiny_components

        return build_tiny_components(0), f"tiny random model (toy weights unavailable: {e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="toy", help='"toy" or a model folder/file')
    args = parser.parse_args()
    from sdxl_probe.pipeline.sampling import generate_images
    from sdxl_probe.probes.attention.runs import CaptureOptions

    components, label = load(args.model)
    side = components.unet.config.sample_size * components.vae_scale_factor
    prompts = ["a red circle, blue square, white background"] * args.batch

    def plain() -> None:
        generate_images(components, prompts, steps=args.steps, cfg=5.0, seed=0, batch_size=args.batch)

    def captured() -> None:
        with CaptureOptions().capture(components.unet, cfg_doubled=True):
            plain()

    plain(), captured()  # warm-up
    times = {(name, clock): [] for name in ("plain", "capture") for clock in ("wall", "cpu")}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("capture", captured)):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name, "wall"].append(time.perf_counter() - wall)
            times[name, "cpu"].append(time.process_time() - cpu)
    print(f"model: {label}; batch {args.batch}, {args.steps} steps, {side}x{side} px, CFG doubled batch")
    for clock in ("wall", "cpu"):
        base, cap = statistics.median(times["plain", clock]), statistics.median(times["capture", clock])
        runs = ", ".join(
            f"{p:.2f}/{c:.2f}" for p, c in zip(times["plain", clock], times["capture", clock], strict=True)
        )
        print(f"{clock:4s}: plain {base:.3f} s, capture {cap:.3f} s (runs plain/capture: {runs})")
        print(f"{clock:4s}: overhead ratio capture/plain = {cap / base:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    main()
