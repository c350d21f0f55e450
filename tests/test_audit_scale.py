"""Audit at scale: a 10k-caption kohya folder (acceptance run) and streaming memory."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections import Counter

import pytest
from audit_data import (
    WORDS,
    expected_tag_frequency,
    lost_tags,
    make_captions,
    token_count,
    write_kohya_folder,
)
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.probes.audit.core import AuditResult, AuditSettings, run_audit

pytestmark = pytest.mark.slow


def test_10k_kohya_folder_figures_match_independent_count(tmp_path, capsys):
    tags = make_captions(11, 10_000, max_tags=80)
    caps = [", ".join(t) for t in tags]
    write_kohya_folder(tmp_path / "data", {"5_sks": caps[:6000], "2_style": caps[6000:]})
    start = time.perf_counter()
    args = ["audit", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--name", "big", "--trigger", "sks",
            "--shuffle", "--keep-tokens", "1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    elapsed = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    with capsys.disabled():
        print(f"\n10k-caption kohya audit (CLI, report included): {elapsed:.1f} s wall")
    stats = AuditResult.load(tmp_path / "r/big").stats
    assert {int(k): v for k, v in stats["histograms"]["te1"].items()} == Counter(token_count(t) for t in tags)
    for limit in (75, 150, 225):
        assert stats["cut"][str(limit)]["count"] == sum(token_count(t) > limit for t in tags)
        top_tag, top_count = (
            stats["lost_tags"][str(limit)][0] if stats["lost_tags"][str(limit)] else (None, 0)
        )
        if top_tag:
            assert top_count == sum(top_tag in {x.lower() for x in lost_tags(t, limit)} for t in tags)
    assert stats["tag_frequency"]["5_sks"] == dict(expected_tag_frequency(caps[:6000]))
    assert stats["trigger"]["positions"] == {"1": 10_000}
    assert (tmp_path / "r/big/index.html").stat().st_size > 10_000


def _peak_bytes(path, n: int, tmp_path) -> int:
    # One-word tags from a 12-word vocabulary: per-tag counters stay tiny, captions stay unique.
    rng = random.Random(n)
    lines = [json.dumps({"text": ", ".join(rng.choices(WORDS, k=rng.randint(30, 60)))}) for _ in range(n)]
    path.write_text("\n".join(lines) + "\n")
    ds = open_dataset(path)
    tracemalloc.start()
    run_audit(ds, tmp_path / path.stem, AuditSettings(), name="m", header={"title": "m"})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_audit_streams_without_keeping_token_lists(tmp_path):
    _peak_bytes(tmp_path / "warmup.jsonl", 300, tmp_path)  # vocabulary, BPE and word caches load once
    small = _peak_bytes(tmp_path / "small.jsonl", 500, tmp_path)
    large = _peak_bytes(tmp_path / "large.jsonl", 2000, tmp_path)
    per_caption = (large - small) / 1500
    # Keeping each caption's ~100 token ids alive would cost > 1 KB per caption; the audit keeps
    # one duplicate-detection hash (~100 B) per distinct caption.
    assert per_caption < 400, f"{per_caption:.0f} bytes retained per caption"
