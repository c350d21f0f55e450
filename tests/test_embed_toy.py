"""The embedding report in headless Chromium: a small tiny-model run, and the 200-pair toy-model run."""

from __future__ import annotations

import pytest
from chromium import assert_images_decode, assert_not_blank, dump_dom, require_chromium, screenshot

from sdxl_probe.pipeline.encoding_cache import EncodingCache
from sdxl_probe.probes.embed.core import EmbedResult, EmbedSettings, run_embed
from sdxl_probe.probes.embed.inputs import toy_pairs
from sdxl_probe.probes.embed.report import render_report

HOSTILE = '<img src=x onerror="alert(1)">'


def _check_page(page, tmp_path) -> str:
    require_chromium()
    assert assert_images_decode(page) == 3
    assert_not_blank(screenshot(page, tmp_path / "shot.png"))
    dom = dump_dom(page)
    assert "toy model" in dom
    return dom


@pytest.mark.browser
def test_tiny_report_renders_in_chromium(tiny_components, tmp_path):
    from chromium import assert_inert

    pairs = toy_pairs(4, seed=2)
    pairs[0] = type(pairs[0])(pairs[0].tags + ", " + HOSTILE, pairs[0].sentence, "hostile")
    settings = EmbedSettings(
        shuffles=1, sensitivity_captions=2, synthetic_long=1, truncation_lengths=[75, 150]
    )
    run_embed(tiny_components, pairs, settings, dataset="tiny pairs").save(tmp_path / "out")
    dom = _check_page(render_report(tmp_path / "out"), tmp_path)
    assert_inert(dom, HOSTILE)


def _toy_components():
    from sdxl_probe.models.load import load_components

    return load_components("toy")  # the toy model ships: a load failure fails the test, never skips it


@pytest.mark.slow
@pytest.mark.browser
def test_toy_model_200_pairs(tmp_path):
    components = _toy_components()
    cache = EncodingCache(tmp_path / "cache", components.model_hash())
    result = run_embed(
        components, toy_pairs(200, seed=0), EmbedSettings(), cache=cache, dataset="200 toy pairs"
    )
    result.save(tmp_path / "out")
    loaded = EmbedResult.load(tmp_path / "out")
    assert len(loaded.pairs) == 200 and loaded.model["kind"] == "toy"
    # A trained encoder puts the same content in two styles closer than two unrelated captions.
    for view in ("te1", "te2", "pooled", "context"):
        assert loaded.aggregates[view]["cos"]["mean"] > loaded.unrelated_aggregates[view]["cos"]["mean"], view
    _check_page(render_report(tmp_path / "out"), tmp_path)
