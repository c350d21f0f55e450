"""Load-time and peak-memory benchmark: our single-file loader versus plain diffusers.

    .venv/bin/python benchmarks/bench_load.py              # tiny SDXL-architecture file, seconds
    .venv/bin/python benchmarks/bench_load.py --full-size  # full SDXL base layout, random fp16 (~6.9 GB)

The full-size file has the exact key set and shapes of ``sd_xl_base_1.0.safetensors``
(2,515 tensors, generated from the shipped configs on the meta device and renamed to the
SAI layout), random fp16 values, written once, streaming, to a cache folder outside the
repository. Each loader runs in its own subprocess; the child reports its load seconds and
its peak resident memory (``ru_maxrss``). Goal (issue #2): our peak <= 1.2 x file size, and
no worse than diffusers ``StableDiffusionXLPipeline.from_single_file(path, config=<shipped
config dir>, local_files_only=True)``, given the file's dtype (fp16) as ``torch_dtype`` so
both return the same modules. Both loaders memory-map the file, so their weights page in
on first use: each child therefore reads one element per 2 KB of every weight before its
peak is taken, as any forward pass would.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_CACHE = Path.home() / ".cache" / "sdxl-probe" / "bench"
MODEL_NAMES = ("text_encoder", "text_encoder_2", "unet", "vae")


def write_full_size_file(path: Path) -> Path:
    """Write a random-fp16 SDXL base single file with the real key set, one tensor at a time."""
    import torch

    from sdxl_probe.models.configs import base_config
    from sdxl_probe.models.ldm_names import sai_entries
    from sdxl_probe.models.safetensors_file import TensorSpec, write_safetensors_stream
    from sdxl_probe.models.single_file import _empty_model

    state = {n: _empty_model(n, base_config(n)).to(torch.float16).state_dict() for n in MODEL_NAMES}
    entries = sai_entries({n: list(sd) for n, sd in state.items()}, {n: base_config(n) for n in MODEL_NAMES})
    specs = []
    for i, e in enumerate(entries):
        probe = e.make(state[e.component].__getitem__)  # meta tensors give shapes; position_ids are real
        if probe.device.type == "meta":
            make = lambda shape=tuple(probe.shape), seed=i: _random_fp16(shape, seed)  # noqa: E731
        else:
            make = lambda t=probe: t  # noqa: E731
        specs.append(TensorSpec(e.key, tuple(probe.shape), probe.dtype, make))
    return write_safetensors_stream(path, specs, {"format": "pt"})


def _random_fp16(shape: tuple[int, ...], seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.float16)


def write_tiny_file(cache: Path) -> tuple[Path, Path]:
    """A tiny SDXL-architecture single file and its diffusers config folder (for diffusers' loader)."""
    import torch

    from sdxl_probe.models.folder import save_folder
    from sdxl_probe.models.single_file import save_single_file
    from sdxl_probe.models.tiny import build_tiny_components

    components = build_tiny_components(0).to(dtype=torch.float16)
    return save_single_file(components, cache / "tiny_sdxl.safetensors"), save_folder(
        components, cache / "tiny_config"
    )


def child(loader: str, path: str, config: str) -> None:
    """Run one loader in this process and print a JSON line with seconds and peak RSS."""
    import torch  # imports are not part of the timed load

    if loader == "ours":
        from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
        from diffusers.loaders import single_file_utils  # noqa: F401
        from transformers import CLIPTextModel, CLIPTextModelWithProjection  # noqa: F401

        from sdxl_probe.models.load import load_components
    else:
        from diffusers import StableDiffusionXLPipeline

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if loader == "ours":
        loaded = load_components(path)
    else:
        loaded = StableDiffusionXLPipeline.from_single_file(
            path, config=config, local_files_only=True, torch_dtype=torch.float16
        )
    seconds = time.perf_counter() - start
    loaded_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params = touch_every_page(loaded)
    touched_seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "touched_seconds": touched_seconds,
                "loaded_kb": loaded_kb,
                "peak_kb": peak_kb,
                "base_kb": base_kb,
                "params": params,
            }
        )
    )


def touch_every_page(loaded) -> int:
    """Read one element per 2 KB of every parameter, as any forward pass would read them all.

    A memory-mapped loader (diffusers) returns lazily paged weights, whose resident memory only
    shows once they are used; this makes both loaders' peaks comparable. Returns the parameter count.
    """
    import torch

    count = 0
    with torch.no_grad():
        for name in MODEL_NAMES:
            for p in getattr(loaded, name).parameters():
                flat = p.detach().reshape(-1)
                flat[:: max(1, 2048 // p.element_size())].float().sum().item()
                count += p.numel()
    return count


def measure(loader: str, path: Path, config: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", loader, str(path), str(config)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise SystemExit(f"{loader} loader failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def report(name: str, result: dict, size: int) -> None:
    loaded, peak, base = (result[k] * 1024 for k in ("loaded_kb", "peak_kb", "base_kb"))
    print(
        f"{name:9s} load {result['seconds']:6.1f} s (+ reading every weight: {result['touched_seconds']:6.1f} s)   "
        f"peak RSS after load {loaded / 1e9:5.2f} GB = {loaded / size:.2f} x file, "
        f"after reading every weight {peak / 1e9:5.2f} GB = {peak / size:.2f} x file   "
        f"(imports alone {base / 1e9:.2f} GB)   params {result['params']:,}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="benchmark a full-size (~6.9 GB) SDXL file")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the benchmark files live"
    )
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "PATH", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.full_size:
        from sdxl_probe.models.configs import SDXL_BASE_DIR

        path, config = args.cache_dir / "sdxl_base_random_fp16.safetensors", SDXL_BASE_DIR
        if not path.exists():
            start = time.perf_counter()
            write_full_size_file(path)
            print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    else:
        path, config = write_tiny_file(args.cache_dir)
    size = path.stat().st_size
    print(f"file {path}: {size / 1e9:.3f} GB")
    if size < 10**9:
        print("small file: import overhead dominates peak RSS, so the ratios mean little; use --full-size")
    ours, theirs = measure("ours", path, config), measure("diffusers", path, config)
    report("ours", ours, size)
    report("diffusers", theirs, size)
    print(
        f"peak RSS / file size (after reading every weight): ours {ours['peak_kb'] * 1024 / size:.2f}, "
        f"diffusers {theirs['peak_kb'] * 1024 / size:.2f} (goal: ours <= 1.2 and <= diffusers); "
        f"time to usable weights ours/diffusers {ours['touched_seconds'] / theirs['touched_seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
