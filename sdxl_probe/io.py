"""Atomic file writes: write to a temp file in the same folder, then rename.

A crash or Ctrl-C mid-write never leaves a half-written result in place of a good one.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdxl_probe.errors import ProbeError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temp file keeps the target's suffix so writers that dispatch on extension work.
    On any exception the temp file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the name lets the next run remove what a killed process left (outputs.clean_stale).
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f".tmp{target.suffix}",
                               dir=target.parent)  # fmt: skip
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _test_pause()
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _test_pause() -> None:
    """Sleep ``$SDXL_PROBE_TEST_WRITE_PAUSE`` seconds after each file: lets tests kill a writer mid-output."""
    pause = os.environ.get("SDXL_PROBE_TEST_WRITE_PAUSE")
    if pause:
        time.sleep(float(pause))


def read_bounded(path: str | os.PathLike[str], max_bytes: int, *, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; never reads a device, FIFO or socket.

    Raises:
        ProbeError: ``path`` is not a regular file, or is larger than ``max_bytes``.
        OSError: the file is missing or unreadable (callers word it for their input).
    """
    p = Path(path)
    st = os.stat(p)
    if stat.S_ISDIR(st.st_mode):
        raise ProbeError(f"{p}: is a folder, not a {what}; give the path of a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ProbeError(f"{p}: not a regular file (a device, FIFO or socket); give the path of a {what}")
    if st.st_size > max_bytes:
        raise ProbeError(
            f"{p}: {st.st_size / 2**20:.1f} MiB is larger than the {max_bytes / 2**20:.0f} MiB allowed "
            f"for a {what}; split it or give a smaller file"
        )
    with p.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ProbeError(f"{p}: grew past {max_bytes / 2**20:.0f} MiB while being read; give a finished {what}")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    with atomic_path(path) as tmp:
        # Lone surrogates (non-UTF-8 bytes of a path given on the command line) are written escaped.
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    """The records of a JSON-lines file, [] when it is missing; a line torn by a kill is skipped."""
    path = Path(path)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Atomically write JSON (UTF-8, non-ASCII kept; ``\\u`` escapes if a string holds lone surrogates)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # e.g. a non-UTF-8 path from argv: escaped, it still loads back exactly
        text = json.dumps(obj, indent=indent, ensure_ascii=True, default=_json_default)
    return write_text(path, text + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Atomically write a file through ``writer(tmp_path)`` (e.g. ``safetensors.torch.save_file``)."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
