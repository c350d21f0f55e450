"""CLI fuzz test (issue #11): every command, option values across types and edges, never a traceback.

For each command hypothesis draws a random subset of its options, each from edge values (empty,
negative, zero, huge, NaN, infinities, non-UTF-8 bytes as argv carries them, paths that are
files, folders, missing or unwritable). The run must end in a clean exit: 0, or 2 with a message
(ProbeError or a usage error). Anything else is a traceback and fails.

A run that is accepted must agree with its inputs: every value it let through lies inside the
range the test states here, independently of the declared bounds. Heavy work is cut short by a
sentinel: loading a model (or rendering a dataset) raises ``Reached``, which counts as accepted.

``SDXL_PROBE_FUZZ_EXAMPLES`` sets the examples per command (default 25: about 20 s in all; 300 runs in about 80 s).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sdxl_probe.cli import app
from sdxl_probe.errors import ProbeError

EXAMPLES = int(os.environ.get("SDXL_PROBE_FUZZ_EXAMPLES", "25"))
NON_UTF8 = "x\udcff\udcfe"  # how Python's argv carries the bytes b"x\xff\xfe" (surrogateescape)


class Reached(Exception):
    """Raised where the expensive work would start: the inputs were accepted."""


def _stop(*args, **kwargs):
    raise Reached


INTS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "-5", "999", "1000", "1001", "4294967295", "4294967296", "10" * 10,
                     "9" * 40, "", "abc", "1.5", "nan", NON_UTF8]),  # fmt: skip
    st.integers(-(10**6), 10**6).map(str),
)
FLOATS = st.one_of(
    st.sampled_from(["nan", "-nan", "inf", "-inf", "0", "-0.0", "1e308", "1e-320", "5", "100.5", "-1", "", "x"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
TEXT = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "a/b", "a\\b", NON_UTF8, " ", ",", "\n", "x" * 300]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


def paths(d: Path) -> st.SearchStrategy[str]:
    """A file, a folder of foreign files, a missing path, paths under a file, unwritable places, a device."""
    return st.sampled_from([str(d / "afile"), str(d / "folder"), str(d / "new" / "x"), str(d / "afile" / "x"),
                            "/proc/1/x", "/dev/null", str(d / "caps.png"), str(d / NON_UTF8), ""])  # fmt: skip


def in_range(text: str | None, lo: float, hi: float) -> bool:
    """Whether the option text, as a number, is a finite value in [lo, hi] (None: not given, fine)."""
    if text is None:
        return True
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and lo <= value <= hi


def is_int_in(text: str | None, lo: int, hi: int) -> bool:
    if text is None:
        return True
    try:
        return lo <= int(text) <= hi
    except ValueError:
        return False


SEED = (0, 2**32 - 1)

# command -> (fixed leading arguments, {option: strategy name}, acceptance rule over the drawn options)
COMMANDS = {
    "tokens": (["tokens", "red circle, white background"],
               {"--max-token-length": "int", "--keep-tokens": "int", "--seed": "int", "--caption-separator": "text",
                "--caption-tag-dropout-rate": "float", "--keep-tokens-separator": "text"},
               lambda o: o.get("--max-token-length") in (None, "75", "150", "225")
               and is_int_in(o.get("--keep-tokens"), 0, 10_000) and is_int_in(o.get("--seed"), *SEED)
               and in_range(o.get("--caption-tag-dropout-rate"), 0, 1) and o.get("--caption-separator") != ""),
    "audit": (["audit", "{d}/ds"],
              {"--out": "path", "--name": "text", "--seed": "int", "--samples": "int", "--keep-tokens": "int",
               "--max-token-length": "int", "--caption-separator": "text", "--caption-extension": "text"},
              lambda o: is_int_in(o.get("--seed"), *SEED) and is_int_in(o.get("--samples"), 1, 100_000)
              and is_int_in(o.get("--keep-tokens"), 0, 10_000)
              and o.get("--max-token-length") in (None, "75", "150", "225")
              and (o.get("--name") is None or ("/" not in o["--name"] and o["--name"] not in ("", ".", "..")))),
    "embed": (["embed", "--toy-pairs", "2"],
              {"--out": "path", "--seed": "int", "--shuffles": "int", "--ext-a": "text", "--config": "path"},
              lambda o: is_int_in(o.get("--seed"), *SEED) and is_int_in(o.get("--shuffles"), 1, 1000)),
    "generate": (["generate", "a red circle"],
                 {"--out": "path", "--seed": "int", "--steps": "int", "--guidance": "float", "--width": "int",
                  "--height": "int", "--max-token-length": "int", "--sampler": "text", "--model": "path"},
                 lambda o: is_int_in(o.get("--seed"), *SEED) and is_int_in(o.get("--steps"), 1, 1000)
                 and in_range(o.get("--guidance"), 0, 100) and is_int_in(o.get("--width"), 8, 8192)
                 and is_int_in(o.get("--height"), 8, 8192) and o.get("--sampler") in (None, "euler", "ddim")),
    "attention-generate": (["attention", "generate", "a red circle"],
                           {"--out": "path", "--seed": "int", "--steps": "int", "--guidance": "float",
                            "--heads": "text", "--resolutions": "text", "--window": "text", "--height": "int"},
                           lambda o: is_int_in(o.get("--seed"), *SEED) and is_int_in(o.get("--steps"), 1, 1000)
                           and in_range(o.get("--guidance"), 0, 100) and is_int_in(o.get("--height"), 8, 8192)),
    "attention-inspect": (["attention", "inspect", "{d}/caps.png"],
                          {"--out": "path", "--seed": "int", "--timesteps": "ints", "--caption-ext": "text",
                           "--caption": "text"},
                          lambda o: is_int_in(o.get("--seed"), *SEED)
                          and all(is_int_in(t, 0, 999) for t in (o.get("--timesteps") or "300").split(","))),
    "toy-dataset": (["toy", "dataset", "{d}/newds"],
                    {"--n": "int", "--size": "int", "--seed": "int", "--repeats": "int", "--style": "text",
                     "--trigger": "text"},
                    lambda o: is_int_in(o.get("--n"), 1, 10**6) and is_int_in(o.get("--size"), 16, 2048)
                    and is_int_in(o.get("--seed"), *SEED) and is_int_in(o.get("--repeats"), 1, 10_000)
                    and int(o.get("--n", 100)) * int(o.get("--size", 64)) ** 2 * 4 <= 16 * 2**30),
    "toy-evaluate": (["toy", "evaluate"],
                     {"--out": "path", "--n-prompts": "int", "--steps": "int", "--seed": "int", "--cfg": "float",
                      "--n-attention": "int"},
                     lambda o: is_int_in(o.get("--n-prompts"), 1, 100_000) and is_int_in(o.get("--steps"), 1, 1000)
                     and in_range(o.get("--cfg"), 0, 100) and is_int_in(o.get("--n-attention"), 0, 100_000)),
    "toy-pretrain": (["toy", "pretrain"],
                     {"--out": "path", "--seed": "int", "--config": "path"},
                     lambda o: is_int_in(o.get("--seed"), *SEED) and o.get("--config") in (None, "")),
    "model-info": (["model", "info"], {"--allow-pickle": "flag"}, lambda o: True),
}  # fmt: skip


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    from PIL import Image

    d = tmp_path_factory.mktemp("fuzz")
    (d / "afile").write_text("x\n")
    (d / "folder").mkdir()
    (d / "folder" / "notes.txt").write_text("x\n")
    (d / "ds" / "1_x").mkdir(parents=True)
    for i in range(3):
        (d / "ds" / "1_x" / f"{i}.png").write_bytes(b"")
        (d / "ds" / "1_x" / f"{i}.txt").write_text(f"tag{i}, red circle\n")
    Image.new("RGB", (64, 64), "red").save(d / "caps.png")
    (d / "caps.txt").write_bytes(b"red \xff\xfe circle, white\n")  # not UTF-8
    return d


@pytest.fixture(autouse=True)
def in_scratch_folder(tmp_path, monkeypatch):
    """Relative ``--out`` values (drawn as "" or ".") land in a scratch folder, never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def stop_before_heavy_work(monkeypatch):
    """Model loads and dataset rendering raise Reached: the fuzz checks the boundary, not the models.

    CliRunner's stdout is strict UTF-8; ``cli.main`` prints with ``backslashreplace``, so the
    runner is made to print non-UTF-8 paths the same way.
    """
    import importlib

    for module in ("click.testing", "typer.testing"):  # typer may carry its own click
        try:
            wrapper = importlib.import_module(module)._NamedTextIOWrapper
        except (ImportError, AttributeError):
            continue
        monkeypatch.setattr(wrapper, "__init__", _backslashreplace(wrapper.__init__))
    import sdxl_probe.models.load as load
    import sdxl_probe.pipeline.device as device
    import sdxl_probe.toy.dataset as toy_dataset
    import sdxl_probe.train.toy_recipe.pretrain as recipe

    monkeypatch.setattr(device, "load_model", _stop)
    monkeypatch.setattr(load, "load_components", _stop)
    monkeypatch.setattr(toy_dataset, "sample_scene", _stop)
    monkeypatch.setattr(recipe, "render_training_set", _stop)


