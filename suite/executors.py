"""Executors run cells somewhere and hand back their records; the runner alone writes results.

An executor only needs ``map(cells, run_one)``: call ``run_one(cell)`` for every cell (here,
in this process, one after another; elsewhere, in parallel or on other machines) and yield
``(cell, record)`` as each finishes. ``run_one`` starts the cell's own child process.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from .cell import Cell


class LocalExecutor:
    """Cells one after another on this machine, each in a fresh child process."""

    name = "local"

    def map(self, cells, run_one):
        for cell in cells:
            yield cell, run_one(cell)


def launch_child(cell: Cell, run_dir: Path, env: dict | None = None) -> tuple[int, str]:
    """Run ``python -m suite.cell`` for ``cell``; return its exit code and the tail of its stderr.

    The child's stderr (its progress bar) is passed through to ours while the last few KB are
    kept, so a child that dies without writing a record can still say why.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dir / "cell.json"
    spec.write_text(cell.to_json(), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "suite.cell", str(spec)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    tail: deque[bytes] = deque(maxlen=64)

    def pump():
        out = getattr(sys.stderr, "buffer", None)
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            tail.append(chunk)
            if out is not None:
                out.write(chunk)
                out.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except BaseException:  # Ctrl-C: the child got the signal too; make sure it is gone
        proc.kill()
        proc.wait()
        raise
    reader.join()
    return code, b"".join(tail).decode("utf-8", errors="replace")
