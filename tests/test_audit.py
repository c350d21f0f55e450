"""Caption audit: figures checked against independent counts (tests/audit_data.py)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from collections import Counter

import pytest
from audit_data import (
    PNG_1X1,
    expected_tag_frequency,
    lost_tags,
    make_captions,
    tag_spans,
    token_count,
    write_kohya_folder,
)
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.data.dataset import open_dataset
from sdxl_probe.probes.audit.caption import caption_style, normalize_caption
from sdxl_probe.probes.audit.core import AuditResult, AuditSettings, run_audit

LIMITS = (75, 150, 225)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A 2-folder kohya dataset with duplicates, an empty caption, orphans; audited via the CLI."""
    root = tmp_path_factory.mktemp("ds")
    tags_a, tags_b = make_captions(1, 120), make_captions(2, 80)
    tags_b[5] = [t.upper() for t in tags_a[3]]  # duplicate after normalization (case)
    tags_b[6] = list(tags_a[3])
    caps = {"3_alpha": [", ".join(t) for t in tags_a], "1_beta": [", ".join(t) for t in tags_b]}
    caps["1_beta"][6] = " " + ",   ".join(tags_a[3]) + " "  # duplicate after normalization (spacing)
    write_kohya_folder(root / "data", caps)
    (root / "data/1_beta/empty.png").write_bytes(PNG_1X1)
    (root / "data/1_beta/empty.txt").write_text("")
    (root / "data/1_beta/nocap.png").write_bytes(PNG_1X1)  # trained on class tokens "beta"
    (root / "data/1_beta/orphan.txt").write_text("red cat")
    (root / "data/notanumber").mkdir()
    out = root / "reports"
    res = CliRunner().invoke(
        app, ["audit", str(root / "data"), "--out", str(out), "--name", "t", "--trigger", "sks"]
    )
    assert res.exit_code == 0, res.output
    all_caps = caps["3_alpha"] + caps["1_beta"]
    all_tags = tags_a + tags_b
    return {
        "out": out / "t",
        "caps": caps,
        "tags": all_tags,
        "captions": all_caps,
        "result": AuditResult.load(out / "t"),
    }


def test_token_histogram_and_cuts_match_independent_count(audited):
    stats, tags = audited["result"].stats, audited["tags"]
    expected = Counter(token_count(t) for t in tags) + Counter(
        {0: 1, 1: 1}
    )  # empty caption, class tokens "beta"
    got = {int(k): v for k, v in stats["histograms"]["te1"].items()}
    assert got == dict(expected)
    assert stats["histograms"]["te2"] == stats["histograms"]["te1"]
    for limit in LIMITS:
        n_cut = sum(token_count(t) > limit for t in tags)
        assert stats["cut"][str(limit)]["count"] == n_cut
        assert n_cut > 0 or limit == 225


def test_lost_tags_match_independent_count(audited):
    stats = audited["result"].stats
    for limit in LIMITS:
        expected = Counter(t.lower() for tags in audited["tags"] for t in set(lost_tags(tags, limit)))
        got = dict(stats["lost_tags"][str(limit)])
        for tag, count in got.items():
            assert expected[tag] == count, (limit, tag)
        assert [c for _, c in stats["lost_tags"][str(limit)]] == sorted(expected.values(), reverse=True)[
            : len(got)
        ]


def test_tag_frequency_is_ss_tag_frequency(audited):
    freq = audited["result"].stats["tag_frequency"]
    assert set(freq) == {"3_alpha", "1_beta"}
    assert freq["3_alpha"] == dict(expected_tag_frequency(audited["caps"]["3_alpha"]))
    assert freq["1_beta"] == dict(expected_tag_frequency([*audited["caps"]["1_beta"], "", "beta"]))


