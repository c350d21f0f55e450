"""A catalogue of concrete bad inputs (issue #11): each exits 2 with a one-line message naming the value and the fix.

Every row runs the real CLI in-process (typer's CliRunner). A ProbeError becomes exit 2 with its
message, as ``ProbeApp`` prints it; click's own usage errors exit 2 too. Any other exception is a
traceback, and fails the row. Rows are refused before a model loads, so the table runs in seconds.
"""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.errors import ProbeError


def run_cli(args: list[str]) -> tuple[int, str]:
    """(exit code, message) as a user sees them; an uncaught exception other than ProbeError fails the test."""
    r = CliRunner().invoke(app, args)
    if isinstance(r.exception, ProbeError):
        return 2, f"error: {r.exception}"
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"traceback for {args}") from r.exception
    return r.exit_code, r.output


def _safetensors(path: Path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


SDXL_KEYS = (
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "first_stage_model.encoder.conv_in.weight",
)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Inputs shared by every row: a small dataset, broken files, a file where a folder is expected."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    (d / "afile").write_text("not a folder\n")
    (d / "badopt.txt").write_text("a cat --q 3\n", encoding="utf-8")
    ds = d / "ds" / "1_x"
    ds.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), "red").save(ds / f"{i}.png")
        (ds / f"{i}.txt").write_text("red circle, white background\n")
        (ds / f"{i}.tags.txt").write_text("red circle\n")
    (ds / "2.png").write_bytes((ds / "0.png").read_bytes())
    (ds / "2.txt").write_bytes(b"red \xff\xfe circle\n")  # not UTF-8
    (d / "img").mkdir()
    Image.new("RGB", (64, 64), "blue").save(d / "img" / "a.png")
    (d / "img" / "b.png").write_bytes((d / "img" / "a.png").read_bytes())  # no caption file
    (d / "binary.toml").write_bytes(b"\x00\xff\xfe\x89PNG\r\n")
    (d / "ds.xyz").write_text("x")
    (d / "nocols.csv").write_text("a,b\n1,2\n")
    (d / "long.csv").write_text('tags,sentence\n"' + "x" * 200_000 + '",y\n')
    (d / "tags.txt").write_text("a\nb\n")
    (d / "one.txt").write_text("a\n")
    (d / "foreign" / "ds").mkdir(parents=True)
    (d / "foreign" / "ds" / "notes.txt").write_text("mine\n")
    (d / "nonempty").mkdir()
    (d / "nonempty" / "keep.txt").write_text("x")
    for name, body in {
        "steps0": "steps = 0", "batch0": "batch_size = 0", "every0": "checkpoint_every = 0",
        "vae_neg": "vae_steps = -1", "lr_nan": "lr = nan", "lr0": "lr = 0.0", "drop1": "caption_dropout = 1.0",
        "arch": 'arch = "big"', "typo": "stepz = 10", "threads": "threads = -2", "vbatch": "vae_batch_size = 0",
        "lr_inf": "lr = inf", "embed_sh": "[embed]\nshuffles = 0", "embed_key": "[embedd]\nseed = 1",
    }.items():  # fmt: skip
        (d / f"{name}.toml").write_text(body + "\n")
    _safetensors(d / "meta_list.safetensors", {"__metadata__": [1, 2]})
    _safetensors(d / "meta_int.safetensors", {"__metadata__": {"a": 1}})
    _safetensors(d / "shape_str.safetensors", {"w": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 8]}}, b"\0" * 8)
    _safetensors(d / "dtype_list.safetensors", {"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    _safetensors(d / "sdxl_empty.safetensors", {k: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for k in SDXL_KEYS})
    (d / "zero.ckpt").write_bytes(b"")
    (d / "zero.safetensors").write_bytes(b"")
    return d


# (id, command line with {d} for the fixture folder, words the message must contain)
CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # tokens
    ("tokens-mtl", "tokens x --max-token-length 100", ("--max-token-length", "100", "75, 150, 225", "pass e.g.")),
    ("tokens-keep-neg", "tokens x --keep-tokens -1", ("--keep-tokens", "-1", "[0, 10000]", "pass e.g. --keep-tokens 0")),
    ("tokens-seed-neg", "tokens x --seed -5", ("--seed", "-5", "too small", "pass e.g. --seed 0")),
    ("tokens-seed-huge", f"tokens x --seed {2**40}", ("--seed", str(2**40), "too large")),
    ("tokens-dropout-big", "tokens x --caption-tag-dropout-rate 1.5", ("--caption-tag-dropout-rate", "1.5", "[0, 1]")),
    ("tokens-dropout-nan", "tokens x --caption-tag-dropout-rate nan", ("nan", "not a finite number", "[0, 1]")),
    ("tokens-dropout-inf", "tokens x --caption-tag-dropout-rate inf", ("inf", "not a finite number")),
    ("tokens-sep-empty", "tokens x --caption-separator ''", ("--caption-separator", "''", "empty", "pass e.g.")),
    ("tokens-not-int", "tokens x --keep-tokens abc", ("--keep-tokens", "valid integer")),
    # audit
    ("audit-missing", "audit {d}/nothing", ("nothing", "dataset not found", "give a kohya folder")),
    ("audit-name-dots", "audit {d}/ds --out {d}/r --name ../x", ("--name", "'../x'", "path separator", "pass e.g. --name")),
    ("audit-name-dotdot", "audit {d}/ds --out {d}/r --name ..", ("--name", "'..'", "not a usable name")),
    ("audit-name-empty", "audit {d}/ds --out {d}/r --name ''", ("--name", "''", "not a usable name")),
    ("audit-samples0", "audit {d}/ds --out {d}/r --samples 0", ("--samples", " 0:", "[1, 100_000]", "pass e.g. --samples 64")),
    ("audit-samples-neg", "audit {d}/ds --out {d}/r --samples -3", ("--samples", "-3", "too small")),
    ("audit-seed-neg", "audit {d}/ds --out {d}/r --seed -1", ("--seed", "-1", "pass e.g. --seed 0")),
    ("audit-mtl", "audit {d}/ds --out {d}/r --max-token-length 80", ("--max-token-length", "80", "one of 75, 150, 225")),
    ("audit-keep-neg", "audit {d}/ds --out {d}/r --keep-tokens -2", ("--keep-tokens", "-2", "[0, 10000]")),
    ("audit-sep-empty", "audit {d}/ds --out {d}/r --caption-separator ''", ("--caption-separator", "empty")),
    ("audit-out-file", "audit {d}/ds --out {d}/afile", ("--out", "afile", "is a file", "choose another path")),
    ("audit-out-proc", "audit {d}/ds --out /proc/1/x", ("--out", "/proc/1", "cannot write", "choose a folder")),
    ("audit-out-foreign", "audit {d}/ds --out {d}/foreign", ("did not write", "notes.txt", "choose a new folder")),
    ("audit-binary-toml", "audit {d}/binary.toml --out {d}/r", ("binary.toml", "not a UTF-8 text file", "TOML")),
    ("audit-unknown-type", "audit {d}/ds.xyz --out {d}/r", ("ds.xyz", "unknown dataset type", "expected a folder")),
    ("audit-strict", "audit {d}/ds --out {d}/r --strict --caption-extension .txt", ("--strict", "non_utf8", "2.txt", "without --strict")),
    ("audit-ext-empty", "audit {d}/ds --out {d}/r --caption-extension ''", ("--caption-extension", "empty")),
    # embed
    ("embed-no-input", "embed --out {d}/e", ("give exactly one input", "found: none")),
    ("embed-toy-neg", "embed --toy-pairs -1 --out {d}/e", ("--toy-pairs", "-1", "[0, 100_000]", "pass e.g.")),
    ("embed-shuffles0", "embed --toy-pairs 2 --shuffles 0 --out {d}/e", ("--shuffles", " 0:", "[1, 1000]")),
    ("embed-seed-neg", "embed --toy-pairs 2 --seed -1 --out {d}/e", ("--seed", "-1", "too small")),
    ("embed-pair-bad", "embed --pair abc --out {d}/e", ("--pair", "'abc'", "expected two non-empty captions")),
    ("embed-csv-missing", "embed --csv {d}/none.csv --out {d}/e", ("none.csv", "not found", "check the path")),
    ("embed-csv-cols", "embed --csv {d}/nocols.csv --out {d}/e", ("nocols.csv", "missing column", "Add a header row")),
    ("embed-csv-long-field", "embed --csv {d}/long.csv --out {d}/e", ("long.csv", "not valid CSV", "field larger")),
    ("embed-tags-only", "embed --tags-list {d}/tags.txt --out {d}/e", ("--tags-list", "needs --sentences-list")),
    ("embed-lists-differ", "embed --tags-list {d}/tags.txt --sentences-list {d}/one.txt --out {d}/e", ("has 2 captions but", "has 1")),
    ("embed-same-ext", "embed --dataset {d}/ds --ext-a .txt --ext-b .txt --out {d}/e", ("--ext-a and --ext-b", "'.txt'")),
    ("embed-ext-empty", "embed --dataset {d}/ds --ext-a '' --out {d}/e", ("--ext-a", "empty")),
    ("embed-out-file", "embed --toy-pairs 2 --out {d}/afile", ("--out", "afile", "is a file")),
    ("embed-config-binary", "embed --toy-pairs 2 --config {d}/binary.toml --out {d}/e", ("binary.toml", "not a UTF-8")),
    ("embed-config-shuffles", "embed --toy-pairs 2 --config {d}/embed_sh.toml --out {d}/e", ("embed_sh.toml", "shuffles")),
    ("embed-config-key", "embed --toy-pairs 2 --config {d}/embed_key.toml --out {d}/e", ("unknown key 'embedd'", "did you mean 'embed'")),
    # generate
    ("gen-steps0", "generate x --out {d}/g.png --steps 0", ("--steps", " 0:", "[1, 1000]", "pass e.g. --steps 25")),
    ("gen-steps-neg", "generate x --out {d}/g.png --steps -1", ("--steps", "-1", "too small")),
    ("gen-steps-huge", "generate x --out {d}/g.png --steps 5000", ("--steps", "5000", "too large")),
    ("gen-guidance-nan", "generate x --out {d}/g.png --guidance nan", ("--guidance", "nan", "not a finite number")),
    ("gen-cfg-nan", "generate x --out {d}/g.png --cfg nan", ("nan", "not a finite number")),
    ("gen-guidance-inf", "generate x --out {d}/g.png --guidance inf", ("--guidance", "inf", "[0, 100]")),
    ("gen-guidance-neg", "generate x --out {d}/g.png --guidance -1", ("--guidance", "-1", "pass e.g. --guidance 5.0")),
    ("gen-seed-neg", "generate x --out {d}/g.png --seed -1", ("--seed", "-1", "too small")),
    ("gen-width-small", "generate x --out {d}/g.png --width 7", ("--width", "7", "[8, 8192]")),
    ("gen-height-huge", "generate x --out {d}/g.png --height 100000", ("--height", "100000", "too large")),
    ("gen-lora-weight", "generate x --out {d}/g.png --lora {d}/l.safetensors:99", ("--lora FILE:weight", "99", "[-10, 10]")),
    ("gen-lora-missing", "generate x --out {d}/g.png --lora {d}/l.safetensors:0.5", ("l.safetensors", "file not found")),
    ("gen-n0", "generate x --out {d}/a --n 0", ("--n", " 0:", "[1, 1000]")),
    ("gen-n-png", "generate x --out {d}/g.png --n 2", ("g.png", "give a folder path")),
    ("gen-no-prompt", "generate --out {d}/a", ("PROMPT", "--prompt-file")),
    ("gen-prompt-file-missing", "generate --prompt-file {d}/none.txt --out {d}/a", ("none.txt", "cannot read the prompt file")),
    ("gen-prompt-file-option", "generate --prompt-file {d}/badopt.txt --out {d}/a", ("unknown option --q", "--n --w --h")),
    ("attn-gen-lora-missing", "attention generate x --out {d}/a --lora {d}/l.safetensors", ("l.safetensors", "file not found")),
    ("gen-mtl", "generate x --out {d}/g.png --max-token-length 76", ("--max-token-length", "76", "75, 150, 225")),
    ("gen-sampler", "generate x --out {d}/g.png --sampler foo", ("--sampler", "foo", "euler", "ddim")),
    ("gen-out-folder", "generate x --out {d}/img", ("--out", "is a folder", "give a file path")),
    ("gen-out-under-file", "generate x --out {d}/afile/g.png", ("afile", "is a file", "cannot be created")),
    ("gen-out-proc", "generate x --out /proc/1/g.png", ("--out", "cannot write", "choose a folder")),
    # attention
    ("att-steps0", "attention generate p --out {d}/a --steps 0", ("--steps", " 0:", "[1, 1000]")),
    ("att-guidance-nan", "attention generate p --out {d}/a --guidance nan", ("--guidance", "nan", "finite")),
    ("att-heads-neg", "attention generate p --out {d}/a --heads -1", ("--heads", "-1", "[0, 1023]")),
    ("att-res0", "attention generate p --out {d}/a --resolutions 0", ("--resolutions", " 0:", "[1, 64]")),
    ("att-heads-text", "attention generate p --out {d}/a --heads a,b", ("--heads", "'a,b'", "comma-separated integers")),
    ("att-window", "attention generate p --out {d}/a --window 5:2", ("--window", "'5:2'", "START < STOP")),
    ("att-out-file", "attention generate p --out {d}/afile", ("--out", "afile", "is a file")),
    ("att-seed-huge", f"attention generate p --out {{d}}/a --seed {2**33}", ("--seed", str(2**33), "too large")),
    ("ins-t-big", "attention inspect {d}/img/a.png --caption x --out {d}/a --timesteps 2000", ("--timesteps", "2000", "[0, 999]")),
    ("ins-t-neg", "attention inspect {d}/img/a.png --caption x --out {d}/a --timesteps=-1", ("--timesteps", "-1", "too small")),
    ("ins-t-text", "attention inspect {d}/img/a.png --caption x --out {d}/a --timesteps x", ("--timesteps", "'x'", "e.g. 300,500")),
    ("ins-image-missing", "attention inspect {d}/img/none.png --caption x --out {d}/a", ("none.png", "cannot read the image")),
    ("ins-no-caption", "attention inspect {d}/img/b.png --out {d}/a", ("b.txt", "caption file not found", "--caption")),
    ("ins-ext-empty", "attention inspect {d}/img/a.png --caption-ext '' --out {d}/a", ("--caption-ext", "empty")),
    ("ins-out-file", "attention inspect {d}/img/a.png --caption x --out {d}/afile", ("--out", "is a file")),
    # toy dataset
    ("ds-n0", "toy dataset {d}/t --n 0", ("--n", " 0:", "[1, 1_000_000]", "pass e.g. --n 100")),
    ("ds-n-neg", "toy dataset {d}/t --n -5", ("--n", "-5", "too small")),
    ("ds-size-huge", "toy dataset {d}/t --size 100000", ("--size", "100000", "[16, 2048]")),
    ("ds-memory", "toy dataset {d}/t --n 100000 --size 2048", ("--size", "GiB", "lower --n or --size")),
    ("ds-repeats-neg", "toy dataset {d}/t --repeats -1", ("--repeats", "-1", "[1, 10000]")),
    ("ds-seed-neg", "toy dataset {d}/t --seed -1", ("--seed", "-1", "too small")),
    ("ds-style", "toy dataset {d}/t --style foo", ("--style", "'foo'", "unknown caption style")),
    ("ds-trigger", "toy dataset {d}/t --trigger a,b", ("--trigger", "'a,b'", "without commas")),
    ("ds-out-file", "toy dataset {d}/afile", ("afile", "not an empty folder", "choose a new OUT")),
    ("ds-out-nonempty", "toy dataset {d}/nonempty", ("nonempty", "not an empty folder")),
    ("ds-out-proc", "toy dataset /proc/1/x --n 1", ("/proc/1", "cannot write")),
    # toy pretrain: each refused before anything is rendered
    ("pre-steps0", "toy pretrain --out {d}/p --config {d}/steps0.toml", ("steps0.toml", "steps = 0", "too small", "set steps = 4000")),
    ("pre-batch0", "toy pretrain --out {d}/p --config {d}/batch0.toml", ("batch_size = 0", "[1, 4096]", "set batch_size = 64")),
    ("pre-every0", "toy pretrain --out {d}/p --config {d}/every0.toml", ("checkpoint_every = 0", "set checkpoint_every = 100")),
    ("pre-vae-neg", "toy pretrain --out {d}/p --config {d}/vae_neg.toml", ("vae_steps = -1", "too small")),
    ("pre-vbatch0", "toy pretrain --out {d}/p --config {d}/vbatch.toml", ("vae_batch_size = 0", "too small")),
    ("pre-lr-nan", "toy pretrain --out {d}/p --config {d}/lr_nan.toml", ("lr = nan", "not a finite number", "set lr = 0.001")),
    ("pre-lr-inf", "toy pretrain --out {d}/p --config {d}/lr_inf.toml", ("lr = inf", "not a finite number")),
    ("pre-lr0", "toy pretrain --out {d}/p --config {d}/lr0.toml", ("lr = 0.0", "(0, 1_000_000]", "too small")),
    ("pre-dropout1", "toy pretrain --out {d}/p --config {d}/drop1.toml", ("caption_dropout = 1.0", "[0, 1)")),
    ("pre-arch", "toy pretrain --out {d}/p --config {d}/arch.toml", ("arch = 'big'", "one of toy, tiny")),
    ("pre-typo", "toy pretrain --out {d}/p --config {d}/typo.toml", ("unknown key 'stepz'", "did you mean 'steps'")),
    ("pre-threads", "toy pretrain --out {d}/p --config {d}/threads.toml", ("threads = -2", "[0, 1024]")),
    ("pre-config-missing", "toy pretrain --out {d}/p --config {d}/none.toml", ("none.toml", "config file not found")),
    ("pre-config-binary", "toy pretrain --out {d}/p --config {d}/binary.toml", ("binary.toml", "not a UTF-8")),
    ("pre-seed-neg", "toy pretrain --out {d}/p --seed -1", ("--seed", "-1", "too small")),
    ("pre-out-file", "toy pretrain --out {d}/afile --config {d}/steps0.toml", ("steps = 0",)),
    # toy evaluate
    ("eval-n0", "toy evaluate --out {d}/v --n-prompts 0", ("--n-prompts", " 0:", "pass e.g. --n-prompts 212")),
    ("eval-steps0", "toy evaluate --out {d}/v --steps 0", ("--steps", " 0:", "too small")),
    ("eval-cfg-nan", "toy evaluate --out {d}/v --cfg nan", ("nan", "not a finite number")),
    ("eval-natt-neg", "toy evaluate --out {d}/v --n-attention -1", ("--n-attention", "-1", "[0, 100_000]")),
    ("eval-out-file", "toy evaluate --out {d}/afile", ("--out", "afile", "is a file")),
    # model info: malformed checkpoints
    ("ck-meta-list", "model info {d}/meta_list.safetensors", ("meta_list", "__metadata__", "download or copy it again")),
    ("ck-meta-int", "model info {d}/meta_int.safetensors", ("meta_int", "__metadata__")),
    ("ck-shape-str", "model info {d}/shape_str.safetensors", ("shape 'ab'", "not counts")),
    ("ck-dtype-list", "model info {d}/dtype_list.safetensors", ("unknown dtype", "['F32']")),
    ("ck-sdxl-empty", "model info {d}/sdxl_empty.safetensors", ("has SDXL key names but no tensor", "download or convert")),
    ("ck-zero-pickle", "model info {d}/zero.ckpt --allow-pickle", ("zero.ckpt", "empty or truncated")),
    ("ck-pickle-refused", "model info {d}/zero.ckpt", ("zero.ckpt", "pickled checkpoint", "--allow-pickle")),
    ("ck-zero-st", "model info {d}/zero.safetensors", ("zero.safetensors", "only 0 bytes")),
]


def test_catalogue_is_large_and_ids_unique():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("args", "words"), [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input_exits_2_with_value_and_fix(d, args, words):
    code, message = run_cli(shlex.split(args.format(d=d)))
    assert code == 2, message
    assert "Traceback" not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    outputs = [d / name for name in ("r", "e", "t", "a", "v", "p", "g.png")]
    assert not [p for out in outputs for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file()]


def test_pretrain_refused_before_rendering(tmp_path, monkeypatch):
    """Zero or negative steps, batch or interval never reach the renderer (issue #11 acceptance)."""
    import sdxl_probe.train.toy_recipe.pretrain as recipe

    def render(*a, **k):
        raise AssertionError("rendering started")

    monkeypatch.setattr(recipe, "render_training_set", render)
    for body in ("steps = 0", "steps = -4", "batch_size = 0", "batch_size = -1", "checkpoint_every = 0",
                 "checkpoint_every = -10", "vae_steps = 0", "vae_batch_size = -1"):  # fmt: skip
        (tmp_path / "c.toml").write_text(body + "\n")
        code, message = run_cli(["toy", "pretrain", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "c.toml")])
        assert code == 2 and body.split(" =")[0] in message and "too small" in message, message
        assert not (tmp_path / "run").exists()
