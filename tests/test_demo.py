"""The demo's index page states the toy model's figures measured in the same run, not a fixed text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdxl_probe.demo import model_status, steps
from sdxl_probe.probes.toy_eval.core import ToyEvaluation


def _evaluation(single_colour: float) -> ToyEvaluation:
    keys = ["single_colour", "single_shape", "single_colour_and_shape", "heldout_colour", "heldout_shape",
            "heldout_colour_and_shape", "two_both_colours", "empty_colour", "empty_shape"]
    figures = {k: 0.5 for k in keys} | {"single_colour": single_colour, "chance_colour": 1 / 7, "chance_shape": 0.25}
    return ToyEvaluation(model="toy", is_toy=True, settings={}, figures=figures,
                         attention={"iou": 0.41, "iou_shuffled": 0.08}, counts={})


def test_status_reads_this_runs_evaluation(tmp_path):
    _evaluation(0.93).save(tmp_path / "toy-eval")
    status = model_status(tmp_path)
    assert "single_colour 0.93 (PASS)" in status
    assert "single_shape 0.50 (below 0.7)" in status
    assert "attention_iou 0.41 (PASS)" in status
    _evaluation(0.42).save(tmp_path / "toy-eval")
    assert "single_colour 0.42 (below 0.9)" in model_status(tmp_path)


def test_status_says_when_the_figures_are_missing(tmp_path):
    assert "missing" in model_status(tmp_path) and "toy evaluate" in model_status(tmp_path)


def _parse(args: list[str]):
    """Parse ``sdxl-probe ARGS`` with the real click command tree, down to the leaf command (nothing runs)."""
    import typer

    from sdxl_probe.cli import app

    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("sdxl-probe", list(args))
    rest = list(args)
    while hasattr(cmd, "list_commands"):  # a group (typer vendors click: no click.Group here)
        name, rest = rest[0], rest[1:]
        cmd = cmd.get_command(ctx, name)
        assert cmd is not None, f"no command {name!r} in {args}"
        ctx = cmd.make_context(name, list(rest), parent=ctx)
    return cmd, ctx, rest


@pytest.mark.parametrize("index", range(len(steps(Path("reports/demo")))))
def test_demo_step_arguments_parse(index, tmp_path):
    """Every ``make demo`` step parses with the real CLI, and each ``--option value`` lands in its parameter.

    Oracle: the step's own argument list, read back from click's parsed parameters.
    """
    _, args, report = steps(tmp_path)[index]
    cmd, ctx, rest = _parse(args)
    options = {opt: p for p in cmd.params for opt in p.opts}
    i = 0
    while i < len(rest):
        param = options.get(rest[i])
        if param is None:
            i += 1
            continue
        if getattr(param, "is_flag", False):
            assert ctx.params[param.name] is True, rest[i]
            i += 1
        else:
            assert str(ctx.params[param.name]) == rest[i + 1], rest[i]
            i += 2
    if report:  # the report lands under the folder the step writes to
        outs = [ctx.params[p] for p in ("out",) if p in ctx.params]
        assert outs and (tmp_path / report).is_relative_to(outs[0])


def test_demo_step_parser_rejects_a_renamed_option(tmp_path):
    _, args, _ = steps(tmp_path)[1]
    with pytest.raises(Exception, match="No such option: --keep-token"):
        _parse([a.replace("--keep-tokens", "--keep-token") for a in args])


FIGURE_LINE = re.compile(r"^  (\w+)\s+(-?[\d.]+|nan)  (.+)$")


def test_toy_evaluate_cli_files_agree_with_printed_figures(tiny_components, tmp_path):
    """``toy evaluate`` through the CLI on the tiny model: evaluate.json, grids, report and stdout agree.

    Oracle: the figures recounted from evaluate.json's per-image judgements, and the printed lines.
    """
    from typer.testing import CliRunner

    from sdxl_probe.cli import app
    from sdxl_probe.models.folder import save_folder
    from sdxl_probe.probes.toy_eval.core import ToyEvaluation

    folder = save_folder(tiny_components, tmp_path / "tiny")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["toy", "evaluate", "--model", str(folder), "--out", str(out),
                                      "--n-prompts", "12", "--steps", "2", "--n-attention", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    loaded = ToyEvaluation.load(out)
    assert loaded.settings | {"n_prompts": 12, "steps": 2, "n_attention": 2, "seed": 1} == loaded.settings
    printed = {m.group(1): (m.group(2), m.group(3)) for m in map(FIGURE_LINE.match, result.output.splitlines()) if m}
    expected = {name: (f"{value:.3f}", verdict) for name, value, verdict in loaded.acceptance()}
    assert printed == expected
    per_image = loaded.per_image
    assert len(per_image) == 12 and loaded.counts == {g: sum(r["group"] == g for r in per_image) for g in loaded.counts}

    def recount(group: str, key: str) -> float:
        rows = [r[key] for r in per_image if r["group"] == group]
        return sum(rows) / len(rows)

    figures = loaded.figures
    for name, (group, key) in {"single_colour": ("single", "colour"), "single_shape": ("single", "shape"),
                               "two_both_colours": ("two", "all_colours"), "empty_colour": ("empty", "colour"),
                               "empty_shape": ("empty", "shape"),
                               "heldout_colour_and_shape": ("heldout", "match_any")}.items():
        assert figures[name] == pytest.approx(recount(group, key), abs=1e-12), name
    for row in per_image:  # each judgement agrees with its booleans
        colour, shape = row["targets"][0]
        main = row["judged"][0] if row["judged"] else None
        assert row["colour"] == (main is not None and main[0] == colour)
        assert row["shape"] == (main is not None and main[1] == shape)
    assert {p.name for p in out.glob("grid_*.png")} == {f"grid_{g}.png" for g in loaded.counts}
    assert "toy model" in (out / "report.html").read_text()


def test_index_states_this_runs_study_figures(tmp_path):
    """The demo's study section is read from this run's study.json, not a fixed text.

    Oracle: hand-made per-seed values: tags (0.5, 0.7) and sentences (0.6, 0.9) have means 0.6 and 0.75 and a
    paired difference of +0.15 (seed 0: +0.1, seed 1: +0.2); with 2 seeds the exact sign-flip p is 0.5 and
    the verdict says no difference is detectable.
    """
    import json

    from sdxl_probe.demo import study_summary

    text, section = study_summary(tmp_path)
    assert "missing" in text and "missing" in section["paragraphs"][0]
    values = {"tags": {"caption_adherence": {"0": 0.5, "1": 0.7}},
              "sentences": {"caption_adherence": {"0": 0.6, "1": 0.9}}}  # fmt: skip
    summaries = {v: {"caption_adherence": {"n": 2, "mean": m, "ci_low": lo, "ci_high": hi}}
                 for v, m, lo, hi in (("tags", 0.6, 0.5, 0.7), ("sentences", 0.75, 0.6, 0.9))}  # fmt: skip
    comparison = {"n": 2, "diff": 0.15, "ci_low": 0.1, "ci_high": 0.2, "d_z": 2.12, "p": 0.5, "p_holm": 0.5,
                  "smallest_p": 0.5}  # fmt: skip
    data = {"control": "tags", "variants": ["tags", "sentences"], "metrics": ["caption_adherence"], "alpha": 0.05,
            "values": values, "summaries": summaries, "comparisons": {"sentences": {"caption_adherence": comparison}}}  # fmt: skip
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps(data))
    text, section = study_summary(tmp_path)
    rows = {(r[0], r[1]): r for r in section["table"]["rows"]}
    assert rows[("tags", "caption adherence (toy judge)")][3] == "0.6"
    assert rows[("sentences", "caption adherence (toy judge)")][3:6] == ["0.75", "0.6 to 0.9", "+0.15"]
    assert "sentences" in text and "+0.15" in text
    (verdict,) = section["paragraphs"]
    assert verdict.startswith("caption adherence (toy judge): No detectable difference: sentences minus tags = +0.15")