def test_pooled_blind_and_trigger(audited):
    stats, tags = audited["result"].stats, audited["tags"]
    occ, blind = Counter(), Counter()
    for caption_tags in tags:
        for t, (first, _) in zip(caption_tags, tag_spans(caption_tags), strict=True):
            occ[t.lower()] += 1
            blind[t.lower()] += first > 75
    expected = {t for t in occ if blind[t] / occ[t] > 0.5}
    got = {row["tag"]: row for row in stats["pooled_blind"]}
    assert set(got) <= expected and got
    for tag, row in got.items():
        assert (row["occurrences"], row["blind"]) == (occ[tag], blind[tag])
    trig = stats["trigger"]
    assert trig["positions"] == {"1": len(tags)} and trig["missing"] == 2  # empty + class-token captions


def test_duplicates_empty_orphans(audited):
    stats = audited["result"].stats
    norm = Counter(normalize_caption(c) for c in audited["captions"])
    assert stats["duplicates"]["extra_copies"] == sum(n - 1 for n in norm.values()) == 2
    assert stats["duplicates"]["top"][0]["count"] == 3
    assert stats["empty"]["count"] == 1 and stats["empty"]["examples"][0].endswith("empty.txt")
    issues = stats["issues"]
    assert issues["image_without_caption"]["count"] == 1
    assert (
        "nocap.png: no '.txt' caption file; trained on class tokens"
        in issues["image_without_caption"]["examples"][0]["message"]
    )
    assert issues["caption_without_image"]["count"] == 1
    assert (
        "orphan.txt: caption file has no image next to it"
        in issues["caption_without_image"]["examples"][0]["message"]
    )
    assert issues["ignored_folder"]["count"] == 1


