"""A shootout's output directory: checked and created before any cell starts, and locked for
the length of a run, so that two ``leitai run`` on one ``--out`` never write the same records.

The lock is ``DIR/.leitai.lock``, an OS-level lock taken through ``filelock`` (``flock`` on
Unix): the kernel releases it when the process that holds it ends, however it ends, so a run
killed with ``kill -9`` leaves nothing that blocks ``--resume``. The lock file itself stays in
place (waiters must share its inode); ``DIR/.leitai.lock.json`` says who holds it (pid, host,
start time, command) while a run does, for the message a second run gets.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..atomic import write_json_atomic
from ..cell.records import read_json
from ..errors import UsageError

LOCK_NAME = ".leitai.lock"
HOLDER_NAME = ".leitai.lock.json"


def prepare(out: str | Path) -> Path:
    """Create the output directory ``out`` (and its parents) and check it is one this process can
    write; a one-line :class:`UsageError` otherwise (a regular file, a path that cannot be
    created, no write permission)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the directory ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the directory is not writable; choose another --out")
    return out


def holder(out: Path) -> str:
    """Who holds the lock on ``out``, as its side file says (``pid 12 on host, started ...``)."""
    try:
        info = read_json(Path(out) / HOLDER_NAME) or {}
    except UsageError:  # being written, or left damaged: the lock is what counts
        info = {}
    if not info:
        return "no details recorded"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started_at", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}"


@contextmanager
def locked(out: Path):
    """Hold the lock on the output directory ``out`` (which :func:`prepare` made) while the
    ``with`` block runs; a one-line :class:`UsageError` naming the holder when another process
    holds it."""
    from filelock import FileLock, Timeout

    out = Path(out)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"--out {out} is in use by another leitai run ({holder(out)}); wait for it to "
                         "finish or choose another --out") from None
    except OSError as e:
        raise UsageError(f"--out {out}: cannot lock the directory ({e.strerror or e})") from None
    side = out / HOLDER_NAME
    try:
        write_json_atomic(side, {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                                 "command": sys.argv})
        yield out
    finally:
        side.unlink(missing_ok=True)
        lock.release()
