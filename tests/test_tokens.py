"""`sdxl-probe tokens`: JSON contract, terminal view, no torch at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from audit_data import lost_tags, token_count
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.probes.tokens.core import TokensResult, probe_tokens

LONG = ["sks", *(f"red cat {w}" for w in ["dog", "sky", "tree", "sun", "car", "hat", "boy", "girl"] * 6)]


def _json(*args: str) -> dict:
    res = CliRunner().invoke(app, ["tokens", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize("limit", [None, 150, 225])
def test_json_grid_and_lost_tags(limit):
    caption = ", ".join(LONG)
    data = _json(caption, *(["--max-token-length", str(limit)] if limit else []))
    n = token_count(LONG)
    cap = limit or 75
    for enc, pad in (("te1", 49407), ("te2", 0)):
        view = data[enc]
        assert view["n_tokens"] == n
        assert len(view["input_ids"]) == (cap // 75) and all(len(row) == 77 for row in view["input_ids"])
        assert all(row[0] == 49406 for row in view["input_ids"])
        assert view["input_ids"][-1][-1] == (pad if n < cap else 49407)
        assert view["lost_tags"] == lost_tags(LONG, cap)
    flat = [i for row in data["te1"]["input_ids"] for i in row[1:-1]]
    assert flat[: min(n, cap)] == [t["id"] for t in data["tokens"][: min(n, cap)]]


def test_short_caption_pads_per_encoder():
    data = _json("red cat, blue dog")
    assert data["te1"]["input_ids"][0][:7] == data["te2"]["input_ids"][0][:7]
    assert data["te1"]["input_ids"][0][-1] == 49407 and data["te2"]["input_ids"][0][-1] == 0
    assert data["te1"]["lost_tags"] == [] and data["te1"]["n_tokens"] == 5


def test_terminal_view_marks_pooled_limit_cut_and_weights():
    res = CliRunner().invoke(
        app, ["tokens", ", ".join(LONG), "--max-token-length", "150"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    for text in (
        "┃chunk 1┃",
        "┃chunk 2┃",
        "pooled vector stops here",
        "✂ cut:",
        "partly cut",
        "te1:",
        "te2:",
    ):
        assert text in res.output
    res = CliRunner().invoke(app, ["tokens", "red, (blue cat:1.5)", "--weighted"])
    assert "^1.50" in res.output


def test_shuffle_is_seeded_and_keeps_tokens():
    args = ["a cat, b dog, c sky, d sun, e car", "--shuffle", "--keep-tokens", "1", "--seed", "4"]
    first, again = _json(*args), _json(*args)
    assert first["processed_caption"] == again["processed_caption"]
    assert first["processed_caption"].startswith("a cat, ")
    others = {_json(*args[:-1], str(s))["processed_caption"] for s in range(8)}
    assert len(others) > 1


def test_bad_max_token_length_is_a_clean_error():
    cmd = [sys.executable, "-m", "sdxl_probe.cli", "tokens", "x", "--max-token-length", "100"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and "--max-token-length 100: not a valid choice; allowed: one of 75, 150, 225" in res.stderr


def test_tokens_command_never_imports_torch():
    code = (
        "import sys; from sdxl_probe.cli import main; sys.argv = ['sdxl-probe', 'tokens', 'red cat, (dog:1.2)', "
        "'--json', '--weighted', '--shuffle']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'open_clip', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in res.stderr, res.stderr
    from sdxl_probe.text.bpe import get_bpe

    # Oracle: BPE of the caption with the weighting syntax removed (any tag order has the same count).
    assert json.loads(res.stdout)["te1"]["n_tokens"] == len(get_bpe().encode("red cat, dog"))


def test_result_save_load(tmp_path):
    res = probe_tokens("red cat, blue dog", max_token_length=150)
    res.save(tmp_path / "t.json")
    assert TokensResult.load(tmp_path / "t.json") == res
