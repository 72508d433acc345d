"""A cell's heartbeat: what it is doing now, written where the driver's watchdog reads it.

The cell (:func:`suite.cell.run.main`) calls :func:`start` with ``RUN_DIR/progress.json``; its
phases and loops call :func:`beat`. The file holds the last beat (``{"phase", "step", "of",
"time"}``), replaced atomically, at most once a second within a phase. The driver
(:func:`suite.shootout.processes.launch_child`) ends a cell whose heartbeat is older than its
``--stall-timeout`` and records the last beat as the step it reached: a hang of any cause (a
deadlock, a collective waiting on a dead rank, generation that never stops) costs that long,
not the shootout.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

FILE = "progress.json"
_path: Path | None = None
_last = (None, 0.0)  # (phase, time) of the last write


def start(run_dir: Path) -> None:
    """Beat into ``run_dir/progress.json`` from now on (in the cell's main process only)."""
    global _path
    _path = Path(run_dir) / FILE
    beat("starting")


def beat(phase: str, step: int | None = None, of: int | None = None) -> None:
    """Say that the cell is alive, in ``phase`` (at ``step`` of ``of``); cheap enough for every step."""
    global _last
    if _path is None:
        return
    now = time.time()
    if phase == _last[0] and now - _last[1] < 1.0:
        return
    _last = (phase, now)
    tmp = _path.with_name(f".{FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"phase": phase, "step": step, "of": of, "time": now}), encoding="utf-8")
        tmp.replace(_path)
    except OSError:  # a full disk must not fail the cell; the watchdog then sees no progress
        pass


def read(run_dir: Path) -> dict | None:
    """The last beat in ``run_dir`` (None: none yet, or unreadable)."""
    try:
        return json.loads((Path(run_dir) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(last: dict | None) -> str:
    """``training, step 3 of 150`` for a beat; ``no progress reported`` for none."""
    if not last:
        return "no progress reported"
    where = last.get("phase", "?")
    if last.get("step") is not None:
        where += f", step {last['step']}" + (f" of {last['of']}" if last.get("of") else "")
    return where
