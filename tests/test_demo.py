"""The demo's index page states the toy model's figures measured in the same run, not a fixed text."""

from __future__ import annotations

from sdxl_probe.demo import model_status
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
