"""Peak memory and wall time of the model commands on a full-size random-weight SDXL file.

    .venv/bin/python benchmarks/bench_fullsize.py        # tiny file, native sizes: a smoke run in seconds
    flock /tmp/fullsize.lock .venv/bin/python benchmarks/bench_fullsize.py --full-size
    flock /tmp/fullsize.lock .venv/bin/python benchmarks/bench_fullsize.py --full-size --before --pythonpath /tmp/before

With ``--full-size`` the file is the one ``benchmarks/bench_load.py --full-size`` writes (SDXL base key set and
shapes, random fp16 values, ~6.9 GB; written here with its writer when missing). Every case
runs the real CLI in its own subprocess; its peak resident memory is the child's
``ru_maxrss`` (from ``os.wait4``), reported as a ratio of the file size. Cases: ``embed``
(10 toy-world pairs, no cache), ``generate`` (2 steps at 1024 px), ``attention generate``
(2 steps) and ``attention inspect`` (one timestep), both at 512 px, each with ``--dtype fp32``
and ``--dtype auto``; plus ``embed`` of 32 pairs with ``--dtype auto`` (issue #16 goals:
embed <= 0.35 x file, generate and attention <= 1.3 x file with auto, 32 pairs < 2 min).

``--before`` runs each command once with its old defaults (no ``--device``/``--dtype``
options, ``generate --cfg``), for code that predates the dtype policy, e.g. a
``git worktree`` of an older commit given with ``--pythonpath``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import DEFAULT_CACHE, write_full_size_file, write_tiny_file  # noqa: E402

FILE_NAME = "sdxl_base_random_fp16.safetensors"
IMPORTS = "import torch, transformers, diffusers.loaders.single_file_utils; from transformers import CLIPTextModel"
GOALS = {"embed": 0.35, "generate": 1.3, "attention generate": 1.3, "attention inspect": 1.3}


def cases(model: Path, work: Path, *, before: bool, px: tuple[int, int]) -> list[tuple[str, str, list[str]]]:
    """(name, dtype label, CLI arguments) of every case; ``px``: generate's and attention's image sides."""
    image = work / "inspect.png"
    _write_image(image, px[1])
    gen, px = str(px[0]), str(px[1])
    base = {
        "embed": ["embed", "--model", str(model), "--toy-pairs", "10", "--no-cache", "--out", str(work / "embed")],
        "generate": ["generate", "a red cube on a table", "--model", str(model), "--steps", "2", "--width", gen,
                     "--height", gen, "--out", str(work / "generate.png"),
                     *(["--cfg", "5"] if before else ["--guidance", "5"])],
        "attention generate": ["attention", "generate", "a red cube on a table", "--model", str(model), "--steps",
                               "2", "--height", px, "--width", px, "--out", str(work / "attention-generate")],
        "attention inspect": ["attention", "inspect", str(image), "--caption", "a red cube on a table",
                              "--timesteps", "500", "--model", str(model), "--out", str(work / "attention-inspect")],
    }  # fmt: skip
    if before:
        return [(name, "default", args) for name, args in base.items()]
    out = [(name, dtype, [*args, "--device", "cpu", "--dtype", dtype]) for name, args in base.items()
           for dtype in ("fp32", "auto")]  # fmt: skip
    embed32 = [a if a != "10" else "32" for a in base["embed"]]
    out.append(("embed 32 pairs", "auto", [*embed32, "--device", "cpu", "--dtype", "auto"]))
    return out


def _write_image(path: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def run_case(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, float, int, str]:
    """(exit code, seconds, peak RSS bytes, last stderr line) of one CLI run (or ``python -c``) in a fresh process."""
    cmd = [sys.executable, *(args if args[0] == "-c" else ["-m", "sdxl_probe.cli", *args])]
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    return code, seconds, usage.ru_maxrss * 1024, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the full-size file lives")
    parser.add_argument("--full-size", action="store_true", help="the full-size (~6.9 GB) SDXL file")
    parser.add_argument("--before", action="store_true", help="old defaults: no --device/--dtype options")
    parser.add_argument("--pythonpath", type=Path, help="import sdxl_probe from this checkout (e.g. a worktree)")
    parser.add_argument("--only", action="append", help="run only cases whose name starts with this")
    parser.add_argument("--dtype", action="append", help="run only cases with this --dtype (fp32, auto)")
    parser.add_argument("--attention-px", type=int, default=512, help="image side for the attention cases")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a case is killed")
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.full_size:
        model, px = args.cache_dir / FILE_NAME, (1024, args.attention_px)
        if not model.exists():
            write_full_size_file(model)
    else:  # the tiny model's native size (32 px); its ratios mean little (imports dominate)
        model, px = write_tiny_file(args.cache_dir)[0], (32, 32)
    size = model.stat().st_size
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SDXL_PROBE_CACHE": ""}
    if args.pythonpath:
        env["PYTHONPATH"] = str(args.pythonpath)
    print(f"file {model}: {size / 1e9:.3f} GB; code from {args.pythonpath or 'this checkout'}", flush=True)
    _, _, floor, _ = run_case(["-c", IMPORTS], env, args.timeout)
    print(f"imports alone (torch, transformers, diffusers' converters): peak RSS {floor / 1e9:.2f} GB "
          f"= {floor / size:.2f} x file", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-fullsize-") as tmp:
        for name, dtype, cli in cases(model, Path(tmp), before=args.before, px=px):
            if (args.only and not any(name.startswith(o) for o in args.only)) or (args.dtype and dtype not in args.dtype):
                continue
            code, seconds, peak, last = run_case(cli, env, args.timeout)
            goal = GOALS.get(name)
            verdict = "" if goal is None or dtype == "fp32" or not args.full_size else f"  goal <= {goal}: {'met' if peak / size <= goal else 'NOT met'}"
            status = "ok" if code == 0 else (f"KILLED after {args.timeout:.0f} s" if code < 0 else f"exit {code}: {last}")
            print(f"{name:20s} {dtype:8s} {seconds:7.1f} s  peak RSS {peak / 1e9:6.2f} GB = {peak / size:5.2f} x file"
                  f"  {status}{verdict}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
