"""Throughput of ClipBPE.encode against HF CLIPTokenizer's batch call on tag captions.

Goal (issue #2 / token audit): ClipBPE >= 10x the HF batch call on ~75-token tag captions.
Captions are unique; tags repeat across them, as in real datasets. Prints captions/s and ratios.
"""

from __future__ import annotations

import random
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


def rate(fn, captions: list[str]) -> float:
    """Captions per second of ``fn(captions)``."""
    start = time.perf_counter()
    fn(captions)
    return len(captions) / (time.perf_counter() - start)


def each(fn):
    """Apply ``fn`` to every caption without keeping results (as a streaming audit does)."""

    def run(captions: list[str]) -> None:
        for c in captions:
            fn(c)

    return run


def main() -> None:
    from sdxl_probe.models.tokenizers import build_clip_tokenizer
    from sdxl_probe.text.bpe import ClipBPE
    from sdxl_probe.text.tokens import tokenize_caption

    captions = tag_captions(N_CAPTIONS)
    hf = build_clip_tokenizer("eos", model_max_length=1000)  # no length warnings: we time, not truncate
    bpe = ClipBPE()
    mean_tokens = sum(len(bpe.encode(c)) for c in captions[:500]) / 500
    bpe = ClipBPE()  # fresh caches for the cold run
    hf_rate = rate(lambda cs: hf(cs, padding="max_length", max_length=77, truncation=True), captions)
    cold = rate(each(bpe.encode), captions)
    warm = rate(each(bpe.encode), captions)
    spans = rate(each(bpe.encode_with_spans), captions)
    tokenized = rate(each(tokenize_caption), captions)
    same = all(h[1:-1] == bpe.encode(c) for h, c in zip(hf(captions[:500]).input_ids, captions[:500], strict=True))
    print(f"{N_CAPTIONS} unique tag captions, {mean_tokens:.1f} tokens on average; ids equal HF: {same}")
    print(f"HF CLIPTokenizer batch call : {hf_rate:9.0f} captions/s")
    print(f"ClipBPE.encode, cold caches : {cold:9.0f} captions/s ({cold / hf_rate:.1f}x HF)")
    print(f"ClipBPE.encode, warm caches : {warm:9.0f} captions/s ({warm / hf_rate:.1f}x HF, goal >= 10x)")
    print(f"ClipBPE.encode_with_spans   : {spans:9.0f} captions/s ({spans / hf_rate:.1f}x HF)")
    print(f"tokenize_caption (Tokens)   : {tokenized:9.0f} captions/s ({tokenized / hf_rate:.1f}x HF)")


if __name__ == "__main__":
    main()
