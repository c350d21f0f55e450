"""Speed of the toy world: sampling, rendering and judging, in scenes per second.

The pretraining recipe renders tens of thousands of scenes and studies judge hundreds of
generations, so both should stay at seconds, not minutes, on two CPU cores.

    .venv/bin/python benchmarks/bench_toy_world.py [--n 24000] [--judge 300]
"""

from __future__ import annotations

import argparse
import random
import time

from sdxl_probe.toy.judge import judge_image
from sdxl_probe.toy.world import render_scene, sample_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24000, help="scenes to sample and render")
    parser.add_argument("--judge", type=int, default=300, help="renders to judge")
    args = parser.parse_args()
    rng = random.Random(0)
    t0 = time.perf_counter()
    scenes = [sample_scene(rng) for _ in range(args.n)]
    t1 = time.perf_counter()
    images = [render_scene(s)[0] for s in scenes]
    t2 = time.perf_counter()
    for image in images[: args.judge]:
        judge_image(image)
    t3 = time.perf_counter()
    print(f"sample {args.n} scenes: {t1 - t0:.2f} s ({args.n / (t1 - t0):,.0f}/s)")
    print(f"render {args.n} scenes at 64 px: {t2 - t1:.2f} s ({args.n / (t2 - t1):,.0f}/s)")
    print(f"judge {args.judge} renders: {t3 - t2:.2f} s ({(t3 - t2) / args.judge * 1000:.1f} ms each)")


if __name__ == "__main__":
    main()
