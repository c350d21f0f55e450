"""The whole embedding probe on the tiny encoders: result files, report, CLI; and the toy model run."""

from __future__ import annotations

import csv

import pytest

from sdxl_probe.pipeline.encoding_cache import EncodingCache
from sdxl_probe.probes.embed.core import EmbedResult, EmbedSettings, run_embed
from sdxl_probe.probes.embed.inputs import toy_pairs
from sdxl_probe.probes.embed.report import render_report

SMALL = EmbedSettings(shuffles=2, sensitivity_captions=3, synthetic_long=2, matrix_size=4, batch_size=8)


@pytest.fixture(scope="module")
def small_run(tiny_components, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed")
    cache = EncodingCache(out / "cache", tiny_components.model_hash())
    result = run_embed(tiny_components, toy_pairs(6, seed=1), SMALL, cache=cache, dataset="toy pairs")
    result.save(out / "result")
    return result, out


def test_result_round_trips_and_has_every_view(small_run):
    result, out = small_run
    loaded = EmbedResult.load(out / "result")
    assert loaded == result
    assert set(loaded.aggregates) == {"te1", "te2", "pooled", "context"}
    widths = loaded.model["widths"]
    assert widths["context"] == widths["te1"] + widths["te2"] and widths["te1"] != widths["te2"]
    assert loaded.model["is_toy"] and loaded.model["kind"] == "tiny"
    assert len(loaded.pairs) == 6 and len(loaded.unrelated) == 12
    assert (
        set(loaded.style_effect["te1"]) == {"cos", "word", "set"}
        and "word" not in loaded.style_effect["pooled"]
    )
    assert loaded.summary[0].startswith("Toy model")
    groups = set(loaded.drift_summary)
    assert {"order", "position", "weighting"} <= groups
    assert any(g.startswith("truncation (synthetic long) | max_token_length 150") for g in groups)


def test_csv_has_one_row_per_pair(small_run):
    result, out = small_run
    with (out / "result" / "embed.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["tags"] for r in rows] == [p["tags"] for p in result.pairs]
    assert float(rows[0]["te2.cos"]) == pytest.approx(result.pairs[0]["values"]["te2.cos"], abs=1e-6)


def test_rerun_reads_the_cache_and_gives_the_same_numbers(small_run, tiny_components):
    result, out = small_run
    cache = EncodingCache(out / "cache", tiny_components.model_hash())
    again = run_embed(tiny_components, toy_pairs(6, seed=1), SMALL, cache=cache, dataset="toy pairs")
    assert cache.misses == 0 and cache.hits > 0
    assert again.pairs == result.pairs and again.drift_summary == result.drift_summary


def test_report_renders_from_saved_files(small_run):
    _, out = small_run
    page = render_report(out / "result")
    html = page.read_text()
    assert "toy model" in html
    assert html.count("<img ") == 3
    assert "Per-encoder table" in html and "mean best-match" in html


def test_cli_runs_on_pairs(tiny_components, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import sdxl_probe.models.load as load
    from sdxl_probe.cli import build_app

    monkeypatch.setattr(load, "load_components", lambda source, **kw: tiny_components)
    args = ["embed", "--pair", "red circle, white background|||a red circle on a white background"]
    args += ["--pair", "blue star, black background|||a blue star on a black background"]
    config = tmp_path / "embed.toml"
    config.write_text("[embed]\nsynthetic_long = 1\ntruncation_lengths = [75, 150]\nmatrix_size = 2\n")
    args += [
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--shuffles",
        "2",
        "--config",
        str(config),
    ]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "embed.json").is_file() and (tmp_path / "out" / "embed.html").is_file()
    assert "Style effect" in res.output
    saved = EmbedResult.load(tmp_path / "out")
    assert saved.settings["truncation_lengths"] == [75, 150] and saved.settings["shuffles"] == 2


def test_config_rejects_unknown_key(tmp_path):
    from sdxl_probe.commands.embed_options import resolve_settings
    from sdxl_probe.errors import ConfigError

    config = tmp_path / "embed.toml"
    config.write_text("[embed]\nshufles = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'shuffles'"):
        resolve_settings(config)


def test_cli_rejects_two_inputs(tmp_path):
    from typer.testing import CliRunner

    from sdxl_probe.cli import build_app
    from sdxl_probe.errors import ProbeError

    res = CliRunner().invoke(build_app(), ["embed", "--pair", "a|||b", "--toy-pairs", "3"])
    assert isinstance(res.exception, ProbeError)
    assert "give exactly one input" in str(res.exception) and "found: --pair, --toy-pairs" in str(
        res.exception
    )


def test_caption_without_tokens_is_a_clear_error(tiny_components):
    from sdxl_probe.errors import ProbeError
    from sdxl_probe.probes.embed.inputs import CaptionPair

    pairs = [CaptionPair("\x00", "a red circle", "pairs.csv:2")]
    with pytest.raises(ProbeError, match=r"pairs.csv:2: caption '\\x00' has no CLIP token"):
        run_embed(tiny_components, pairs, SMALL)
