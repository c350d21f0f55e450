"""The audit's per-caption analysis versus HF ``CLIPTokenizer`` doing the same work (issue #10, goal >= 10x).

Generates 100k synthetic tag captions (about 70 tokens each) from a realistic, heavily repeated
tag vocabulary (Zipf-distributed, as booru-style datasets are), then times, on the same captions,
the work ``sdxl-probe audit`` does per caption (``_RunContext.audit_record`` minus statistics,
CSV and shuffles): token count and every tag's first/last context position.

* ours: ``tag_layout`` + ``audit_tag_layout`` on a ``CachedEncoder`` (the span tokenizer
  ``tokenize_caption`` + ``audit_caption`` when the layout is not exact, as the audit does),
  giving a full ``CaptionAudit`` (also lost tags, trigger position, kept end, style);
* HF: ``CLIPTokenizer.from_pretrained(<shipped tokenizer folder>)``, one batch call on every
  caption (ids, token count) and one on every distinct tag (a dict cache any user would add, as
  ours caches tags too), positions as running sums of the tag token counts plus the separator's.

Each contender runs in its own subprocess, single-threaded (``TOKENIZERS_PARALLELISM=false``,
``RAYON_NUM_THREADS=1``, ``OMP_NUM_THREADS=1``), alternating which goes first between
repetitions. Cold: from a started process with imports done, tokenizer load plus the first
pass (fresh caches). Warm: a second pass in the same process (after the cold pass warmed it
up). Medians over repetitions, of wall seconds and of CPU seconds (``process_time``: all threads
of the child; on a shared machine wall time also counts waiting for a core). Exit status 1 when any caption's ids differ from HF's (ours:
``ClipBPE.encode``; synthetic captions are text open_clip's cleaning leaves unchanged), or when
a token count or tag position differs.

    .venv/bin/python benchmarks/bench_audit.py [--n 100000] [--reps 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBJECTS = ["hair", "eyes", "dress", "shirt", "skirt", "hat", "shoes", "sky", "background", "flower", "ribbon",
            "gloves", "jacket", "bow", "cloud", "tree", "water", "smile", "boots", "necklace"]  # fmt: skip
MODIFIERS = ["red", "blue", "green", "long", "short", "white", "black", "yellow", "pink", "purple", "open",
             "closed", "striped", "frilled", "sleeveless", "floating", "looking", "detailed", "night", "sunny"]  # fmt: skip
EXTRA = ["1girl", "solo", "masterpiece", "best quality", "looking at viewer", "outdoors", "indoors", "upper body",
         "full body", "simple background", "from side", "cowboy shot", "blush", "open mouth", "holding umbrella"]  # fmt: skip
TRIGGER, KEEP_TOKENS, SEPARATOR = "sks", 1, ","
SINGLE_THREAD = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
TOKENIZER_DIR = (
    Path(__file__).resolve().parents[1] / "sdxl_probe" / "models" / "configs" / "sdxl_base" / "tokenizer"
)


def make_vocab(rng: random.Random) -> list[str]:
    tags = EXTRA + [f"{m} {s}" for m in MODIFIERS for s in SUBJECTS]
    tags += [f"{m} {n} {s}" for m, n, s in zip(rng.choices(MODIFIERS, k=600), rng.choices(MODIFIERS, k=600),
                                                rng.choices(SUBJECTS, k=600), strict=True)]  # fmt: skip
    return sorted(set(tags))


def make_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` tag captions of about 70 tokens, tags drawn with Zipf-like weights."""
    rng = random.Random(seed)
    vocab = make_vocab(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    caps = []
    for _ in range(n):
        tags = rng.choices(vocab, weights=weights, k=rng.randint(15, 24))
        caps.append(", ".join([TRIGGER, *tags]))
    return caps


def ours_pass(caps: list[str], enc) -> list[tuple[int, list, list]]:
    """Audit every caption with the audit's ``CachedEncoder`` ``enc`` as ``_RunContext.audit_record`` does."""
    from sdxl_probe.probes.audit.caption import audit_caption, audit_tag_layout, tag_layout
    from sdxl_probe.probes.audit.core import LIMITS
    from sdxl_probe.text.tokens import tokenize_caption

    out = []
    for c in caps:
        lay = tag_layout(c, SEPARATOR, enc)
        if lay is not None:
            a = audit_tag_layout(c, lay, limits=LIMITS, trigger=TRIGGER, keep_tokens=KEEP_TOKENS,
                                 separator=SEPARATOR, encode=enc)  # fmt: skip
        else:
            tc = tokenize_caption(c, separator=SEPARATOR)
            a = audit_caption(
                tc, limits=LIMITS, trigger=TRIGGER, keep_tokens=KEEP_TOKENS, separator=SEPARATOR
            )
        out.append((a.n_tokens["te1"], a.tag_first, a.tag_last))
    return out


def hf_pass(caps: list[str], tokenizer_dir: Path) -> tuple[list[tuple[int, list, list]], list[list[int]]]:
    """Load HF CLIPTokenizer; tokenize every caption and every tag; positions from the tag counts."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=10**6)
    ids = tok(caps, add_special_tokens=False)["input_ids"]
    per_caption = [[t.strip() for t in c.split(SEPARATOR)] for c in caps]
    distinct = list(dict.fromkeys(t for tags in per_caption for t in tags))  # each tag tokenized once
    count = dict(zip(distinct, map(len, tok(distinct, add_special_tokens=False)["input_ids"]), strict=True))
    n_sep = len(tok(SEPARATOR, add_special_tokens=False)["input_ids"])
    out = []
    for caption_ids, tags in zip(ids, per_caption, strict=True):
        lengths = [count[t] for t in tags]
        ends = [end - n_sep for end in itertools.accumulate(n + n_sep for n in lengths)]
        out.append((len(caption_ids), [e - n + 1 if n else None for e, n in zip(ends, lengths, strict=True)],
                    [e if n else None for e, n in zip(ends, lengths, strict=True)]))  # fmt: skip
    return out, ids


def child(contender: str, n: int, out_path: str | None) -> None:
    """Time one contender cold (tokenizer load + first pass) and warm (second pass); print a RESULT line."""
    caps = make_captions(n)
    if contender == "ours":
        from sdxl_probe.probes.audit.caption import CachedEncoder  # imports are not timed

        clock = _Clock()
        enc = CachedEncoder()  # loads the BPE vocabulary: its caches start empty
        first = ours_pass(caps, enc)
        cold = clock.lap()
        second = ours_pass(caps, enc)
    else:
        import transformers  # noqa: F401

        clock = _Clock()
        first = hf_pass(caps, TOKENIZER_DIR)
        cold = clock.lap()
        second = hf_pass(caps, TOKENIZER_DIR)
    warm = clock.lap()
    if second != first:
        raise SystemExit(f"{contender}: the warm pass differs from the cold pass")
    if out_path:
        ids = _our_ids(caps) if contender == "ours" else first[1]
        with open(out_path, "wb") as f:
            pickle.dump({"analysis": first if contender == "ours" else first[0], "ids": ids}, f)
    print(f"RESULT {cold[0]} {cold[1]} {warm[0]} {warm[1]}")


class _Clock:
    """Wall and CPU seconds (all threads of this process) since the last lap."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def _our_ids(caps: list[str]) -> list[list[int]]:
    from sdxl_probe.text.bpe import get_bpe

    encode = get_bpe().encode
    return [encode(c) for c in caps]


def measure(contender: str, n: int, out_path: str | None) -> list[float]:
    """[cold wall, cold CPU, warm wall, warm CPU] seconds of one contender in a fresh process."""
    env = {**os.environ, **SINGLE_THREAD, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, __file__, "--child", contender, "--n", str(n)] + (
        ["--out", out_path] if out_path else []
    )
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0:
        raise SystemExit(f"{contender} child failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return [float(x) for x in line.split()[1:]]


def compare(ours_file: Path, hf_file: Path) -> tuple[int, int]:
    """(captions whose ids differ, captions whose token count or tag positions differ)."""
    ours, hf = (pickle.loads(p.read_bytes()) for p in (ours_file, hf_file))
    bad_ids = sum(a != b for a, b in zip(ours["ids"], hf["ids"], strict=True))
    bad_analysis = sum(a != b for a, b in zip(ours["analysis"], hf["analysis"], strict=True))
    return bad_ids, bad_analysis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="captions")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (each: one process per contender)")
    parser.add_argument("--child", choices=("ours", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.out)
    times: dict[str, list[list[float]]] = {"ours": [], "hf": []}
    with tempfile.TemporaryDirectory() as tmp:
        files = {c: Path(tmp) / f"{c}.pkl" for c in times}
        for rep in range(args.reps):
            order = ("ours", "hf") if rep % 2 == 0 else ("hf", "ours")
            for c in order:
                times[c].append(measure(c, args.n, str(files[c]) if rep == 0 else None))
            print(f"rep {rep + 1}/{args.reps} ({' then '.join(order)}): "
                  + ", ".join(f"{c} cold {t[-1][0]:.2f} s (CPU {t[-1][1]:.2f}) warm {t[-1][2]:.2f} s (CPU {t[-1][3]:.2f})"
                              for c, t in times.items()))  # fmt: skip
        bad_ids, bad_analysis = compare(files["ours"], files["hf"])
    caps = make_captions(args.n)
    n_tags = sum(c.count(SEPARATOR) + 1 for c in caps) / len(caps)
    med = {c: [statistics.median(t[i] for t in ts) for i in range(4)] for c, ts in times.items()}
    print(
        f"{args.n:,} captions ({n_tags:.1f} tags each), single-threaded, medians of {args.reps}, order alternated"
    )
    for i, label in enumerate(("cold (tokenizer load + first pass)", "warm (second pass)")):
        (o, o_cpu), (h, h_cpu) = med["ours"][2 * i : 2 * i + 2], med["hf"][2 * i : 2 * i + 2]
        print(f"audit per-caption analysis, {label:34s}: ours {o:5.2f} s ({args.n / o:7,.0f} captions/s)  "
              f"HF {h:5.2f} s ({args.n / h:6,.0f}/s)  ratio {h / o:4.1f}x wall, {h_cpu / o_cpu:4.1f}x CPU "
              f"(ours {o_cpu:.2f} s, HF {h_cpu:.2f} s; goal >= 10x)")  # fmt: skip
    print(f"ids identical to HF: {args.n - bad_ids:,}/{args.n:,}; token counts and tag positions identical: "
          f"{args.n - bad_analysis:,}/{args.n:,}")  # fmt: skip
    if bad_ids or bad_analysis:
        raise SystemExit(
            f"mismatch: {bad_ids} captions' ids, {bad_analysis} captions' analysis differ from HF"
        )


if __name__ == "__main__":
    main()
