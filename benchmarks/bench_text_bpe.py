"""Throughput of ClipBPE.encode against HF CLIPTokenizer's batch call on tag captions.

Goal (issue #2 / token audit): ClipBPE >= 10x the HF batch call on ~75-token tag captions.
Captions are unique; tags repeat across them, as in real datasets. Both sides produce the same
thing: unpadded, untruncated ids without BOS/EOS (``add_special_tokens=False``). HF runs
single-threaded (``TOKENIZERS_PARALLELISM=false``, ``RAYON_NUM_THREADS=1``), after a warm-up
call on other captions; ours cold is a fresh ``ClipBPE`` (empty caches, vocabulary load
included), warm is a second pass. Medians of 3; every caption's ids must equal HF's, else the
exit status is 1.
"""

from __future__ import annotations

import os
import random
import statistics
import time

N_CAPTIONS = 20000
WORDS = (
    "hair eyes long short blue red green smile dress skirt shirt sky cloud outdoors indoors standing "
    "sitting looking viewer solo girl boy cat dog tree flower water beach city night day sun moon "
    "holding sword hat bow ribbon jacket gloves boots"
).split()


def tag_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` unique captions of 30 tags drawn from 3,000 tags of 1-3 words (~80 tokens each)."""
    rng = random.Random(seed)
    tags = [" ".join(rng.sample(WORDS, rng.choice([1, 1, 2, 2, 3]))) for _ in range(3000)]
    return [", ".join(rng.sample(tags, 30)) for _ in range(n)]


def seconds(fn, captions: list[str]) -> float:
    """Wall seconds of ``fn(captions)``."""
    start = time.perf_counter()
    fn(captions)
    return time.perf_counter() - start


def each(fn):
    """Apply ``fn`` to every caption without keeping results (as a streaming audit does)."""

    def run(captions: list[str]) -> None:
        for c in captions:
            fn(c)

    return run


def main() -> None:
    os.environ.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1")  # before tokenizers loads
    from sdxl_probe.models.tokenizers import build_clip_tokenizer
    from sdxl_probe.text.bpe import ClipBPE
    from sdxl_probe.text.tokens import tokenize_caption

    captions = tag_captions(N_CAPTIONS)
    hf = build_clip_tokenizer("eos", model_max_length=10**6)  # no length warnings: nothing is truncated
    hf(tag_captions(200, seed=1), add_special_tokens=False)  # warm-up
    hf_ids = hf(captions, add_special_tokens=False)["input_ids"]
    ours = ClipBPE().encode
    bad = sum(ours(c) != h for c, h in zip(captions, hf_ids, strict=True))
    mean_tokens = sum(map(len, hf_ids)) / len(hf_ids)
    t = {k: [] for k in ("hf", "cold", "warm", "spans", "tokens")}
    for rep in range(3):
        for side in ("hf", "ours") if rep % 2 == 0 else ("ours", "hf"):
            if side == "hf":
                t["hf"].append(seconds(lambda cs: hf(cs, add_special_tokens=False), captions))
                continue
            start = time.perf_counter()
            bpe = ClipBPE()  # fresh caches, vocabulary load included
            each(bpe.encode)(captions)
            t["cold"].append(time.perf_counter() - start)
            t["warm"].append(seconds(each(bpe.encode), captions))
            t["spans"].append(seconds(each(bpe.encode_with_spans), captions))
            t["tokens"].append(seconds(each(tokenize_caption), captions))
    med = {k: statistics.median(v) for k, v in t.items()}
    rate = {k: N_CAPTIONS / v for k, v in med.items()}
    print(
        f"{N_CAPTIONS} unique tag captions, {mean_tokens:.1f} tokens on average, medians of 3, HF single-threaded"
    )
    print(f"HF CLIPTokenizer batch call (unpadded) : {rate['hf']:9.0f} captions/s")
    print(
        f"ClipBPE.encode, cold (fresh instance)  : {rate['cold']:9.0f} captions/s ({rate['cold'] / rate['hf']:.1f}x HF)"
    )
    print(
        f"ClipBPE.encode, warm caches            : {rate['warm']:9.0f} captions/s ({rate['warm'] / rate['hf']:.1f}x HF, goal >= 10x)"
    )
    print(
        f"ClipBPE.encode_with_spans, warm        : {rate['spans']:9.0f} captions/s ({rate['spans'] / rate['hf']:.1f}x HF)"
    )
    print(
        f"tokenize_caption (Tokens), warm        : {rate['tokens']:9.0f} captions/s ({rate['tokens'] / rate['hf']:.1f}x HF)"
    )
    print(f"ids identical to HF (unpadded): {N_CAPTIONS - bad}/{N_CAPTIONS}")
    if bad:
        raise SystemExit(f"{bad} captions tokenized differently from HF")


if __name__ == "__main__":
    main()
