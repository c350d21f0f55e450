"""Audit tokenization speed vs transformers' CLIPTokenizer batch call (issue #4, goal >= 10x HF).

Generates 100k synthetic tag captions (about 75 tokens each) from a realistic, heavily repeated
tag vocabulary (Zipf-distributed, as booru-style datasets are), then times on the same captions:

* HF: ``CLIPTokenizer(captions, add_special_tokens=False)``, one batch call (Rust, all cores), best of 2;
* audit BPE: ``ClipBPE.encode`` caption by caption, fresh instance (cold word cache);
* audit path: the per-tag layout the audit really runs (``tag_layout`` on a ``CachedEncoder``:
  ids of every tag plus the check that they join to the caption's ids).

Every caption's ids must be identical between HF and the audit BPE. Prints captions/s and ratios
for a first pass (cold caches) and the best of two passes (the machine is shared).
Run: ``.venv/bin/python benchmarks/bench_audit.py [--n 100000]``.
"""

from __future__ import annotations

import argparse
import random
import time

SUBJECTS = ["hair", "eyes", "dress", "shirt", "skirt", "hat", "shoes", "sky", "background", "flower", "ribbon",
            "gloves", "jacket", "bow", "cloud", "tree", "water", "smile", "boots", "necklace"]  # fmt: skip
MODIFIERS = ["red", "blue", "green", "long", "short", "white", "black", "yellow", "pink", "purple", "open",
             "closed", "striped", "frilled", "sleeveless", "floating", "looking", "detailed", "night", "sunny"]  # fmt: skip
EXTRA = ["1girl", "solo", "masterpiece", "best quality", "looking at viewer", "outdoors", "indoors", "upper body",
         "full body", "simple background", "from side", "cowboy shot", "blush", "open mouth", "holding umbrella"]  # fmt: skip


def make_vocab(rng: random.Random) -> list[str]:
    tags = EXTRA + [f"{m} {s}" for m in MODIFIERS for s in SUBJECTS]
    tags += [f"{m} {n} {s}" for m, n, s in zip(rng.choices(MODIFIERS, k=600), rng.choices(MODIFIERS, k=600),
                                                rng.choices(SUBJECTS, k=600), strict=True)]  # fmt: skip
    return sorted(set(tags))


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` tag captions of about 75 tokens, tags drawn with Zipf-like weights."""
    rng = random.Random(seed)
    vocab = make_vocab(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    caps = []
    for _ in range(n):
        tags = rng.choices(vocab, weights=weights, k=rng.randint(15, 24))
        caps.append(", ".join(["sks", *tags]))
    return caps


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()

    from sdxl_probe.models.tokenizers import build_clip_tokenizer
    from sdxl_probe.probes.audit.caption import CachedEncoder, tag_layout
    from sdxl_probe.text.bpe import ClipBPE

    caps = make_captions(args.n)
    hf = build_clip_tokenizer("eos")
    hf_ids, t_hf = timed(lambda: hf(caps, add_special_tokens=False)["input_ids"])
    t_hf = min(t_hf, timed(lambda: hf(caps, add_special_tokens=False))[1])  # best of 2: the machine is shared
    bpe = ClipBPE()
    our_ids, t_bpe_cold = timed(lambda: [bpe.encode(c) for c in caps])  # cold word cache
    t_bpe = min(t_bpe_cold, timed(lambda: [bpe.encode(c) for c in caps])[1])
    enc = CachedEncoder()
    layouts, t_lay_cold = timed(lambda: [tag_layout(c, ",", enc) for c in caps])
    t_lay = min(t_lay_cold, timed(lambda: [tag_layout(c, ",", enc) for c in caps])[1])

    mismatch = sum(a != b for a, b in zip(hf_ids, our_ids, strict=True))
    n_tok = sum(len(x) for x in our_ids) / len(caps)
    exact = sum(lay is not None for lay in layouts)
    print(
        f"captions: {len(caps):,}  mean tokens: {n_tok:.1f}  ids identical to HF: {len(caps) - mismatch:,}/{len(caps):,}"
    )
    print(f"HF CLIPTokenizer batch : {len(caps) / t_hf:10,.0f} captions/s  ({t_hf:.2f} s)")
    for name, cold, best in (
        ("audit ClipBPE.encode", t_bpe_cold, t_bpe),
        ("audit per-tag layout", t_lay_cold, t_lay),
    ):
        print(f"{name:23s}: {len(caps) / best:10,.0f} captions/s  ({best:.2f} s)  ratio {t_hf / best:.1f}x;"
              f"  first pass, cold cache: {len(caps) / cold:,.0f}/s, ratio {t_hf / cold:.1f}x")  # fmt: skip
    print(f"per-tag layout took the exact fast path on {exact:,} captions")
    if mismatch:
        raise SystemExit(f"{mismatch} captions tokenized differently from HF")


if __name__ == "__main__":
    main()
