"""Run records on disk: ``DIR/runs/<run_id>/record.json``, written atomically, read back."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

STATUSES = ("ok", "failed", "oom", "diverged")


def write_json_atomic(path: Path, data, compact: bool = False) -> None:
    """Write JSON so that a reader sees either the old file or the whole new one
    (``compact``: no indentation or spaces, for large machine-read files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            layout = {"separators": (",", ":")} if compact else {"indent": 1}
            json.dump(data, f, ensure_ascii=False, allow_nan=True, **layout)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def read_json(path: Path) -> dict | None:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_record(out_dir: Path, run_id: str) -> dict | None:
    return read_json(record_path(out_dir, run_id))


def read_records(out_dir: Path) -> list[dict]:
    """Every finished run's record under ``out_dir/runs``, in run-id order."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(out_dir).glob("runs/*/record.json"))]
