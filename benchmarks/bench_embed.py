"""Cold versus warm run of the embedding probe: how much the encoding cache saves.

Runs ``run_embed`` twice on the same seeded toy-world pairs with a fresh cache folder:
the first run encodes every caption, the second reads every encoding back. Uses the toy
model when its weights are built, else the tiny random encoders (the ratio is what counts).

    .venv/bin/python benchmarks/bench_embed.py [--pairs 200]
"""

from __future__ import annotations

import argparse
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

        print(f"toy model unavailable ({e}); using the tiny random encoders")
        return build_tiny_components(0)


def main() -> None:
    from sdxl_probe.pipeline.encoding_cache import EncodingCache
    from sdxl_probe.probes.embed.core import EmbedSettings, run_embed
    from sdxl_probe.probes.embed.inputs import toy_pairs

    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    components = load_model()
    pairs = toy_pairs(args.pairs, seed=0)
    settings = EmbedSettings()
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for label in ("cold", "warm"):
            cache = EncodingCache(Path(tmp), components.model_hash())
            t0 = time.perf_counter()
            result = run_embed(components, pairs, settings, cache=cache)
            times.append(time.perf_counter() - t0)
            print(f"{label}: {times[-1]:.2f} s, cache hits {cache.hits}, misses {cache.misses}")
    cold, warm = times
    print(
        f"model {components.kind} ({components.source}), {len(pairs)} pairs, {len(result.drift_samples)} drift samples"
    )
    print(f"cold/warm ratio: {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