def _backslashreplace(init):
    return lambda self, *a, **k: init(self, *a, **{"errors": "backslashreplace", **k})


def draw_args(data, d: Path, name: str) -> tuple[list[str], dict[str, str]]:
    lead, options, _ = COMMANDS[name]
    strategies = {"int": INTS, "float": FLOATS, "text": TEXT, "path": paths(d),
                  "ints": st.lists(INTS, min_size=1, max_size=3).map(",".join)}  # fmt: skip
    chosen = data.draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=len(options)), label="options")
    drawn = {}
    for opt in chosen:
        if options[opt] == "flag":
            drawn[opt] = ""
        else:
            drawn[opt] = data.draw(strategies[options[opt]], label=opt)
    if name == "model-info":
        lead = [*lead, data.draw(st.sampled_from(["{d}/bad.safetensors", "{d}/bad.ckpt", "{d}/afile", "toy"]))]
    args = [a.format(d=d) for a in lead]
    for opt, value in drawn.items():
        args += [opt] if options[opt] == "flag" else [f"{opt}={value}"]
    if "--out" not in drawn and name not in ("tokens", "toy-dataset", "model-info"):
        args += ["--out", str(d / "out" / name)]
    return args, drawn


def run(args: list[str]) -> tuple[str, int, str]:
    """("exit", code, text) or ("reached", 0, "") for a run stopped at the heavy work."""
    r = CliRunner().invoke(app, args)
    if isinstance(r.exception, Reached):
        return "reached", 0, ""
    if isinstance(r.exception, ProbeError):
        return "exit", 2, str(r.exception)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"traceback for {args!r}: {type(r.exception).__name__}: {r.exception}") from r.exception
    return "exit", r.exit_code, r.output


