"""Generated caption datasets for the audit tests, with answers counted by simple, separate code.

Every word used is a single CLIP token (checked against the vocabulary, not the BPE), so a
caption's token count is ``words + commas`` and positions need no tokenizer.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

WORDS = ("red", "blue", "green", "cat", "dog", "hat", "sky", "tree", "car", "sun", "girl", "boy")
# A 1x1 PNG: real image bytes without needing PIL to write them.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f00f0004850180848a8c210000000049454e44ae426082"
)


def single_token_words() -> tuple[str, ...]:
    from sdxl_probe.text.vocab import load_vocab

    vocab = load_vocab()
    assert all(w + "</w>" in vocab for w in (*WORDS, "sks"))
    return WORDS


def random_tags(rng: random.Random, n: int) -> list[str]:
    words = single_token_words()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def token_count(tags: list[str]) -> int:
    return sum(len(t.split()) for t in tags) + max(len(tags) - 1, 0)


def tag_spans(tags: list[str]) -> list[tuple[int, int]]:
    """(first, last) 1-based caption token position of every tag."""
    spans, pos = [], 0
    for i, tag in enumerate(tags):
        pos += 1 if i else 0
        first = pos + 1
        pos += len(tag.split())
        spans.append((first, pos))
    return spans


def lost_tags(tags: list[str], limit: int) -> list[str]:
    return [t for t, (_, last) in zip(tags, tag_spans(tags), strict=True) if last > limit]


def write_kohya_folder(root: Path, captions: dict[str, list[str]]) -> None:
    """``root/<dir>/<i>.png`` + ``<i>.txt`` for every caption of every dir."""
    for dirname, caps in captions.items():
        sub = root / dirname
        sub.mkdir(parents=True, exist_ok=True)
        for i, cap in enumerate(caps):
            (sub / f"{i:05d}.png").write_bytes(PNG_1X1)
            (sub / f"{i:05d}.txt").write_text(cap, encoding="utf-8")


def make_captions(seed: int, n: int, max_tags: int = 90) -> list[list[str]]:
    rng = random.Random(seed)
    return [["sks", *random_tags(rng, rng.randint(3, max_tags))] for _ in range(n)]


def expected_tag_frequency(captions: list[str]) -> Counter:
    """sd-scripts set_tag_frequency, rewritten: split on ',', strip, skip empty, lowercase."""
    freq = Counter()
    for cap in captions:
        for piece in cap.split(","):
            if piece.strip():
                freq[piece.strip().lower()] += 1
    return freq
