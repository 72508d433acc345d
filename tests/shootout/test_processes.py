"""A cell's process (suite/shootout/processes.py): the watchdog ends a cell past its
``--cell-timeout`` with every process under it, a distributed cell's ranks too, and records it
``timeout`` with the step it reached. (A cell without progress for its ``--stall-timeout``:
tests/shootout/test_warm.py.)"""
import json
import time
from pathlib import Path

import pandas as pd
from conftest import CELLS_ONLY, MISBEHAVING, leitai

SMALL = ["--max-steps", "2", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]


def gone(pid_file: Path) -> bool:
    """Whether the process whose id ``pid_file`` holds has ended (a zombie not yet reaped has)."""
    status = Path(f"/proc/{int(pid_file.read_text())}/status")
    try:
        return "zombie" in status.read_text()
    except FileNotFoundError:
        return True


def test_a_cell_past_its_time_limit_is_ended_with_its_processes(tmp_path):
    """``--cell-timeout 20s`` on a cell that trains, but too slowly to finish in time (``crawls``:
    15 s a step, with a helper process of its own): it is ended after 20 s with every process it
    started, recorded ``timeout`` with the step it reached, the report lists it with the runs that
    did not finish ok, the verdict leaves it out of the means and says why, and the next cell runs."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    began = time.monotonic()
    proc = leitai("run", "--methods", "crawls,bitfit", *SMALL, "--cell-timeout", "20s", "--out", out,
                  env={**MISBEHAVING, "UNRULY_DIR": str(markers), "UNRULY_STEP_SECONDS": "15"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - began < 150  # not the 2 steps of 15 s and more the cell would take
    results = pd.read_csv(out / "results.csv").set_index("method")
    # on a machine so busy that a 2-step cell takes 20 s, this one times out too (its error says where)
    assert results.loc["bitfit", "status"] == "ok", results.loc["bitfit", "error"]
    assert results.loc["crawls", "status"] == "timeout"
    error = results.loc["crawls", "error"]
    assert error.startswith("ran past its --cell-timeout of 20 s: ended by the watchdog (last: training, step "), error
    record = json.loads((out / "runs" / "zh-sentiment__crawls__s0" / "record.json").read_text())
    assert record["progress"]["phase"] == "training" and record["progress"]["step"] in (1, 2)
    assert record["progress"]["of"] == 2 and f"step {record['progress']['step']} of 2)" in error
    assert gone(markers / "crawls.pid") and gone(markers / "crawls-helper.pid")  # the cell, and what it started
    summary = (out / "summary.md").read_text(encoding="utf-8")
    failed = summary[summary.index("## Runs that did not finish ok"):]
    assert "zh-sentiment__crawls__s0" in failed and "timeout" in failed
    assert f"Left out of the means, runs that did not finish ok: crawls (timeout in 1 of 1 runs: {error})." in summary


def test_a_distributed_cell_past_its_time_limit_ends_with_every_rank(tmp_path):
    """A distributed cell (torchrun, two CPU ranks over gloo) past its ``--cell-timeout``: torchrun,
    both ranks and the helper process each rank started are all gone, and the record says
    ``timeout`` with the step the main rank reached."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    proc = leitai("run", "--methods", "crawls", "--gpus-per-cell", "2", *SMALL, "--cell-timeout", "25s", "--out", out,
                  env={**MISBEHAVING, "UNRULY_DIR": str(markers), "UNRULY_STEP_SECONDS": "30"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "runs" / "zh-sentiment__crawls__s0" / "record.json").read_text())
    assert record["status"] == "timeout", record["error"]
    assert record["error"].startswith("ran past its --cell-timeout of 25 s: ended by the watchdog (last: ")
    pids = sorted(p.name for p in markers.glob("*.pid"))
    assert pids == ["crawls-1.pid", "crawls-helper-1.pid", "crawls-helper.pid", "crawls.pid"], pids
    assert all(gone(markers / name) for name in pids)