def test_csv_rows_stream_every_caption(audited):
    with (audited["out"] / "audit.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == audited["result"].n_captions == len(audited["captions"]) + 2
    by_caption = {r["caption"]: r for r in rows}
    for tags in audited["tags"][:50]:
        row = by_caption[", ".join(tags)]
        assert int(row["n_tokens_te1"]) == token_count(tags)
        for limit in LIMITS:
            assert json.loads(row[f"lost_tags_{limit}"]) == lost_tags(tags, limit)
            assert row[f"cut_{limit}"] == str(int(token_count(tags) > limit))


def test_report_page_states_the_figures(audited):
    page = (audited["out"] / "index.html").read_text(encoding="utf-8")
    stats = audited["result"].stats
    for limit in LIMITS:
        assert f"cut at {limit} tokens ({stats['cut'][str(limit)]['count']})" in page
    assert "ss_tag_frequency" in page and "Rule:" in page and "Monte Carlo" in page
    assert "none (text only)" in page


def test_caption_style_rule():
    assert caption_style("1girl, solo, red hat") == "tags"
    assert caption_style("a red circle next to a blue square on a white background") == "sentences"
    assert caption_style("A cat. It sleeps.") == "sentences"
    assert caption_style("sks, a photo of a dog on the beach") == "sentences"
    assert caption_style("sks, dog, beach, a photo of a dog on the beach") == "mixed"
    assert caption_style("  ") == "empty"


def test_result_save_load_roundtrip(audited, tmp_path):
    res = audited["result"]
    res.save(tmp_path)
    assert AuditResult.load(tmp_path / "audit.json") == res


def test_jsonl_and_csv_inputs(tmp_path):
    (tmp_path / "a.png").write_bytes(PNG_1X1)
    (tmp_path / "stray.png").write_bytes(PNG_1X1)
    lines = [{"file_name": "a.png", "text": "red cat, blue dog"}, {"file_name": "missing.png", "text": "sky"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "caps.csv").write_text('file_name,caption\na.png,"red cat, blue dog"\nmissing.png,sky\n')
    for name in ("metadata.jsonl", "caps.csv"):
        ds = open_dataset(tmp_path / name)
        res = run_audit(ds, tmp_path / name.split(".")[0], AuditSettings(), name="x", header={"title": "x"})
        assert res.n_captions == 2 and res.stats["histograms"]["te1"] == {"1": 1, "5": 1}
        issues = res.stats["issues"]
        assert "image 'missing.png' not found" in issues["caption_without_image"]["examples"][0]["message"]
        assert issues["image_without_caption"]["examples"][0]["path"].endswith("stray.png")


def test_shuffle_probabilities_reported(tmp_path):
    """Monte Carlo on captions whose flex tags are all "red cat": every order is the same caption.

    Oracle: arithmetic. "sks" (1 token) stays first; the k-th "red cat" ends at token 1 + 3k (", red cat"
    is 3 tokens), so it is cut at 75 when k >= 25, in every random order.
    """
    rng = random.Random(5)
    counts = [rng.randint(20, 40) for _ in range(20)]
    caps = {"2_x": [", ".join(["sks", *("red cat" for _ in range(n))]) for n in counts]}
    write_kohya_folder(tmp_path / "d", caps)
    ds = open_dataset(tmp_path / "d", cli_defaults={"shuffle_caption": True, "keep_tokens": 1})
    res = run_audit(
        ds, tmp_path / "o", AuditSettings(seed=3, shuffle_samples=16), name="x", header={"title": "x"}
    )
    sh = res.stats["shuffle"]
    assert sh["method"]["monte_carlo"] > 0 and sh["seed"] == 3 and sh["samples"] == 16
    rows = {r["tag"]: r for r in sh["tables"]["75"]}
    assert "sks" not in rows  # kept by keep_tokens=1, always first
    cut = sum(max(0, n - 24) for n in counts)
    assert rows["red cat"]["occurrences"] == sum(counts)
    assert rows["red cat"]["mean_prob"] == pytest.approx(cut / sum(counts), abs=1e-12)
    assert rows["red cat"]["expected_cut"] == pytest.approx(cut, abs=1e-9)


def test_exact_shuffle_probabilities_equal_enumeration_of_every_order(tmp_path):
    """``audit`` with shuffle_caption and keep_tokens=1 on a caption with 6 distinct flex tags.

    Oracle: every one of the 720 orders rejoined as sd-scripts does, tokenized for real, and each
    tag's position read from token spans (``_brute_force`` of test_audit_core).
    """
    from test_audit_core import _brute_force

    rng = random.Random(11)
    words = ["red", "cat", "blue", "dog", "sky", "tree", "sun", "moon"]
    flex = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) + f" t{i}" for i in range(6)]
    caption = ", ".join(["sks", *flex])
    write_kohya_folder(tmp_path / "d", {"1_x": [caption]})
    ds = open_dataset(tmp_path / "d", cli_defaults={"shuffle_caption": True, "keep_tokens": 1})
    res = run_audit(ds, tmp_path / "o", AuditSettings(seed=0), name="x", header={"title": "x"})
    sh = res.stats["shuffle"]
    assert sh["method"] == {"exact": len(sh["limits"])}
    expected = dict(zip(["sks", *flex], _brute_force(caption, 1, 75), strict=True))
    assert 0 < sum(expected.values()) < len(flex)  # the cut falls among the flex tags
    got = {r["tag"]: r["mean_prob"] for r in sh["tables"]["75"]}
    assert got == pytest.approx({t: p for t, p in expected.items() if p > 0}, abs=1e-12)


def test_report_rerenders_from_saved_files_without_torch(audited):
    page = audited["out"] / "index.html"
    page.unlink()
    code = (
        "import sys; from sdxl_probe.reports import render_report; "
        f"p = render_report('audit', {str(audited['out'])!r}); "
        "print(p.name, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["index.html", "False", "False"]
    assert page.is_file()


def test_shuffle_with_tag_dropout_simulates_the_pipeline(tmp_path):
    caps = {"1_x": [", ".join(["sks", *(f"red cat {w}" for w in "abcdefghijklmnopqrst")])]}
    write_kohya_folder(tmp_path / "d", caps)
    opts = {"shuffle_caption": True, "keep_tokens": 1, "caption_tag_dropout_rate": 0.5}
    res = run_audit(open_dataset(tmp_path / "d", cli_defaults=opts), tmp_path / "o",
                    AuditSettings(shuffle_samples=32), name="x", header={"title": "x"})  # fmt: skip
    sh = res.stats["shuffle"]
    assert sh["pipeline_captions"] == 1 and sh["method"] == {"monte_carlo": 1}
    assert all(0 <= r["mean_prob"] < 1 for r in sh["tables"]["75"])