def _random_checkpoint(data, d: Path) -> None:
    """A .safetensors with a random JSON header and a .ckpt of random bytes."""
    import json
    import struct

    json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**12) | st.text(max_size=5),
                               lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                               max_leaves=8)  # fmt: skip
    entry = st.fixed_dictionaries({}, optional={"dtype": st.sampled_from(["F32", "F16", "BAD"]) | json_values,
                                                "shape": st.lists(st.integers(-1, 4), max_size=3) | json_values,
                                                "data_offsets": st.lists(st.integers(-1, 64), max_size=3) | json_values})  # fmt: skip
    header = data.draw(st.dictionaries(st.sampled_from(["__metadata__", "w", "model.diffusion_model.x"]),
                                       entry | json_values, max_size=3), label="header")  # fmt: skip
    raw = json.dumps(header).encode()
    body = data.draw(st.binary(max_size=64), label="body")
    (d / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    (d / "bad.ckpt").write_bytes(data.draw(st.binary(max_size=64), label="pickle"))


@pytest.mark.parametrize("name", sorted(COMMANDS))
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_cli_never_tracebacks_and_accepts_only_valid_input(d, name, data):
    if name == "model-info":
        _random_checkpoint(data, d)
    args, drawn = draw_args(data, d, name)
    outcome, code, text = run(args)
    assert code in (0, 2), (args, code, text)
    assert "Traceback" not in text
    if code == 2:
        assert text.strip(), f"exit 2 without a message for {args!r}"
    if outcome == "reached" or code == 0:
        assert COMMANDS[name][2](drawn), f"accepted out-of-range input {args!r}"
        refused = {"/proc/1/x", str(d / "afile" / "x"), "/dev/null"} | ({str(d / "afile")} if name != "generate" else set())
        assert drawn.get("--out") not in refused, args  # a folder output never replaces a file
    if name == "audit" and code == 0:
        import json

        folder = Path(drawn.get("--out", d / "out" / name)) / (drawn.get("--name") or "ds")
        assert json.loads((folder / "audit.json").read_text())["n_captions"] == 3
        assert (folder / "index.html").is_file()
