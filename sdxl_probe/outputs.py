"""Outputs that never mix: preflight, a lock per output, a temp sibling swapped in whole.

A command that writes a folder runs inside ``with output_folder(out) as tmp:``:

1. :func:`preflight_folder` refuses, before any work, an ``out`` that is a file, that cannot be
   created or written, or that holds files this command did not write;
2. :func:`hold_lock` creates ``.<name>.lock`` (holding the pid) beside ``out``; a second process
   writing the same output is refused with that pid;
3. :func:`clean_stale` removes what killed processes left beside ``out`` (temp folders, temp
   files of :func:`sdxl_probe.io.atomic_path`, a half-done swap);
4. the command writes into ``tmp`` (``.<name>.tmp-<pid>-<token>``), and on success ``tmp`` is
   swapped with ``out`` in one ``renameat2(RENAME_EXCHANGE)`` where Linux offers it: at every
   instant ``out`` is the previous complete result or the new complete one.

OS errors while writing (no space, permission, read-only) become one-line ProbeErrors that say
what was kept. Single files (``generate``'s PNG) use :func:`output_file` the same way.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sdxl_probe.errors import ProbeError
from sdxl_probe.io import atomic_path

MARKER = ".sdxl-probe-output"  # written into every result folder: a later run may replace it whole
WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EIO}
_STALE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+|(?P<fpid>\d+)\.[\w]+\.tmp.*)$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path("/")


def check_writable(target: Path, option: str) -> None:
    """Refuse a ``target`` whose nearest existing folder is a file or cannot be written (probed)."""
    base = _nearest_existing(target.parent)
    if not base.is_dir():
        raise ProbeError(f"{option} {target}: {base} is a file, so {target} cannot be created; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sdxl-probe-write-test.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ProbeError(
            f"{option} {target}: cannot write in {base} ({e.strerror or e}); choose a folder you can write to"
        ) from None


def preflight_folder(target: str | os.PathLike[str], *, owns: Sequence[str] = (), fresh: bool = False,
                     option: str = "--out") -> Path:  # fmt: skip
    """Check a result folder before any work: not a file, writable, and ours to replace.

    Args:
        target: the folder the command will write.
        owns: file names whose presence shows an earlier result of this command (besides :data:`MARKER`).
        fresh: the folder must not exist or be empty (nothing is ever replaced).
        option: the option that named it, for messages.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ProbeError(f"{option} {target}: exists and is a file, not a folder; give a folder path or remove the file")
    check_writable(target, option)
    if target.is_dir():
        try:
            names = sorted(os.listdir(target))
        except OSError as e:
            raise ProbeError(f"{option} {target}: cannot list the folder ({e.strerror or e}); choose another") from None
        ours = MARKER in names or any(n in names for n in owns)
        if names and (fresh or not ours):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            why = "must be new or empty" if fresh else "holds files this command did not write"
            raise ProbeError(f"{option} {target}: {why} ({shown}); choose a new folder or empty it first")
    return target


def preflight_file(target: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """Check a single output file before any work: not a folder, and its folder can be written."""
    target = Path(target)
    if target.is_dir():
        raise ProbeError(f"{option} {target}: is a folder; give a file path such as {target / 'image.png'}")
    if not target.name or target.name in (".", ".."):
        raise ProbeError(f"{option} {target!s}: not a file name; give a path such as out/image.png")
    check_writable(target, option)
    return target


@contextmanager
def hold_lock(target: str | os.PathLike[str], *, option: str = "--out") -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``target`` for the block; refuse if a live process holds it.

    The lock file is created whole (written, then hard-linked into place), so a reader never sees
    it without its pid. A lock whose process is gone is stale and taken over.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                holder = _lock_pid(lock)
                if holder is not None and pid_alive(holder):
                    raise ProbeError(
                        f"{option} {target}: another sdxl-probe process (pid {holder}) is writing it; wait for it "
                        f"to finish or choose another {option} (if pid {holder} is not sdxl-probe, delete {lock})"
                    ) from None
                lock.unlink(missing_ok=True)
        else:
            raise ProbeError(f"{option} {target}: could not take {lock}; retry, or delete it if no run is active")
    finally:
        os.unlink(tmp)
    try:
        yield lock
    finally:
        if _lock_pid(lock) == os.getpid():
            lock.unlink(missing_ok=True)


def _lock_pid(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def clean_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files and folders that dead processes left in ``folder``; return what was removed.

    A ``.<name>.old-<pid>-*`` folder is the previous result of a swap cut short between its two
    renames: it is put back when ``<name>`` is missing.
    """
    folder, removed = Path(folder), []
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return removed
    for entry in entries:
        m = _STALE.match(entry.name)
        if not m or pid_alive(int(m["pid"] or m["fpid"])):
            continue
        path = Path(entry.path)
        if m["kind"] == "old" and not os.path.lexists(folder / m["name"]):
            os.rename(path, folder / m["name"])
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, target: Path) -> None:
    """Make ``tmp`` the content of ``target``; the previous content is deleted afterwards."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous result
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def kept_message(target: Path, existed: bool) -> str:
    return (f"kept: the previous {target} unchanged" if existed
            else f"kept: nothing ({target} was not created)") + "; this run's partial output was removed"  # fmt: skip


def write_error(e: OSError, target: Path, existed: bool) -> ProbeError:
    """A one-line error for an OS error while writing ``target``, saying what was kept."""
    where = f" ({e.filename})" if e.filename else ""
    return ProbeError(f"cannot write {target}: {e.strerror or e}{where}; {kept_message(target, existed)}; "
                      "free space or fix permissions, then rerun")  # fmt: skip


@contextmanager
def output_folder(target: str | os.PathLike[str], *, owns: Sequence[str] = (), fresh: bool = False,
                  option: str = "--out") -> Iterator[Path]:  # fmt: skip
    """Yield a temp folder to write a result into; swap it in whole as ``target`` on success.

    Preflight and lock happen on entry (before the caller's expensive work); on any error the
    temp folder is removed and ``target`` is left as it was.
    """
    target = preflight_folder(target, owns=owns, fresh=fresh, option=option)
    existed = target.exists()
    with hold_lock(target, option=option):
        clean_stale(target.parent)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            yield tmp
            if not fresh:  # a fresh folder is never replaced, so it needs no marker
                (tmp / MARKER).write_text("written by sdxl-probe; a later run may replace this folder whole\n")
            swap_in(tmp, target)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in WRITE_ERRNOS:
                raise write_error(e, target, existed) from None
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextmanager
def output_file(target: str | os.PathLike[str], *, option: str = "--out") -> Iterator[Path]:
    """Yield a temp path to write one file into; rename it onto ``target`` on success (locked)."""
    target = preflight_file(target, option=option)
    existed = target.exists()
    with hold_lock(target, option=option):
        clean_stale(target.parent)
        try:
            with atomic_path(target) as tmp:
                yield tmp
        except OSError as e:
            if e.errno in WRITE_ERRNOS:
                raise write_error(e, target, existed) from None
            raise
