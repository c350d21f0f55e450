"""Study specs: every shipped studies/*.toml validates; bad specs fail with one line naming the key and fix."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sdxl_probe.errors import ConfigError
from sdxl_probe.studies.spec import load_spec, merge, train_config

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.toml"))
EXPECTED = {"caption_dropout", "caption_length", "keep_tokens_shuffle", "memorization_mitigation", "tags_vs_sentences"}


def test_the_five_example_studies_ship():
    assert {p.stem for p in STUDIES} == EXPECTED


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_every_study_parses_and_each_variant_builds_a_trainer_config(path):
    """Each variant's trainer config is base, then [train], then the variant's keys, then the run's own keys.

    Oracle: the TOML files read back with tomllib and merged by hand, key by key, against the config built.
    """
    import tomllib

    spec = load_spec(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    base = tomllib.loads((path.parent / raw["study"]["base_config"]).read_text(encoding="utf-8"))
    text = path.read_text(encoding="utf-8")
    assert "On the toy model" in text and "On real SDXL" in text and "--smoke" in text  # the comment block
    assert set(spec.variants) == set(raw["variants"]) and spec.control in spec.variants
    for name, body in raw["variants"].items():
        cfg = train_config(spec, name, 7, Path("/r"), smoke=False, dataset=Path("/d"))
        want_sections = merge(merge(base, raw.get("train", {})), {k: v for k, v in body.items() if k != "captions"})
        for section, table in want_sections.items():
            for key, value in table.items():
                if (section, key) in {("dataset", "path"), ("saving", "output_dir"), ("saving", "output_name"),
                                      ("training", "seed"), ("logging", "progress_bar")} or (
                        section == "dataset" and "captions" in body and key == "caption_extension"):  # fmt: skip
                    continue
                got = getattr(getattr(cfg, section), key)
                assert (list(got) if isinstance(got, tuple) else got) == value, f"{name}: {section}.{key}"
        assert (cfg.training.seed, cfg.saving.output_dir, cfg.dataset.path) == (7, "/r", "/d")
        smoke = train_config(spec, name, 7, Path("/r"), smoke=True, dataset=Path("/d"))
        assert smoke.training.max_train_steps == spec.smoke.steps <= 5
    assert len(spec.seeds(smoke=True)) == spec.smoke.seeds


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[study]
question = "q"
seeds = [0, 1]
metrics = ["val_loss"]
[toy_dataset]
n = 4
[train.dataset]
validation_split = 0.25
[variants.a.dataset]
caption_extension = ".tags.txt"
[variants.b.dataset]
caption_extension = ".sentence.txt"
"""


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("[variants.b.dataset]", "[variants.b.datset]"), "did you mean 'dataset'"),
        (("caption_extension = \".sentence.txt\"", "caption_extention = \".s.txt\""), "did you mean 'caption_extension'"),
        (("[study]", "[studdy]"), "did you mean 'study'"),
        (("seeds = [0, 1]", "seeds = [0, 1]\ncontrol = \"c\""), "unknown key 'c'"),
        (("metrics = [\"val_loss\"]", "metrics = [\"val_los\"]"), "one of val_loss"),
        (("validation_split = 0.25", "validation_split = 0.0"), "validation_split = 0.25"),
        (("metrics = [\"val_loss\"]", "metrics = [\"val_loss\", \"trigger_attention\"]"), "needs a trigger word"),
        (("seeds = [0, 1]", "seeds = [1, 1]"), "distinct seeds"),
        (("[variants.b.dataset]\ncaption_extension = \".sentence.txt\"", ""), "at least two"),
        (("[variants.a.dataset]", "[variants.a.captions]\nmake = \"shuffled\"\n[variants.a.dataset]"), "one of none"),
        (("[train.dataset]", "[train.dataset]\nmax_token_length = 100"), "one of 75, 150, 225"),
        (("metrics = [\"val_loss\"]", "metrics = [\"diversity\"]\n[smoke]\nsamples = 1"), "2 or more"),
        (("[toy_dataset]\nn = 4", "[toy_dataset]\nn = 0"), "no dataset"),
    ],
)
def test_bad_specs_name_the_key_and_the_fix(tmp_path, edit, needle):
    """Oracle: the nearest-key and bounds messages of sdxl_probe.config / options, quoted."""
    old, new = edit
    assert old in GOOD
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")) as info:
        load_spec(_write(tmp_path, GOOD.replace(old, new)))
    assert "\n" not in str(info.value)


