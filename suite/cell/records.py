"""Run records on disk: ``DIR/runs/<run_id>/record.json``, written atomically, read back.

Reading is checked here, in one place: a record that is not a whole JSON object with a
``run_id`` (truncated, not JSON, not UTF-8) raises :class:`DamagedRecord`, a one-line
:class:`~suite.errors.UsageError` naming the file. ``--resume`` moves such a file aside
(:func:`set_aside`) and runs its cell again; ``leitai report`` stops with that line.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from ..atomic import write_json_atomic  # noqa: F401  (executors imported it from here)
from ..errors import UsageError

#: every status a run's record may have, in the order the report counts them: ``ok``; ``failed``
#: (the reason in ``error``); ``oom``; ``diverged`` (its loss blew up:
#: :func:`suite.measures.diagnostics.divergence`); ``timeout`` (ended by the watchdog, past its
#: ``--cell-timeout`` or without progress for its ``--stall-timeout``:
#: :func:`suite.shootout.processes.wait_watched`)
STATUSES = ("ok", "failed", "oom", "diverged", "timeout")


def run_dir(out_dir: Path, run_id: str) -> Path:
    """The directory of one run of a shootout: its record, its adapter, its cell spec."""
    return Path(out_dir) / "runs" / run_id


def record_path(out_dir: Path, run_id: str) -> Path:
    return run_dir(out_dir, run_id) / "record.json"


def new_record(cell) -> dict:
    """The record of ``cell`` before anything ran: ``failed`` with no error yet, its settings
    under ``config``; the cell fills it in (or an executor, when the cell's process died)."""
    return {
        "run_id": cell.run_id, "method": cell.method, "task": cell.task, "seed": cell.seed,
        "model": cell.model, "phase": cell.phase, "status": "failed", "error": None, "config": dataclasses.asdict(cell),
        "metrics": {}, "curve": [], "generations": [], "env": {},
    }


def failed_record(cell, error: str, detail: str = "") -> dict:
    """The record of a cell that ended without writing its own (its process died, say)."""
    return {**new_record(cell), "error": error, "traceback": detail, "finished_at": time.time()}


class DamagedRecord(UsageError):
    """A ``record.json`` that cannot be read back as a run record; ``path`` names it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a readable record ({reason})")
        self.path = Path(path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when there is no file; :class:`DamagedRecord` when it
    cannot be read or is not a JSON object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise DamagedRecord(path, str(e) or type(e).__name__) from None
    if not isinstance(data, dict):
        raise DamagedRecord(path, f"a JSON {type(data).__name__}, not an object")
    return data


def load_record(path: Path) -> dict | None:
    """The run record in ``path`` (None when there is none), checked as :func:`read_json`
    checks, and that it names its run."""
    record = read_json(path)
    if record is not None and "run_id" not in record:
        raise DamagedRecord(path, "no run_id")
    return record


def read_record(out_dir: Path, run_id: str) -> dict | None:
    return load_record(record_path(out_dir, run_id))


def record_paths(out_dir: Path) -> list[Path]:
    """Every ``runs/*/record.json`` under ``out_dir``, in run-id order."""
    return sorted(Path(out_dir).glob("runs/*/record.json"))


def read_records(out_dir: Path) -> list[dict]:
    """Every finished run's record under ``out_dir/runs``, in run-id order."""
    return [load_record(p) for p in record_paths(out_dir)]


def set_aside(path: Path) -> Path:
    """Move a damaged record out of the way, to ``record.json.corrupt`` (or ``.corrupt.1``,
    ``.corrupt.2``... when earlier ones are there: none is overwritten); return where it went."""
    path = Path(path)
    target, n = path.with_name(path.name + ".corrupt"), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt.{n}")
    os.replace(path, target)
    return target
