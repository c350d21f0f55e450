"""The result files, the recommendation rule and the report, on hand-built results (no model, no torch work).

Oracles: the rule as the report states it, applied by hand to made-up checkpoint figures; the saved JSON and
CSV read back field by field; HTML escaping of a hostile caption (the report layer's autoescape).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from sdxl_probe.probes.memorization import compare
from sdxl_probe.probes.memorization.report import render_report
from sdxl_probe.probes.memorization.result import MemorizationResult
from sdxl_probe.reports import render_report as render_kind

HOSTILE = '<script>alert("x")</script> & <img src=x onerror=1>'


def ckpt(step: int, headline: float, val: float | None) -> dict:
    return {"step": step, "file": f"lora-step{step:08d}.safetensors", "sha256": "0" * 64,
            "scores": {compare.HEADLINE: headline, "diversity": -headline}, "held_out": {compare.HEADLINE: [0.01]},
            "val_loss": val, "train_loss": 0.1, "membership_auc": 0.5, "split_auc": {compare.HEADLINE: 1.0}}  # fmt: skip


def test_recommendation_is_the_last_improving_checkpoint_before_the_crossing():
    """Oracle, by hand: threshold 0.05; headline crosses at step 300; of steps 100 and 200, validation loss
    improves at both, so 200. If step 200's validation loss rose, 100. If step 100 crosses already, 100 is kept
    and the rule says to train less. If nothing crosses, the last improving checkpoint."""
    ck = [ckpt(100, 0.01, 0.5), ckpt(200, 0.04, 0.4), ckpt(300, 0.2, 0.3)]
    rec = compare.recommend(ck, 0.05, "test")
    assert (rec["step"], rec["crossed_at"]) == (200, 300)
    ck[1]["val_loss"] = 0.6
    assert compare.recommend(ck, 0.05, "test")["step"] == 100
    early = compare.recommend([ckpt(100, 0.3, 0.5), ckpt(200, 0.4, 0.4)], 0.05, "test")
    assert early["step"] == 100 and "train less" in early["rule"]
    assert compare.recommend([ckpt(100, 0.0, None), ckpt(200, 0.01, None)], 0.05, "test")["step"] == 200


def test_threshold_is_the_held_out_99th_percentile_else_the_base_spread():
    """Oracle: numpy.percentile(..., 99) of the pooled held-out values; without held-out images, of the base gaps."""
    ck = [ckpt(1, 0.0, None), ckpt(2, 0.0, None)]
    ck[0]["held_out"][compare.HEADLINE] = [0.01, 0.03]
    ck[1]["held_out"][compare.HEADLINE] = [0.02, 0.10]
    limit, how = compare.threshold(ck, [5.0])
    assert limit == pytest.approx(np.percentile([0.01, 0.03, 0.02, 0.10], 99)) and "held-out" in how
    for c in ck:
        c["held_out"] = {}
    limit, how = compare.threshold(ck, [0.1, 0.3])
    assert limit == pytest.approx(np.percentile([0.1, 0.3], 99)) and "seed-to-seed" in how


def test_lora_minus_base_orients_each_score():
    """Oracle: the sign table. A LoRA whose generations come 0.1 closer (nearest L2 0.2 -> 0.1) scores +0.1 on
    copy_tiled_l2; a loss falling from 0.3 to 0.2 scores +0.1 on loss_gap; diversity keeps LoRA minus base."""
    lora = {"nearest_l2": 0.1, "loss": 0.2, "diversity": 0.05, "copy_cosine": 0.9}
    base = {"nearest_l2": 0.2, "loss": 0.3, "diversity": 0.15, "copy_cosine": 0.7}
    got = compare.lora_minus_base(lora, base)
    assert got == pytest.approx({"copy_tiled_l2": 0.1, "loss_gap": 0.1, "diversity": -0.1, "copy_cosine": 0.2})


PANELS = ("training", "last", "recommended", "base")


def panels(folder, i: int) -> dict[str, str]:
    """One 8 x 8 PNG per panel, each a distinct flat colour (so a row's pictures can be told apart)."""
    (folder / "images").mkdir(exist_ok=True)
    names = {}
    for k, panel in enumerate(PANELS):
        names[panel] = f"images/{i:05d}_{panel}.png"
        Image.fromarray(np.full((8, 8, 3), (40 * i, 60 * k, 7), dtype=np.uint8)).save(folder / names[panel])
    return names


def made_result(tmp_path) -> MemorizationResult:
    ck = [ckpt(100, 0.01, 0.5), ckpt(200, 0.2, 0.4)]
    head = compare.HEADLINE
    images = [{"file": "a.png", "caption": HOSTILE, "split": "train", "base": {"nearest_l2": 0.3},
               "scores": {"100": {head: 0.01}, "200": {head: float("nan")}}, "panels": panels(tmp_path, 0)},
              {"file": "b.png", "caption": "held", "split": "held-out", "base": {}, "scores": {"100": {}, "200": {}},
               "panels": panels(tmp_path, 1)},
              {"file": "c.png", "caption": "low", "split": "train", "base": {},
               "scores": {"100": {head: 0.5}, "200": {head: -0.05}}, "panels": panels(tmp_path, 2)},
              {"file": "d.png", "caption": "high", "split": "train", "base": {},
               "scores": {"100": {head: 0.0}, "200": {head: 0.3}}, "panels": panels(tmp_path, 3)},
              {"file": "e.png", "caption": "middle", "split": "held-out", "base": {},
               "scores": {"100": {head: 0.0}, "200": {head: 0.02}}, "panels": panels(tmp_path, 4)}]  # fmt: skip
    return MemorizationResult(toy_model=True, headline=compare.HEADLINE, checkpoints=ck,
                              recommended=compare.recommend(ck, 0.05, "test"), images=images,
                              model={"source": "toy", "kind": "toy", "is_toy": True}, settings={"seeds": 8},
                              directions=dict(compare.DIRECTION), source=HOSTILE)  # fmt: skip


def test_save_load_round_trip_and_csv(tmp_path):
    """Oracle: every field read back equal; NaN saved as JSON null (strict JSON); one CSV row per (step, image)."""
    result = made_result(tmp_path)
    result.save(tmp_path)
    text = (tmp_path / "memorization.json").read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    back = MemorizationResult.load(tmp_path)
    assert back.kind == "memorization" and back.toy_model and back.headline == compare.HEADLINE
    assert back.checkpoints[1]["scores"] == result.checkpoints[1]["scores"]
    assert back.images[0]["scores"]["200"][compare.HEADLINE] is None
    assert back.image_scores(100, compare.HEADLINE, "train") == [0.01, 0.5, 0.0]  # a, c, d in image order
    assert back.image_scores(200, compare.HEADLINE, "train") == [-0.05, 0.3]  # a's NaN (null) is left out
    rows = list(csv.reader(io.StringIO((tmp_path / "memorization.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 1 + 2 * 5 and rows[1][:4] == ["100", "train", "a.png", HOSTILE]


def test_report_escapes_captions_and_says_toy_model(tmp_path):
    """Oracle: the hostile caption appears only HTML-escaped; the page says "toy model"; the kind table reaches it."""
    made_result(tmp_path).save(tmp_path)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "<script>alert" not in page and "onerror=1>" not in page
    assert "&lt;script&gt;" in page
    assert "toy model" in page
    assert "Keep step 100" in page
    assert render_kind("memorization", tmp_path).name == "memorization.html"


def test_training_report_links_to_the_memorization_report_when_it_exists(tmp_path):
    """Oracle: the link appears exactly when RUN_DIR/memorization/memorization.html exists (a path check)."""
    from sdxl_probe.train.lora.report import render_report as render_train

    (tmp_path / "config.json").write_text(json.dumps({"model": {"source": "toy"}, "dataset": {"path": "d"},
                                                      "saving": {"output_name": "x"}}))  # fmt: skip
    assert "memorization/memorization.html" not in render_train(tmp_path).read_text(encoding="utf-8")
    (tmp_path / "memorization").mkdir()
    (tmp_path / "memorization" / "memorization.html").write_text("<html></html>")
    assert 'href="memorization/memorization.html"' in render_train(tmp_path).read_text(encoding="utf-8")


class TableRows(HTMLParser):
    """Rows of ``<table class="per-image">``: per row, its cell texts and its images' src attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.rows, self.cell = False, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.inside = attrs.get("class") == "per-image"
        elif self.inside and tag == "tr":
            self.rows.append({"cells": [], "images": []})
        elif self.inside and tag == "td":
            self.cell = ""
        elif self.inside and tag == "img":
            self.rows[-1]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag == "td":
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def test_per_image_rows_are_sorted_by_the_headline_and_carry_their_images(tmp_path):
    """Oracle: memorization.json read back and sorted by hand on the headline at the last checkpoint, highest
    first, missing (null) last; each row's pictures are the data URIs of that image's saved training, last,
    recommended and base PNGs, in that order (base64 of the file bytes); the hostile caption stays escaped."""
    made_result(tmp_path).save(tmp_path)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    saved = json.loads((tmp_path / "memorization.json").read_text(encoding="utf-8"))
    last = str(saved["checkpoints"][-1]["step"])
    with_score = [im for im in saved["images"] if im["scores"][last].get(saved["headline"]) is not None]
    without = [im for im in saved["images"] if im["scores"][last].get(saved["headline"]) is None]
    expected = sorted(with_score, key=lambda im: im["scores"][last][saved["headline"]], reverse=True) + without
    assert [im["caption"] for im in expected] == ["high", "middle", "low", HOSTILE, "held"]  # the hand sort
    parser = TableRows()
    parser.feed(page)
    header, *rows = parser.rows
    assert [r["cells"][1] for r in rows] == [im["caption"] for im in expected]
    assert saved["recommended"]["step"] == 100 and len(header["images"]) == 0
    for row, im in zip(rows, expected, strict=True):
        want = ["data:image/png;base64," + base64.b64encode((tmp_path / im["panels"][p]).read_bytes()).decode()
                for p in PANELS]  # fmt: skip
        assert row["images"] == want, im["caption"]
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert "copy_cosine feature space: VAE latents" in page
