"""Load-time and peak-memory benchmark: our single-file loader versus plain diffusers.

    .venv/bin/python benchmarks/bench_load.py              # tiny SDXL-architecture file, seconds
    .venv/bin/python benchmarks/bench_load.py --full-size  # full SDXL base layout, random fp16 (~6.9 GB)

The full-size file has the exact key set and shapes of ``sd_xl_base_1.0.safetensors``
(2,515 tensors, generated from the shipped configs on the meta device and renamed to the
SAI layout), random fp16 values, written once, streaming, to a cache folder outside the
repository. Each loader runs in its own subprocess; the child reports its load seconds, its
peak resident memory (``ru_maxrss``) and a checksum of every parameter (the loaders must
agree, else the exit status is 1). Goal (issue #10): time to usable weights no slower than
diffusers ``StableDiffusionXLPipeline.from_single_file(path, config=<shipped config dir>,
local_files_only=True)``, given the file's dtype (fp16) as ``torch_dtype`` so both return the
same modules, at a peak no higher than 1.12 x the file. Both loaders memory-map the file, so
their weights page in on first use: each child therefore reads one element per 2 KB of every
weight before its peak is taken, as any forward pass would.

Both loaders meet the same page cache: before every child the file is either evicted
(cold: ``posix_fadvise(POSIX_FADV_DONTNEED)``; ``/proc/sys/vm/drop_caches`` is not writable
here) or read once through (warm). The loader order alternates between repetitions (ours
first, then diffusers first); figures are medians. Full-size runs need ~8 GB each: run them
under ``flock /tmp/fullsize.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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
    """Run one loader in this process and print a JSON line with seconds, peak RSS and a weight checksum."""
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
    params, checksums = touch_every_page(loaded)
    touched_seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"seconds": seconds, "touched_seconds": touched_seconds, "loaded_kb": loaded_kb, "peak_kb": peak_kb,
              "base_kb": base_kb, "params": params, "checksums": checksums}  # fmt: skip
    print(json.dumps(result))


def touch_every_page(loaded) -> tuple[int, dict[str, list]]:
    """Read one element per 2 KB of every parameter, as any forward pass would read them all.

    A memory-mapped loader returns lazily paged weights, whose resident memory only shows once
    they are used; this makes both loaders' peaks comparable. Returns the parameter count and,
    per network, each parameter's name, shape and the float64 sum of the elements read (the
    loaders must agree exactly).
    """
    import torch

    count, sums = 0, {}
    with torch.no_grad():
        for name in MODEL_NAMES:
            rows = []
            for pname, p in getattr(loaded, name).named_parameters():
                flat = p.detach().reshape(-1)
                rows.append(
                    [pname, list(p.shape), flat[:: max(1, 2048 // p.element_size())].double().sum().item()]
                )
                count += p.numel()
            sums[name] = rows
    return count, sums


def page_cache(path: Path, state: str) -> None:
    """Put ``path`` in the page cache (``warm``: read it once through) or take it out (``cold``).

    ``/proc/sys/vm/drop_caches`` is not writable in this container, so cold uses
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file, which evicts its clean, unmapped pages.
    """
    with path.open("rb") as f:
        if state == "warm":
            while f.read(64 << 20):
                pass
        else:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def measure(loader: str, path: Path, config: Path, cache: str) -> dict:
    """One loader in a fresh process, the file's page cache first put in state ``cache``."""
    page_cache(path, cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, __file__, "--child", loader, str(path), str(config)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise SystemExit(f"{loader} loader failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def report(name: str, results: list[dict], size: int) -> None:
    med = {
        k: statistics.median(r[k] for r in results)
        for k in ("seconds", "touched_seconds", "loaded_kb", "peak_kb")
    }
    print(
        f"  {name:9s} load {med['seconds']:5.1f} s, usable (every weight read) {med['touched_seconds']:5.1f} s   "
        f"peak RSS after load {med['loaded_kb'] * 1024 / size:.2f} x file, after reading every weight "
        f"{med['peak_kb'] * 1024 / 1e9:5.2f} GB = {med['peak_kb'] * 1024 / size:.2f} x file   (imports alone "
        f"{results[0]['base_kb'] * 1024 / 1e9:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="benchmark a full-size (~6.9 GB) SDXL file")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the benchmark files live"
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each (loader, page cache) pair")
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "PATH", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    path, config = prepare(args)
    size = path.stat().st_size
    print(f"file {path}: {size / 1e9:.3f} GB")
    if size < 10**9:
        print("small file: import overhead dominates peak RSS, so the ratios mean little; use --full-size")
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.reps):
        order = ("ours", "diffusers") if rep % 2 == 0 else ("diffusers", "ours")
        for cache in ("cold", "warm"):
            for loader in order:
                r = measure(loader, path, config, cache)
                results.setdefault((loader, cache), []).append(r)
        print(f"rep {rep + 1}/{args.reps} ({' then '.join(order)}): " + ", ".join(
            f"{lo} {ca} {rs[-1]['touched_seconds']:.1f} s" for (lo, ca), rs in results.items()))  # fmt: skip
    mismatch = [n for n in MODEL_NAMES if results["ours", "cold"][0]["checksums"][n]
                != results["diffusers", "cold"][0]["checksums"][n]]  # fmt: skip
    print(f"medians of {args.reps}, order alternated; cold: file evicted from the page cache (posix_fadvise "
          "DONTNEED) before each child; warm: file read once through before each child")  # fmt: skip
    for cache in ("cold", "warm"):
        print(f"{cache}:")
        for loader in ("ours", "diffusers"):
            report(loader, results[loader, cache], size)
        o, d = (
            statistics.median(r["touched_seconds"] for r in results[lo, cache])
            for lo in ("ours", "diffusers")
        )
        po, pd = (statistics.median(r["peak_kb"] for r in results[lo, cache]) * 1024 / size
                  for lo in ("ours", "diffusers"))  # fmt: skip
        print(f"  {cache}: time to usable weights ours/diffusers {o / d:.2f} (goal <= 1); peak RSS / file "
              f"ours {po:.2f}, diffusers {pd:.2f} (goal: ours <= 1.12)")  # fmt: skip
    print(
        f"weights identical (sampled checksums, every parameter): {'yes' if not mismatch else 'NO: ' + str(mismatch)}"
    )
    if mismatch:
        raise SystemExit(f"loaders disagree on {mismatch}")


def prepare(args) -> tuple[Path, Path]:
    """The benchmark file (written once) and the diffusers config folder for it."""
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if not args.full_size:
        return write_tiny_file(args.cache_dir)
    from sdxl_probe.models.configs import SDXL_BASE_DIR

    path = args.cache_dir / "sdxl_base_random_fp16.safetensors"
    if not path.exists():
        start = time.perf_counter()
        write_full_size_file(path)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return path, SDXL_BASE_DIR


if __name__ == "__main__":
    main()