def test_derived_caption_lines(tmp_path):
    """Derived captions: varied = the three styles; random tokens added = the caption's tags plus K vocabulary words;
    padded = filler then the tags, at least min_tokens CLIP pieces.

    Oracle: the record's own captions, multiset difference of the tags, and the toy world's own token counter.
    """
    from sdxl_probe.studies.data import caption_lines, vocabulary_words
    from sdxl_probe.studies.spec import CaptionSource
    from sdxl_probe.toy.captions import clip_piece_count

    record = {"caption": "zkw, red circle, blue background", "tags": "zkw, red circle, blue background",
              "sentence": "zkw, a red circle on a blue background.", "long": "zkw, red circle, flat colors"}  # fmt: skip
    assert caption_lines(record, CaptionSource(make="varied"), random.Random(0)) == [record["tags"],
                                                                                     record["sentence"], record["long"]]  # fmt: skip
    lines = caption_lines(record, CaptionSource(make="random_tokens", random_tokens=3, lines=5), random.Random(0))
    words = set(vocabulary_words())
    assert len(lines) == 5 and len(set(lines)) > 1
    for line in lines:
        tags = line.split(", ")
        for t in record["caption"].split(", "):
            tags.remove(t)
        assert len(tags) == 3 and set(tags) <= words
    (padded,) = caption_lines(record, CaptionSource(make="padded", min_tokens=140), random.Random(0))
    assert padded.endswith(record["tags"]) and clip_piece_count(padded) >= 140
    assert clip_piece_count(padded[: -len(record["tags"])]) > 75  # the description lies past the first chunk


def test_study_cli_status_and_bad_input(tmp_path, monkeypatch):
    """``study status`` lists variants x seeds as pending before any run; bad input is a one-line ProbeError (exit 2).

    Oracle: the spec's 2 variants x 2 seeds written out by hand; the CLI's contract: a ProbeError is printed as one line with exit 2.
    """
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.errors import ProbeError

    monkeypatch.chdir(tmp_path)
    spec = _write(tmp_path, GOOD)
    result = CliRunner().invoke(app, ["study", "status", str(spec)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "0/4 runs done"
    assert [line.split() for line in lines[1:]] == [["a/seed-0", "pending"], ["a/seed-1", "pending"],
                                                     ["b/seed-0", "pending"], ["b/seed-1", "pending"]]  # fmt: skip
    for args, needle in ((["study", "run", "missing.toml"], "not found"),
                         (["study", "run", str(spec), "--launcher", "slurm"], "use one of local"),
                         (["study", "run", str(spec), "--workers", "0"], "--workers 0")):  # fmt: skip
        bad = CliRunner().invoke(app, args)  # the app turns a ProbeError into "error: ..." and exit 2
        assert isinstance(bad.exception, ProbeError) and needle in str(bad.exception), bad.output
        assert "\n" not in str(bad.exception)
    assert not (tmp_path / "runs").exists()  # nothing written before the error


def test_study_report_rerenders_from_study_json_without_torch(tmp_path, monkeypatch):
    """``render_report("study", OUT)`` rebuilds index.html from study.json alone, importing no torch.

    Oracle: a fresh interpreter's ``sys.modules`` after the re-render, and the page naming every variant.
    """
    import subprocess
    import sys

    from sdxl_probe.studies.report import write_report

    monkeypatch.chdir(tmp_path)
    spec = load_spec(_write(tmp_path, GOOD))
    page = write_report(spec, smoke=False)
    page.unlink()
    code = ("import sys; from sdxl_probe.reports import render_report; "
            f"render_report('study', {str(page.parent)!r}); assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    text = page.read_text()
    assert "Question: q" in text and "no seed ran for both" in text
