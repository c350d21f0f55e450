"""Cold versus warm run of the embedding probe: how much the encoding cache saves.

Each repetition starts a fresh process and, once its imports are done (process start-up and
imports are not timed), measures:

* cold: model load + ``run_embed`` on the seeded toy-world pairs with an empty cache folder;
* warm: ``run_embed`` again in the same process, every encoding read back from that cache.

Cold must run before warm (warm reads what cold wrote), so the order cannot alternate; the
repetitions are separate processes instead, and the figures are medians. Uses the toy model
when its weights are built, else the tiny random encoders (the ratio is what counts). The warm
result must equal the cold one (everything but timings), else the exit status is 1.

    .venv/bin/python benchmarks/bench_embed.py [--pairs 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_model():
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.models.load import load_components

    try:
        return load_components("toy")
    except ProbeError as e:
        from sdxl_probe.models.tiny import build_tiny_components

        print(f"toy model unavailable ({e}); using the tiny random encoders", file=sys.stderr)
        return build_tiny_components(0)


def child(n_pairs: int) -> None:
    """Time cold (load + encode) and warm (cached) runs in this already started process."""
    import torch  # noqa: F401  (imports are not timed)

    from sdxl_probe.pipeline.encoding_cache import EncodingCache
    from sdxl_probe.probes.embed.core import EmbedSettings, run_embed
    from sdxl_probe.probes.embed.inputs import toy_pairs

    pairs, settings = toy_pairs(n_pairs, seed=0), EmbedSettings()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        components = load_model()
        cold_cache = EncodingCache(Path(tmp), components.model_hash())
        cold = run_embed(components, pairs, settings, cache=cold_cache)
        t_cold = time.perf_counter() - start
        start = time.perf_counter()
        warm_cache = EncodingCache(Path(tmp), components.model_hash())
        warm = run_embed(components, pairs, settings, cache=warm_cache)
        t_warm = time.perf_counter() - start
    same = _comparable(cold) == _comparable(warm)
    print(json.dumps({"cold": t_cold, "warm": t_warm, "same": same, "kind": components.kind,
                      "source": components.source, "pairs": len(pairs), "drift": len(cold.drift_samples),
                      "hits": [cold_cache.hits, warm_cache.hits], "misses": [cold_cache.misses, warm_cache.misses]}))  # fmt: skip


def _comparable(result) -> str:
    """The result without its run record (timings, cache counts)."""
    return json.dumps(
        {k: v for k, v in dataclasses.asdict(result).items() if k != "run"}, sort_keys=True, default=str
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes, each timing cold then warm")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.pairs)
    runs = []
    for rep in range(args.reps):
        cmd = [sys.executable, __file__, "--child", "--pairs", str(args.pairs)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"rep {rep + 1}/{args.reps}: cold {r['cold']:.2f} s (hits {r['hits'][0]}, misses {r['misses'][0]}), "
              f"warm {r['warm']:.2f} s (hits {r['hits'][1]}, misses {r['misses'][1]})")  # fmt: skip
    cold, warm = (statistics.median(r[k] for r in runs) for k in ("cold", "warm"))
    r = runs[0]
    print(
        f"model {r['kind']} ({r['source']}), {r['pairs']} pairs, {r['drift']} drift samples, medians of {args.reps}"
    )
    print(f"cold (model load + encode, from a started process): {cold:.2f} s; warm (cached encodings): {warm:.2f} s; "
          f"cold/warm ratio: {cold / warm:.1f}x")  # fmt: skip
    bad = sum(not r["same"] for r in runs)
    print(f"warm results identical to cold: {args.reps - bad}/{args.reps}")
    if bad:
        raise SystemExit("the cached (warm) run gave different results from the cold run")


if __name__ == "__main__":
    main()
