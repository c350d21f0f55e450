"""Outputs never mix (issue #11): temp sibling swapped in whole, a lock naming the pid, stale temps removed.

The kill tests run the real CLI in a subprocess with ``SDXL_PROBE_TEST_WRITE_PAUSE`` (a sleep after
every file the writer finishes), kill it with SIGKILL at several points, and check that the
result folder is the previous complete result or the new complete one, never a mix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdxl_probe.errors import ProbeError
from sdxl_probe.outputs import MARKER, clean_stale, hold_lock, output_folder, preflight_folder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _dataset(root: Path, n: int) -> Path:
    sub = root / "1_x"
    sub.mkdir(parents=True)
    for i in range(n):
        (sub / f"{i}.png").write_bytes(b"")
        (sub / f"{i}.txt").write_text(f"tag{i}, red circle, white background\n")
    return root


def _audit(dataset: Path, out: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**ENV, "SDXL_PROBE_TEST_WRITE_PAUSE": str(pause)} if pause else ENV
    cmd = [sys.executable, "-m", "sdxl_probe.cli", "audit", str(dataset), "--out", str(out), "--name", "r"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(folder: Path) -> tuple[int, frozenset[str]] | None:
    """(captions in audit.json, file names) of a result folder, or None when it does not exist."""
    if not folder.exists():
        return None
    names = frozenset(p.name for p in folder.iterdir())
    return json.loads((folder / "audit.json").read_text())["n_captions"], names


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


def test_kill_minus_nine_leaves_previous_or_new_result(tmp_path):
    a, b, out = _dataset(tmp_path / "a", 3), _dataset(tmp_path / "b", 5), tmp_path / "out"
    assert _audit(a, out).wait() == 0
    before = _state(out / "r")
    assert before is not None and before[0] == 3 and {"audit.json", "audit.csv", "index.html", MARKER} <= before[1]
    pause, seen = 0.15, set()
    for delay in (0.0, 2.5 * pause, 6 * pause):
        proc = _audit(b, out, pause)
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".r.tmp-") for p in out.iterdir()):  # the run started writing
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _state(out / "r")
        assert now == before, f"killed {delay:.2f} s into writing: {now} is not the previous complete result"
        seen.update(_leftovers(out))
    assert any(".r.tmp-" in n for n in seen) and ".r.lock" in seen  # the kills did leave debris behind
    assert _audit(b, out).wait() == 0  # the next run cleans up and completes
    after = _state(out / "r")
    assert after is not None and after[0] == 5 and after[1] == before[1]
    assert _leftovers(out) == []


@pytest.mark.slow
def test_kill_during_swap_window_never_mixes(tmp_path):
    """Killing repeatedly near the end: the folder is always one complete result (3 or 5 captions)."""
    a, b, out = _dataset(tmp_path / "a", 3), _dataset(tmp_path / "b", 5), tmp_path / "out"
    assert _audit(a, out).wait() == 0
    files = _state(out / "r")[1]
    results = set()
    for delay in (1.0, 1.6, 2.2, 3.0):
        proc = _audit(b, out)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(out / "r")
        assert state in ((3, files), (5, files)), state
        results.add(state[0])
    assert _audit(a, out).wait() == 0 and _state(out / "r") == (3, files) and _leftovers(out) == []


def test_second_writer_is_refused_naming_the_pid(tmp_path):
    out = tmp_path / "ds"
    env = {**ENV, "SDXL_PROBE_TEST_WRITE_PAUSE": "0.05"}
    cmd = [sys.executable, "-m", "sdxl_probe.cli", "toy", "dataset", str(out), "--n", "40", "--size", "16"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / ".ds.lock").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr
    assert f"another sdxl-probe process (pid {first.pid}) is writing it" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait() == 0, first.communicate()
    assert len(list((out / "1_toy").glob("*.png"))) == 40  # the first run's result is whole
    assert _leftovers(tmp_path) == []


def test_pretrain_refused_while_another_run_holds_the_folder(tmp_path):
    """A live pid in the run folder's lock refuses ``toy pretrain`` before anything is rendered."""
    from typer.testing import CliRunner

    from sdxl_probe.cli import app

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".run.lock").write_text(f"{holder.pid}\n")
        r = CliRunner().invoke(app, ["toy", "pretrain", "--out", str(tmp_path / "run")])
        assert isinstance(r.exception, ProbeError), r.output
        assert f"pid {holder.pid}" in str(r.exception) and not (tmp_path / "run").exists()
    finally:
        holder.kill()
        holder.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_and_temps_of_dead_process_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / ".res.lock").write_text(f"{dead}\n")
    (tmp_path / f".res.tmp-{dead}-abcd1234").mkdir()
    (tmp_path / f".res.tmp-{dead}-abcd1234" / "half.json").write_text("{")
    (tmp_path / f".audit.csv.{dead}.k2j4_x9a.tmp.csv").write_text("partial")
    live = tmp_path / f".res.tmp-{os.getpid()}-00ff00ff"
    live.mkdir()
    with output_folder(tmp_path / "res") as tmp:
        (tmp / "a.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".res.tmp-{os.getpid()}-00ff00ff", "res"])
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [MARKER, "a.json"]


def test_half_done_swap_is_rolled_back(tmp_path):
    """A swap killed between its two renames left only ``.name.old-<pid>-*``: it is put back."""
    dead = _dead_pid()
    old = tmp_path / f".res.old-{dead}-0badf00d"
    old.mkdir()
    (old / "audit.json").write_text("{}")
    assert clean_stale(tmp_path) == []
    assert (tmp_path / "res" / "audit.json").exists() and not old.exists()


def test_failed_run_keeps_previous_result(tmp_path):
    with output_folder(tmp_path / "res") as tmp:
        (tmp / "v.txt").write_text("one")
    with pytest.raises(RuntimeError), output_folder(tmp_path / "res") as tmp:
        (tmp / "v.txt").write_text("two")
        raise RuntimeError("crash mid-run")
    assert (tmp_path / "res" / "v.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_os_error_while_writing_says_what_was_kept(tmp_path):
    import errno

    with output_folder(tmp_path / "res") as tmp:
        (tmp / "v.txt").write_text("one")
    with pytest.raises(ProbeError) as e, output_folder(tmp_path / "res"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    msg = str(e.value)
    assert "No space left on device" in msg and f"kept: the previous {tmp_path / 'res'} unchanged" in msg
    assert (tmp_path / "res" / "v.txt").read_text() == "one"
    with pytest.raises(ProbeError, match="kept: nothing"), output_folder(tmp_path / "new"):
        raise OSError(errno.EROFS, "Read-only file system")
    assert not (tmp_path / "new").exists()


def test_preflight_refuses_foreign_folder_and_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(ProbeError, match="did not write .*thesis.tex"):
        preflight_folder(tmp_path / "mine")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ProbeError, match="exists and is a file"):
        preflight_folder(tmp_path / "f")
    with pytest.raises(ProbeError, match="is a file, so"):
        preflight_folder(tmp_path / "f" / "sub")
    assert preflight_folder(tmp_path / "mine", owns=("thesis.tex",)) == tmp_path / "mine"


def test_lock_is_exclusive_within_a_process_and_released(tmp_path):
    with hold_lock(tmp_path / "x") as lock:
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(ProbeError, match=f"pid {os.getpid()}"), hold_lock(tmp_path / "x"):
            pass
    assert not lock.exists()
