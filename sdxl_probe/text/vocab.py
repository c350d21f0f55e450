"""The real CLIP BPE vocabulary, read offline from the ``open_clip_torch`` wheel.

The file is located without importing open_clip (which imports torch), so that the
token probe starts in well under a second.

Vocabulary layout (as open_clip's ``SimpleTokenizer`` and OpenAI CLIP build it):
256 byte symbols, the same 256 with ``</w>``, one entry per merge (48,894 merges),
then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 ids in all.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from sdxl_probe.errors import ProbeError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip keeps merges[1 : 49152 - 256 - 2 + 1]: line 0 is the "#version" header.
N_MERGES = 49152 - 256 - 2


def bpe_vocab_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open_clip package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ProbeError("open_clip_torch is not installed; run `make install` (it ships the CLIP BPE vocabulary)")
    path = Path(list(spec.submodule_search_locations)[0]) / BPE_FILE
    if not path.is_file():
        raise ProbeError(f"{path}: CLIP BPE vocabulary missing from the open_clip_torch install; reinstall it")
    return path


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def load_merges() -> tuple[tuple[str, str], ...]:
    """The 48,894 BPE merges, in rank order."""
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    return tuple(tuple(line.split()) for line in lines[1 : N_MERGES + 1])  # type: ignore[misc]


@lru_cache(maxsize=1)
def load_vocab() -> dict[str, int]:
    """Token string -> id, 49,408 entries, with HF/OpenAI names for the special tokens."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in load_merges()]
    vocab += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(vocab)}
