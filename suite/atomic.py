"""Files written whole or not at all: a temporary file beside the target, then a rename.

Every file a shootout writes for others to read (records, the report's tables and pages, cache
entries) goes through :func:`atomic_path`, so a failed write (a full disk, a stop) leaves the
previous file or none, never half of one. A failed write raises the ``OSError`` with the
target's name; a full disk also carries the remedy (:func:`remedy`).
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

#: the errors a user fixes by freeing disk space (a full disk, an exhausted quota)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path in ``path``'s directory to write to; on success it is synced and
    renamed to ``path``, on any failure removed (and an ``OSError`` names ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None or str(e.filename) == tmp:  # name the file the user knows, not the temporary one
            e.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` (UTF-8, ``\\n`` line ends), whole."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remedy(error: OSError, out_dir: Path) -> None:
    """Attach what to do to a full-disk ``error`` that stopped the report of ``out_dir``
    (``error.remedy``, which ``leitai``'s error line prints)."""
    if error.errno in NO_SPACE and not getattr(error, "remedy", None):
        error.remedy = f"free some space, then write the report again with: leitai report {out_dir}"


def write_json_atomic(path: Path, data, compact: bool = False) -> None:
    """Write JSON so that a reader sees either the old file or the whole new one
    (``compact``: no indentation or spaces, for large machine-read files)."""
    layout = {"separators": (",", ":")} if compact else {"indent": 1}
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, allow_nan=True, **layout)
